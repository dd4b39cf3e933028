#!/usr/bin/env bash
# What the chat bus costs: one chat room under the same `oneloop load --protocol chat`, served by
# one instance alone, by one instance on a Redis bus, and by two instances on one bus (the load's
# members spread over both: `oneloop load A B`). Prints deliveries/s, delivery latency and the
# servers' CPU per delivery (Redis's own CPU apart), ROUNDS times (default 2) in turns, so the
# three are compared under the same machine load. Needs redis-server (Debian: redis-server).
# Usage: scripts/chat-bus-cost.sh [MEMBERS] [SENDERS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
members=${1:-100}
senders=${2:-10}
seconds=${3:-5}
rounds=${ROUNDS:-2}
cargo build --release --quiet --bin oneloop
bin=target/release/oneloop
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
# A free port for Redis: bind port 0 and read what the kernel gave.
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    >/dev/null 2>&1 & redis_pid=$!; pids+=("$redis_pid")
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
serve() { # ADDRESS [ARGS...]: starts a chat server, prints its pid and address
  local out=$dir/serve.$RANDOM
  "$bin" serve "chat@$1" "${@:2}" > "$out" 2>/dev/null & local pid=$!
  while ! grep -q listening "$out"; do sleep 0.05; done
  echo "$pid $(awk '{print $4; exit}' "$out")"
}
read -r alone alone_addr < <(serve 127.0.0.1:0)
read -r one one_addr < <(serve 127.0.0.1:0 --chat-bus "redis://127.0.0.1:$redis_port")
# The pair shares the room: the same port on two loopback addresses.
read -r a a_addr < <(serve 127.0.0.1:0 --chat-bus "redis://127.0.0.1:$redis_port/1")
read -r b b_addr < <(serve "127.0.0.2:${a_addr##*:}" --chat-bus "redis://127.0.0.1:$redis_port/1")
pids+=("$alone" "$one" "$a" "$b")
ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
measure() { # name, "server pids", addresses...
  local name=$1 servers=$2; shift 2
  # shellcheck disable=SC2086
  local before; before=$(ticks $servers); local redis_before; redis_before=$(ticks "$redis_pid")
  local report; report=$("$bin" load "$@" --protocol chat --connections "$members" \
      --senders "$senders" --duration "$seconds" --json)
  # shellcheck disable=SC2086
  local after; after=$(ticks $servers); local redis_after; redis_after=$(ticks "$redis_pid")
  echo "$report" | python3 -c '
import json, sys
name, server, redis = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(sys.stdin)
assert r["errors"] == 0, r["first_error"]
rate, p50, p99 = r["delivery_rps"] / 1e6, r["p50_us"], r["p99_us"]
per = server * 1e4 / r["deliveries"]
print(f"{name:<22} {rate:5.2f} M deliveries/s  p50 {p50:5} us  p99 {p99:5} us  "
      f"server CPU {per:.2f} us/delivery  (Redis {redis / 100:.2f} s)")' "$name" $((after - before)) $((redis_after - redis_before))
}
echo "$members members, $senders senders, ${seconds} s each, $rounds rounds"
for _ in $(seq "$rounds"); do
  measure "one instance, no bus" "$alone" "$alone_addr"
  measure "one instance on a bus" "$one" "$one_addr"
  measure "two instances, one bus" "$a $b" "$a_addr" "127.0.0.2:${a_addr##*:}"
done
