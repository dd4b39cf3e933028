#!/usr/bin/env bash
# What a disk wait costs the other clients of one loop.
#
#   scripts/upload-latency.sh [threads|loop] [SECS] [UPLOADERS] [MIB]
#
# Starts `oneloop serve --upload-io MODE upload@… echo@…`, measures an echo client's latency
# (`oneloop load --connections 1`) alone, then again while UPLOADERS [4] clients each upload MIB
# [512] MiB with `oneloop send`, over and over, as fast as they can — at nice 19: on a small
# machine the uploaders must not take the cores from the server, or the figure measures the
# scheduler. With `threads` (the design) the file work runs on I/O threads; with `loop` (the foil)
# every write and fsync runs in the event loop, and the echo client waits behind them. Prints
# both p50/p99/max and the upload rate. A closed-loop client sends its next request only after
# the answer, so a stall delays one request, not all those that would have come meanwhile: the
# max and the echo client's req/s show a stall better than the p99 does.
# Needs a release build (cargo build --release) and UPLOADERS × MIB of free disk for a moment.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-threads}
SECS=${2:-10}
UPLOADERS=${3:-4}
MIB=${4:-512}
BIN=target/release/oneloop

WORK=$(mktemp -d /var/tmp/oneloop-upload-latency.XXXXXX)
STORE="$WORK/store"
mkdir "$STORE"
SERVER_PID=
cleanup() {
    touch "$WORK/stop"
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The files to send: sparse (reading them costs no disk), so the disk's work is the server's.
for i in $(seq "$UPLOADERS"); do truncate -s "${MIB}M" "$WORK/file$i"; done

"$BIN" serve --upload-io "$MODE" upload@127.0.0.1:0 echo@127.0.0.1:0 \
    --upload-dir "$STORE" > "$WORK/listening" &
SERVER_PID=$!
for _ in $(seq 50); do [ "$(wc -l < "$WORK/listening")" -ge 2 ] && break; sleep 0.1; done
UPLOAD=$(awk '$2 == "upload" {print $4}' "$WORK/listening")
ECHO=$(awk '$2 == "echo" {print $4}' "$WORK/listening")

latency() {
    "$BIN" load "$ECHO" --connections 1 --duration "$SECS" --json |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('p50 %d µs, p99 %d µs, max %d µs, %.0f req/s' % (r['p50_us'], r['p99_us'], r['max_us'], r['rps']))"
}

echo "upload-io $MODE; echo client alone:              $(latency)"
for i in $(seq "$UPLOADERS"); do
    (
        n=0
        while [ ! -e "$WORK/stop" ]; do
            nice -n 19 "$BIN" send "$UPLOAD" "$WORK/file$i" --name "u$i" > /dev/null
            rm -f "$STORE"/u"$i"*
            n=$((n + 1))
            echo "$n" > "$WORK/count$i"
        done
    ) &
done
sleep 1
STARTED=$(date +%s.%N)
RESULT=$(latency)
touch "$WORK/stop"
ENDED=$(date +%s.%N)
wait $(jobs -p | grep -v "^$SERVER_PID$") 2>/dev/null || true
DONE=0
for i in $(seq "$UPLOADERS"); do DONE=$((DONE + $(cat "$WORK/count$i" 2>/dev/null || echo 0))); done
echo "upload-io $MODE; beside $UPLOADERS uploaders of $MIB MiB: $RESULT"
python3 -c "print(f'uploads stored (fsync\'d): {$DONE} of $MIB MiB in about {$ENDED - $STARTED + 1:.0f} s')"
