#!/usr/bin/env bash
# What TLS costs the server, oneloop against what a user would put in front of a plain oneloop
# instead: HAProxy (`mode tcp`, `ssl crt`, one thread) and stunnel (Debian's stunnel4), each
# terminating TLS in front of a plain `oneloop serve echo@...`. Same ECDSA P-256 certificate
# (examples/tls), TLS 1.3, the same client (`oneloop load`), the same machine, in turns.
#
# Two loads per server, bounded in count and time:
#   persistent  --connections C, 64-byte echo requests for SECS: server CPU per request;
#   handshakes  --reconnect 1: a new connection and a full handshake (the client keeps no
#               session to resume) for every request: server CPU per handshake.
# Server CPU is user+system time from /proc of every server process of the case (the terminator
# and its plain backend for HAProxy and stunnel), over the load's whole run.
#
# Usage: scripts/tls-cost.sh [CONNECTIONS] [SECS] [ROUNDS]
# Needs haproxy and stunnel4 (apt-get install haproxy stunnel4); prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-50}
seconds=${2:-5}
rounds=${3:-2}
for program in haproxy stunnel4; do
  command -v "$program" >/dev/null || PATH=$PATH:/usr/sbin
  command -v "$program" >/dev/null || { echo "needs $program (apt-get install $program)" >&2; exit 2; }
done
cargo build --release --quiet --bin oneloop
bin=target/release/oneloop
tls=examples/tls
work=$(mktemp -d /tmp/oneloop-tls-cost-XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cat "$tls/localhost.pem" "$tls/localhost.key" > "$work/haproxy.pem"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { local sum=0 pid; for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$sum"; }
# Starts a plain oneloop echo; sets $backend_pid and $backend_port.
plain_backend() {
  "$bin" serve echo@127.0.0.1:0 > "$work/backend.out" 2>/dev/null & backend_pid=$!; pids+=("$backend_pid")
  while ! grep -q listening "$work/backend.out"; do sleep 0.05; done
  backend_port=$(awk '{sub(/.*:/, "", $4); print $4; exit}' "$work/backend.out")
}
wait_port() { local deadline=$((SECONDS + 10)); until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
  ((SECONDS < deadline)) || { echo "nothing listens on $1" >&2; exit 1; }; sleep 0.05; done; }
# measure NAME ADDRESS PID... : both loads against ADDRESS, the CPU of PID...
measure() {
  local name=$1 address=$2; shift 2
  local before after report requests handshakes rps hps
  before=$(ticks "$@")
  report=$("$bin" load "$address" --tls-ca "$tls/ca.pem" --connections "$connections" \
      --duration "$seconds" --warmup 0 --json)
  after=$(ticks "$@")
  requests=$(echo "$report" | tr ',' '\n' | awk -F: '/"requests"/{print $2}')
  rps=$(echo "$report" | tr ',' '\n' | awk -F: '/"rps"/{print $2}')
  printf '%-28s persistent  %9.0f req/s        %7.1f µs server CPU per request\n' "$name" "$rps" \
      "$(awk -v t=$((after - before)) -v r="$requests" 'BEGIN { print t * 10000 / r }')"
  before=$(ticks "$@")
  report=$("$bin" load "$address" --tls-ca "$tls/ca.pem" --connections "$connections" \
      --duration "$seconds" --warmup 0 --reconnect 1 --json)
  after=$(ticks "$@")
  handshakes=$(echo "$report" | tr ',' '\n' | awk -F: '/"handshakes"/{print $2}')
  hps=$(echo "$report" | tr ',' '\n' | awk -F: '/"handshake_rps"/{print $2}')
  printf '%-28s handshakes  %9.0f handshakes/s %7.1f µs server CPU per handshake\n' "$name" "$hps" \
      "$(awk -v t=$((after - before)) -v h="$handshakes" 'BEGIN { print t * 10000 / h }')"
}

for round in $(seq "$rounds"); do
  echo "round $round: $connections connections, $seconds s per load, TLS 1.3, ECDSA P-256"
  # oneloop, plain, for the ratio the issue sets (TLS ≤ 1.5x plaintext per request).
  plain_backend
  before=$(ticks "$backend_pid")
  report=$("$bin" load "127.0.0.1:$backend_port" --connections "$connections" --duration "$seconds" --warmup 0 --json)
  after=$(ticks "$backend_pid")
  printf '%-28s persistent  %9.0f req/s        %7.1f µs server CPU per request\n' "oneloop tcp (no TLS)" \
      "$(echo "$report" | tr ',' '\n' | awk -F: '/"rps"/{print $2}')" \
      "$(awk -v t=$((after - before)) -v r="$(echo "$report" | tr ',' '\n' | awk -F: '/"requests"/{print $2}')" 'BEGIN { print t * 10000 / r }')"
  kill "$backend_pid"; wait "$backend_pid" 2>/dev/null || true

  # oneloop terminating TLS itself.
  "$bin" serve echo@tls:127.0.0.1:0 --tls-cert "$tls/localhost.pem" --tls-key "$tls/localhost.key" \
      > "$work/oneloop.out" 2>/dev/null & pid=$!; pids+=("$pid")
  while ! grep -q listening "$work/oneloop.out"; do sleep 0.05; done
  measure "oneloop tls" "tls:$(awk '{print $4; exit}' "$work/oneloop.out")" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  # HAProxy, one thread, terminating TLS in front of a plain oneloop.
  plain_backend
  port=$(free_port)
  cat > "$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:$port ssl crt $work/haproxy.pem
    default_backend plain
backend plain
    server echo 127.0.0.1:$backend_port
EOF
  haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 & hpid=$!; pids+=("$hpid")
  wait_port "$port"
  measure "haproxy + oneloop tcp" "tls:127.0.0.1:$port" "$hpid" "$backend_pid"
  kill "$hpid" "$backend_pid"; wait "$hpid" "$backend_pid" 2>/dev/null || true

  # stunnel (a thread per connection) in front of a plain oneloop.
  plain_backend
  port=$(free_port)
  cat > "$work/stunnel.conf" <<EOF
foreground = yes
pid =
[echo]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$backend_port
cert = $PWD/$tls/localhost.pem
key = $PWD/$tls/localhost.key
sslVersionMin = TLSv1.3
EOF
  stunnel4 "$work/stunnel.conf" > "$work/stunnel.log" 2>&1 & spid=$!; pids+=("$spid")
  wait_port "$port"
  measure "stunnel + oneloop tcp" "tls:127.0.0.1:$port" "$spid" "$backend_pid"
  kill "$spid" "$backend_pid"; wait "$spid" "$backend_pid" 2>/dev/null || true
done
