#!/usr/bin/env python3
"""The seeds' one-shot "translation" client (seed 000's client.py), pointed at oneloop.

    python3 upper_client.py [--connect ADDRESS] WORDS...

Sends the words (joined by spaces, no newline), then prints what one recv(1024) returns, with
the time of each step, exactly as the seed does. It also says how many seconds the answer took
(in whole seconds), which is what the seed's two timestamps are for: against
`oneloop serve --reply-delay 5`, two of these started together are both answered after 5 s by a
concurrent server, and the second after 10 s by a serial one.

One recv is the seed's choice, kept here: for a short request the server's reply arrives in one
piece, but TCP is a byte stream and promises no such thing (see "message boundaries" in
docs/TUTORIAL.md).
"""

import argparse
import os
import socket
import time
from datetime import datetime

import _address


def say(line):
    """Prints a line in one write, so two clients sharing a terminal never mix their lines."""
    os.write(1, (line + "\n").encode("utf-8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="127.0.0.1:9999", metavar="ADDRESS")
    parser.add_argument("words", nargs="+")
    args = parser.parse_args()
    family, address = _address.parse(args.connect)
    data = " ".join(args.words)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        started = time.monotonic()
        say(f"client {datetime.now()} sent {data}")
        sock.sendall(data.encode("utf-8"))
        received = sock.recv(1024)
        # Whole seconds, an answer up to 3/4 s late still counted as on time: the lesson is
        # 5 s against 10 s, and a busy machine may add a little.
        waited = int(time.monotonic() - started + 0.25)
        say(f"client {datetime.now()} received {received!r} after {waited} s")


if __name__ == "__main__":
    main()
