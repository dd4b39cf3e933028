#!/usr/bin/env python3
"""The seeds' interactive timestamp client (t_client.py), pointed at oneloop.

    python3 timestamp_client.py [--connect ADDRESS]

Each line you type is sent *without* its newline, as the seed does, and the server's answer,
`[ctime] LINE`, is printed. An empty line (or the end of input) quits. oneloop's timestamp
service answers such a message when the client pauses with bytes pending and no newline: that
is how it serves the seed's client, which sends no newline and waits.
"""

import argparse
import socket
import sys

import _address


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="127.0.0.1:21567", metavar="ADDRESS")
    args = parser.parse_args()
    family, address = _address.parse(args.connect)
    # The seed's `> ` prompt, only for a person at a terminal (not in a pipe's output).
    prompt = "> " if sys.stdin.isatty() else ""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        while True:
            try:
                data = input(prompt)
            except EOFError:
                break
            if not data:
                break
            sock.sendall(data.encode("utf-8"))
            reply = sock.recv(1024)
            if not reply:
                break
            print(reply.decode("utf-8", "replace"), flush=True)


if __name__ == "__main__":
    main()
