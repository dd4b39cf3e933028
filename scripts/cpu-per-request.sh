#!/usr/bin/env bash
# Server CPU time per request, oneloop's reactor against the tiny mio echo yardsticks
# (examples/tiny_echo.rs, examples/tiny_udp_echo.rs), under the same `oneloop load`.
# Usage: scripts/cpu-per-request.sh [tcp|unix|udp|metrics] [CONNECTIONS] [SECS]
# With BASELINE=path/to/an/older/oneloop, that binary is measured too, in the same run, in turns
# with this one (ROUNDS times, default 3), so a change's cost is compared under the same load.
# `metrics`: the same echo load on a server without, then with, a metrics service that a
# scraper reads every second (ROUNDS times, in turns): what counting and scraping cost.
set -euo pipefail
cd "$(dirname "$0")/.."
transport=${1:-tcp}
connections=${2:-50}
seconds=${3:-5}
cargo build --release --quiet --bin oneloop --example tiny_echo --example tiny_udp_echo
measure() { # name, command...
  local name=$1; shift
  local out; out=$(mktemp)
  "$@" > "$out" 2>/dev/null & local pid=$!
  while ! grep -q listening "$out"; do sleep 0.05; done
  local addr; addr=$(awk '{print ($3 == "tcp" ? "" : $3 ":") $4; exit}' "$out")
  local scraper=""
  if [[ -n ${SCRAPE:-} ]]; then
    while ! grep -q "listening metrics" "$out"; do sleep 0.05; done
    local metrics; metrics=$(awk '$2 == "metrics" {print $4; exit}' "$out")
    ( while kill -0 "$pid" 2>/dev/null; do
        curl -s -o /dev/null "http://$metrics/metrics" || true; sleep 1
      done ) & scraper=$!
  fi
  local before; before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  local report; report=$(target/release/oneloop load "$addr" --connections "$connections" \
      --duration "$seconds" --warmup 0 --json)
  local after; after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [[ -z $scraper ]] || { kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true; }
  local requests; requests=$(echo "$report" | tr ',' '\n' | awk -F: '/"requests"/{print $2}')
  local rps; rps=$(echo "$report" | tr ',' '\n' | awk -F: '/"rps"/{print $2}')
  # /proc times are in USER_HZ ticks (100 per second).
  awk -v n="$name" -v t=$((after - before)) -v r="$requests" -v q="$rps" \
      'BEGIN { printf "%-10s %10.0f req/s  %6.2f µs server CPU per request\n", n, q, t * 10000 / r }'
  rm -f "$out"
}
if [[ -n ${BASELINE:-} ]]; then
  for round in $(seq "${ROUNDS:-3}"); do
    case $transport in
      tcp)  measure baseline "$BASELINE" serve echo@127.0.0.1:0
            measure oneloop target/release/oneloop serve echo@127.0.0.1:0 ;;
      udp)  measure baseline "$BASELINE" serve echo@udp:127.0.0.1:0
            measure oneloop target/release/oneloop serve echo@udp:127.0.0.1:0 ;;
      *)    echo "BASELINE compares tcp or udp" >&2; exit 2 ;;
    esac
  done
  exit 0
fi
if [[ $transport == metrics ]]; then
  for round in $(seq "${ROUNDS:-3}"); do
    measure plain target/release/oneloop serve echo@127.0.0.1:0
    SCRAPE=1 measure scraped target/release/oneloop serve echo@127.0.0.1:0 metrics@127.0.0.1:0
  done
  exit 0
fi
case $transport in
  tcp)  measure tiny_echo target/release/examples/tiny_echo
        measure oneloop target/release/oneloop serve echo@127.0.0.1:0 ;;
  udp)  measure tiny_udp target/release/examples/tiny_udp_echo
        measure oneloop target/release/oneloop serve echo@udp:127.0.0.1:0 ;;
  unix) sock=$(mktemp -u /tmp/oneloop-cpu-XXXXXX.sock)
        measure oneloop-tcp target/release/oneloop serve echo@127.0.0.1:0
        measure oneloop-unix target/release/oneloop serve "echo@unix:$sock" ;;
  *)    echo "usage: $0 [tcp|unix|udp|metrics] [CONNECTIONS] [SECS]" >&2; exit 2 ;;
esac
