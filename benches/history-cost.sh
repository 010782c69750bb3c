#!/usr/bin/env bash
# What resumable delivery costs the fan-out: server CPU per delivery (µs) of a broadcast to N
# listeners (one publisher, `--rate max`, 10 s) with the history off (`history.maxBytes: 0`), on,
# and on with every listener asking for positions (`?recover=1`, so the positioned variant of
# every event is made and sent). Alternates the three, ROUNDS times, a fresh broker per run.
#
#   benches/history-cost.sh [LISTENERS]        (default 1000; ROUNDS="1 2 3" by default)
#
# Release binaries from target/release (cargo build --release -p broker -p loadtest). Loopback
# only (ports HISTORY_COST_PORT, default 18490, and the next one); every run bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bin=${BIN:-target/release}
listeners=${1:-1000}
port=${HISTORY_COST_PORT:-18490}; ops=$((port + 1))
[ -x "$bin/broker" ] && [ -x "$bin/loadtest" ] || cargo build --release -q -p broker -p loadtest
work=$(mktemp -d); pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

run() { # run HISTORY_BYTES QUERY: prints "cpu_us_per_delivery completeness errors"
    cat >"$work/config.json" <<J
{"websocket": {"host": "127.0.0.1", "port": $port, "approvedSocketDomains": ["^http://localhost\$"]},
 "broker": {"ops": {"host": "127.0.0.1", "port": $ops}, "drainWindow": 0, "history": {"maxBytes": $1},
  "limits": {"maxConnectionsPerAddress": 0, "clientFanoutPerSecond": 0, "clientFanoutBytesPerSecond": 0,
             "sendQueueBytes": 16777216, "handshakeTimeout": 30}}}
J
    RUST_LOG=warn "$bin/broker" --config "$work/config.json" run >/dev/null 2>&1 & pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$ops") 2>/dev/null && break; sleep 0.05; done
    timeout 120 "$bin/loadtest" --url "ws://127.0.0.1:$port/$2" --origin http://localhost \
        --server-pid "$pid" --json -q broadcast -l "$listeners" -p 1 --rate max --in-flight 16 -d 10s \
        >"$work/run.json" 2>"$work/run.err" || true
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; pid=
    jq -r '[([.server.phases[] | select(.name == "send" or .name == "drain") | .cpu_s] | add)
            * 1e6 / .delivery.received, .delivery.completeness, .messages.errors] | @tsv' "$work/run.json"
}

echo "round  history    cpu_us/delivery  completeness  errors   ($listeners listeners)"
for round in ${ROUNDS:-1 2 3}; do
    printf '%-6s off        %s\n' "$round" "$(run 0 '')"
    printf '%-6s on         %s\n' "$round" "$(run 16777216 '')"
    printf '%-6s positions  %s\n' "$round" "$(run 16777216 '?recover=1')"
done
