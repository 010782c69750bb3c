#!/usr/bin/env bash
# A bounded soak of the broker: `loadtest soak` holds connections with a steady mix of echoes
# and broadcasts while the broker's memory (VmRSS) and open file descriptors are sampled from
# /proc. Fails if either grows after warm-up, if descriptors do not return to their baseline
# once the clients have gone, or if RSS is not back within 20 MiB of its start within a minute
# of that. Loopback only; stops by itself.
#
#   loadtest/soak-broker.sh [SECONDS] [CONNECTIONS]     (defaults: 120 500)
#   BIN=target/release loadtest/soak-broker.sh 600 5000  (longer, by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}; conns=${2:-500}; bin=${BIN:-target/debug}; every=5
[ -x "$bin/broker" ] && [ -x "$bin/loadtest" ] || cargo build -q -p broker -p loadtest
work=$(mktemp -d); broker_pid=
cleanup() { [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

BROKER_HOST=127.0.0.1 BROKER_PORT=18180 BROKER_OPS_PORT=19180 RUST_LOG=warn \
    "$bin/broker" >"$work/broker.log" 2>&1 & broker_pid=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:19180/readyz >/dev/null 2>&1 && break; sleep 0.1; done

sample() { # prints "rss_kib fds"
    echo "$(awk '/^VmRSS:/ {print $2}' /proc/$broker_pid/status) $(ls /proc/$broker_pid/fd | wc -l)"
}
read -r rss0 fds0 < <(sample)
echo "baseline: RSS ${rss0} KiB, ${fds0} fds"

"$bin/loadtest" --url ws://127.0.0.1:18180/ --origin http://localhost --quiet --json --window 10s \
    soak -c "$conns" -d "${secs}s" --echo-interval 1s --broadcast-rate 10 >"$work/soak.json" &
lt=$!
: >"$work/samples"
t=0
while kill -0 "$lt" 2>/dev/null; do
    sleep "$every"; t=$((t + every))
    kill -0 "$lt" 2>/dev/null || break
    read -r rss fds < <(sample)
    echo "$t $rss $fds" >>"$work/samples"
    printf '  t=%4ss  RSS %7s KiB  fds %5s\n' "$t" "$rss" "$fds"
done
wait "$lt"

# Descriptors back to baseline once the clients are gone.
for _ in $(seq 100); do read -r rss_end fds_end < <(sample); [ "$fds_end" -le $((fds0 + 2)) ] && break; sleep 0.1; done
echo "after the clients left: RSS ${rss_end} KiB, ${fds_end} fds"
# Memory handed back: within a minute, RSS within 20 MiB of where it started.
rss_back=$rss_end
for _ in $(seq 120); do
    read -r rss_back _ < <(sample)
    [ "$rss_back" -le $((rss0 + 20480)) ] && break
    sleep 0.5
done
echo "memory handed back: RSS ${rss_back} KiB (started at ${rss0} KiB)"

python3 - "$work/samples" "$work/soak.json" "$fds0" "$fds_end" "$rss0" "$rss_back" <<'PY'
import json, sys
samples = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
summary = json.load(open(sys.argv[2]))
fds0, fds_end = int(sys.argv[3]), int(sys.argv[4])
rss0, rss_back = int(sys.argv[5]), int(sys.argv[6])
n = len(samples)
if n < 6:
    sys.exit(f"too few samples ({n}): run longer")
third = n // 3
mid = samples[third:2 * third]
last = samples[2 * third:]
rss_mid, rss_last = max(s[1] for s in mid), max(s[1] for s in last)
fds_mid, fds_last = max(s[2] for s in mid), max(s[2] for s in last)
errors = summary["messages"]["errors"]
print(f"RSS after warm-up {rss_mid} KiB, at the end {rss_last} KiB ({rss_last / rss_mid:.3f}x)")
print(f"fds after warm-up {fds_mid}, at the end {fds_last}; {fds_end} after the clients left (baseline {fds0})")
d = summary.get("delivery") or {}
print(f"loadtest: {summary['messages']['sent']} sent, {summary['messages']['received']} received, {errors} errors, "
      f"completeness {100 * d.get('completeness', 0):.4f} %, drift {json.dumps(summary.get('drift'))}")
problems = []
if rss_last > rss_mid * 1.10 + 2048:
    problems.append("memory grew after warm-up")
if fds_last > fds_mid + 5:
    problems.append("file descriptors grew after warm-up")
if fds_end > fds0 + 2:
    problems.append("file descriptors did not return to the baseline")
if rss_back > rss0 + 20480:
    problems.append(f"memory was not handed back within a minute ({rss_back} KiB, started at {rss0})")
if errors:
    problems.append(f"{errors} errors")
if d and d.get("completeness", 1) < 1:
    problems.append("broadcasts were lost")
if problems:
    sys.exit("soak failed: " + "; ".join(problems))
print("soak passed: 0 errors, no growth after warm-up")
PY
