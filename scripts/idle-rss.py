#!/usr/bin/env python3
"""Opens N connections to an echo server, does one verified round trip on each, holds them, and
reports the server's RSS growth per connection.

    scripts/idle-rss.py HOST:PORT SERVER_PID [N]

A measurement aid for the closing notes; `oneloop load --idle` is the real tool."""
import resource, socket, sys, time

host, port = sys.argv[1].rsplit(":", 1)
pid = int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss_kib()
start = time.perf_counter()
held = []
for i in range(count):
    s = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    held.append(s)
connected = time.perf_counter() - start
for i, s in enumerate(held):
    s.sendall(b"hello %d" % i)
for i, s in enumerate(held):
    want = b"hello %d" % i
    got = b""
    while len(got) < len(want):
        got += s.recv(1024)
    assert got == want, (got, want)
time.sleep(0.5)
after = rss_kib()
print(f"{count} connections opened in {connected:.2f} s, one verified round trip each")
print(f"server RSS {before} KiB -> {after} KiB: {(after - before) * 1024 / count:.0f} bytes per connection")
