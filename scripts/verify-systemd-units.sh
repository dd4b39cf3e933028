#!/usr/bin/env bash
# Checks contrib/systemd/ with `systemd-analyze verify` (and prints `systemd-analyze security`'s
# score for the service), without installing anything on this machine: the units, the oneloop
# binary their ExecStart= names and the distribution's own units are laid out in a throw-away
# root directory, which `--root` then checks. Needs systemd-analyze (Debian: package systemd);
# systemd need not be running.
# Usage: scripts/verify-systemd-units.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin oneloop
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp target/debug/oneloop "$root/usr/local/bin/oneloop"
cp contrib/systemd/*.socket contrib/systemd/*.service "$root/etc/systemd/system/"
# sysinit.target, sockets.target and the rest the units are ordered against.
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cd "$root/etc/systemd/system"
units=(oneloop*.socket oneloop.service)
# verify prints nothing when every unit loads cleanly; an unknown or misspelt key is only a
# warning with exit status 0, so any output at all counts as a failure here.
report=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || status=$?
if [ -n "$report" ] || [ "${status:-0}" -ne 0 ]; then
    printf '%s\n' "$report" >&2
    echo "systemd-analyze verify: failed (status ${status:-0})" >&2
    exit 1
fi
systemd-analyze security --offline=yes --root="$root" oneloop.service | tail -1
echo "systemd-analyze verify: ${units[*]}: ok"
