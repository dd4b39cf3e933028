#!/usr/bin/env python3
"""The seeds' file upload with a size header, pointed at oneloop's upload service.

    python3 upload_client.py [--connect ADDRESS] FILE [NAME]

The seed sends the size, waits for the server's `ko` (so that the size and the first file
bytes never arrive glued together in one recv: the seeds' "粘包" problem), then the file.
oneloop's upload protocol needs no such round trip: the header is one line, `SIZE NAME\\n`,
so the server knows where it ends, and it answers `ok` or `error REASON` before any body byte
is sent. After the body it answers `saved NAME SIZE CRC32` once the file is on disk (fsync'd),
and this client checks the CRC against its own.
"""

import argparse
import os
import socket
import sys
import zlib

import _address


def read_line(sock):
    """One line from the server, without its newline (the replies are short)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line.decode("utf-8", "replace").rstrip("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="127.0.0.1:9001", metavar="ADDRESS")
    parser.add_argument("file")
    parser.add_argument("name", nargs="?")
    args = parser.parse_args()
    family, address = _address.parse(args.connect)
    size = os.stat(args.file).st_size
    name = args.name or os.path.basename(args.file)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        sock.sendall(f"{size} {name}\n".encode("utf-8"))
        answer = read_line(sock)
        print(answer, flush=True)
        if answer != "ok":
            sys.exit(1)
        crc = 0
        with open(args.file, "rb") as f:
            while chunk := f.read(64 * 1024):
                sock.sendall(chunk)
                crc = zlib.crc32(chunk, crc)
        answer = read_line(sock)
        print(answer, flush=True)
        words = answer.split(" ")
        if words[0] != "saved" or words[-1] != f"{crc:08x}":
            print(f"expected crc {crc:08x}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
