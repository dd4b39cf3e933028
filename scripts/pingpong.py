#!/usr/bin/env python3
"""Ping-pong N requests of SIZE bytes on one connection, verifying each reply.

    scripts/pingpong.py HOST:PORT [N] [SIZE] [PROTOCOL]

A measurement aid for the closing notes (syscalls per request under strace); `oneloop load`
is the real load generator."""
import socket, sys, time

host, port = sys.argv[1].rsplit(":", 1)
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
size = int(sys.argv[3]) if len(sys.argv) > 3 else 64
protocol = sys.argv[4] if len(sys.argv) > 4 else "echo"
request = (b"ping-" * size)[:size]
expected = request.upper() if protocol == "upper" else request
s = socket.create_connection((host.strip("[]"), int(port)))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(10)
start = time.perf_counter()
for _ in range(count):
    s.sendall(request)
    got = b""
    while len(got) < len(expected):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("server closed early")
        got += chunk
    if got != expected:
        sys.exit(f"wrong reply: {got!r}")
elapsed = time.perf_counter() - start
print(f"{count} requests in {elapsed:.2f} s ({count / elapsed:.0f} req/s), all verified")
