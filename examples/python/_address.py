"""Where to connect, as the oneloop commands write it: HOST:PORT, [::1]:PORT or unix:PATH.

Shared by the clients in this directory; standard library only.
"""

import socket


def parse(text):
    """Returns (family, address) for socket.socket(family, ...) and connect()/sendto()."""
    if text.startswith("unix:"):
        return socket.AF_UNIX, text[len("unix:"):]
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"{text!r} is not HOST:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))
