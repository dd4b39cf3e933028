#!/usr/bin/env python3
"""The seeds' threaded chat client, pointed at oneloop's chat service.

    python3 chat_client.py [--connect ADDRESS]

Two threads: one prints every line the room sends, the other sends each line you type
(`/nick NAME`, `/who`, `quit`). The seed's client is one `input`/`send`/`recv` loop, which works
only while every message is an answer to your own; in a room, the others' lines arrive whenever
they are said, so reading cannot wait for typing. At the end of input it says `quit`, then prints what
the server still sends until it closes.
"""

import argparse
import socket
import sys
import threading

import _address


def print_lines(sock):
    with sock.makefile("r", encoding="utf-8", errors="replace", newline="\n") as lines:
        for line in lines:
            print(line, end="", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="127.0.0.1:9002", metavar="ADDRESS")
    args = parser.parse_args()
    family, address = _address.parse(args.connect)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        reader = threading.Thread(target=print_lines, args=(sock,))
        reader.start()
        for line in sys.stdin:
            sock.sendall(line.encode("utf-8"))
            if line.strip() in ("quit", ":q"):
                break
        else:
            sock.sendall(b"quit\n")
        reader.join()


if __name__ == "__main__":
    main()
