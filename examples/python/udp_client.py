#!/usr/bin/env python3
"""The seeds' UDP client, pointed at oneloop's UDP services.

    python3 udp_client.py [--connect HOST:PORT] [MESSAGE...]

With words, sends them as one datagram and prints the reply; without, sends each line typed
(an empty line quits). There is no connection: each datagram stands alone, and one that is
lost is simply never answered, so the client waits at most 2 s for each reply and says so.
"""

import argparse
import socket
import sys

import _address


def exchange(sock, address, text):
    sock.sendto(text.encode("utf-8"), address)
    try:
        data, server = sock.recvfrom(65535)
    except socket.timeout:
        print("no reply within 2 s (UDP promises no delivery)", flush=True)
        return
    print(data.decode("utf-8", "replace"), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="127.0.0.1:9999", metavar="HOST:PORT")
    parser.add_argument("words", nargs="*")
    args = parser.parse_args()
    family, address = _address.parse(args.connect)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        if args.words:
            exchange(sock, address, " ".join(args.words))
            return
        prompt = "> " if sys.stdin.isatty() else ""
        while True:
            try:
                line = input(prompt)
            except EOFError:
                break
            if not line:
                break
            exchange(sock, address, line)


if __name__ == "__main__":
    main()
