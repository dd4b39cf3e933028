#!/usr/bin/env bash
# Server CPU time per request behind HAProxy: a `--proxy-protocol` instance (HAProxy opens each
# connection to it with a PROXY v2 header: `send-proxy-v2`) and a plain one, both behind the same
# HAProxy (one `listen` section each, mode tcp, health-checked), each under the same
# `oneloop load` in turn. The header is read once per connection, before its first byte, so per
# request the two should cost the same (docs/DEPLOY.md). HAProxy's own CPU per request is shown
# too. CPU is read from /proc/PID/stat around the load, as scripts/cpu-per-request.sh does.
# Usage: scripts/haproxy-cpu.sh [CONNECTIONS] [SECS] [ROUNDS] [SIDES]
#   [50 connections, 5 s per side and round, 2 rounds: 10 s of load per side]
#   SIDES: which instances to measure, in order [proxy-protocol plain]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-50}
seconds=${2:-5}
rounds=${3:-2}
sides=${4:-proxy-protocol plain}
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
if [ ! -x "$haproxy" ]; then
  echo "$0: haproxy is not installed (.ci/run installs it as root: apt-get install -y haproxy)" >&2
  exit 1
fi
cargo build --release --quiet --bin oneloop
oneloop=target/release/oneloop
hz=$(getconf CLK_TCK) # /proc times are in these ticks per second
dir=$(mktemp -d /tmp/oneloop-haproxy-cpu-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# Starts `oneloop serve ARGS...` in the background and waits for its `listening` lines; sets
# `served_pid` and `served` (the addresses, one per service, in order).
serve() {
  local out="$dir/serve.$((++serve_count))" services
  services=$(printf '%s\n' "$@" | grep -c @)
  "$oneloop" serve "$@" > "$out" 2>> "$dir/serve.stderr" & served_pid=$!
  pids+=("$served_pid")
  for _ in $(seq 100); do
    [ "$(grep -c listening "$out")" = "$services" ] && break
    if ! kill -0 "$served_pid" 2>/dev/null; then
      echo "$0: oneloop serve $* exited:" >&2; cat "$dir/serve.stderr" >&2; exit 1
    fi
    sleep 0.05
  done
  if [ "$(grep -c listening "$out")" != "$services" ]; then
    echo "$0: oneloop serve $* did not listen within 5 s" >&2; exit 1
  fi
  mapfile -t served < <(awk '{print $4}' "$out")
}
serve_count=0
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime
field() { tr ',' '\n' | awk -F: -v k="\"$1\"" '$1 == k {print $2}'; }

# The instances.
declare -A pid addr front
for side in $sides; do
  case $side in
    proxy-protocol) serve echo@127.0.0.1:0 --proxy-protocol ;;
    plain)          serve echo@127.0.0.1:0 ;;
    *) echo "usage: $0 [CONNECTIONS] [SECS] [ROUNDS] ['proxy-protocol plain']" >&2; exit 2 ;;
  esac
  pid[$side]=$served_pid addr[$side]=${served[0]}
done

# HAProxy's frontend ports: ones that were free a moment ago (a oneloop bound them to port 0 and
# has exited). Should another process take one meanwhile, HAProxy says so and this script stops.
ports=()
for _ in $sides; do ports+=(echo@127.0.0.1:0); done
serve "${ports[@]}"
kill "$served_pid"; wait "$served_pid" 2>/dev/null || true
unset 'pids[-1]'
i=0
for side in $sides; do front[$side]=${served[$((i++))]}; done

{
  cat <<EOF
global
    nbthread 1
    log stderr format raw local0 notice

defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 60s
    timeout server 60s
EOF
  for side in $sides; do
    case $side in
      proxy-protocol) server_options="send-proxy-v2 check check-send-proxy inter 1s" ;;
      plain)          server_options="check inter 1s" ;;
    esac
    cat <<EOF

listen $side
    bind ${front[$side]}
    server $side ${addr[$side]} $server_options
EOF
  done
} > "$dir/haproxy.cfg"
"$haproxy" -db -f "$dir/haproxy.cfg" 2> "$dir/haproxy.stderr" & haproxy_pid=$!
pids+=("$haproxy_pid")
for side in $sides; do # until each frontend accepts connections (5 s at most)
  for try in $(seq 100); do
    (exec 3<> "/dev/tcp/${front[$side]%:*}/${front[$side]##*:}") 2>/dev/null && break
    if ! kill -0 "$haproxy_pid" 2>/dev/null || [ "$try" = 100 ]; then
      echo "$0: haproxy is not listening on ${front[$side]}:" >&2; cat "$dir/haproxy.stderr" >&2; exit 1
    fi
    sleep 0.05
  done
done

echo "echo, $connections connections, $rounds rounds of $seconds s per side," \
    "$("$haproxy" -v | awk 'NR == 1 {print $1, $2, $3}')"
row() { # side, req/s, server ticks, haproxy ticks, requests
  awk -v side="$1" -v q="$2" -v s="$3" -v h="$4" -v r="$5" -v hz="$hz" \
      'BEGIN { printf "%-26s %10.0f  %22.2f  %22.2f\n", side, q, s * 1e6 / hz / r, h * 1e6 / hz / r }'
}
printf '%-26s %10s  %22s  %22s\n' side req/s "server µs CPU/request" "haproxy µs CPU/request"
declare -A server_ticks haproxy_ticks total_requests
# The sides take turns, round after round: a change in the machine's load between rounds shows as
# a difference between rounds of one side, not as one between the sides.
for round in $(seq "$rounds"); do
  for side in $sides; do
    server_before=$(cpu_ticks "${pid[$side]}") haproxy_before=$(cpu_ticks "$haproxy_pid")
    report=$("$oneloop" load "${front[$side]}" --connections "$connections" \
        --duration "$seconds" --warmup 0 --json)
    server=$(($(cpu_ticks "${pid[$side]}") - server_before))
    haproxy_cpu=$(($(cpu_ticks "$haproxy_pid") - haproxy_before))
    requests=$(field requests <<< "$report") rps=$(field rps <<< "$report")
    errors=$(field errors <<< "$report") established=$(field established <<< "$report")
    if [ "$errors" != 0 ] || [ "$established" != "$connections" ]; then
      echo "$0: $side: $errors errors, $established of $connections connections: $report" >&2
      exit 1
    fi
    row "$side (round $round)" "$rps" "$server" "$haproxy_cpu" "$requests"
    server_ticks[$side]=$((${server_ticks[$side]:-0} + server))
    haproxy_ticks[$side]=$((${haproxy_ticks[$side]:-0} + haproxy_cpu))
    total_requests[$side]=$((${total_requests[$side]:-0} + requests))
  done
done
for side in $sides; do
  row "$side (all)" "$(awk -v r="${total_requests[$side]}" -v t=$((rounds * seconds)) \
      'BEGIN { print r / t }')" "${server_ticks[$side]}" "${haproxy_ticks[$side]}" \
      "${total_requests[$side]}"
done
