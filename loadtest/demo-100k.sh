#!/usr/bin/env bash
# 100,000 concurrent WebSocket connections on one machine, the way six instances behind a load
# balancer would hold them: six broker processes sharing one nats-server, each process under its
# own open-file limit, driven by `loadtest --workers` (each worker under its own limit too).
#
# Two phases, each over every connection: a broadcast to all (every listener must get every
# event) and user-targeted events (each connection is its own user, with a token signed with the
# brokers' JWT secret; every event must reach its user's connection and no other). The second
# phase takes over the first one's connections (a mixed run carries them over). The run fails
# (exit 1) unless both are 100 % complete. Printed: completeness, latency percentiles, and each
# broker's resident memory per connection.
#
#   loadtest/demo-100k.sh                      # 100,000 connections, 6 brokers, 6 workers
#   loadtest/demo-100k.sh 3000 2 2             # the bounded version (the cargo test runs it)
#   BIN_DIR=target/debug loadtest/demo-100k.sh 3000 2 2
#
# Everything runs on loopback (127.0.0.1, brokers on ports the script picks) and everything the
# script starts is stopped when it ends, however it ends. Needs nats-server and curl.
set -euo pipefail

CONNECTIONS=${1:-100000}
BROKERS=${2:-6}
WORKERS=${3:-6}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
# Each broker and each worker: its own descriptor limit, as on separate hosts.
FD_LIMIT=${FD_LIMIT:-20000}
CONNECT_RATE=${CONNECT_RATE:-4000}
BROADCAST_RATE=${BROADCAST_RATE:-2}
USER_RATE=${USER_RATE:-1000}
SEND_FOR=${SEND_FOR:-10s}
# The whole script is bounded: past this, everything is stopped.
LIMIT_S=${LIMIT_S:-900}
SECRET=loadtest-demo-secret-0123456789abcdef
KEY=demo-publisher-key

for tool in nats-server curl; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is needed" >&2; exit 2; }
done
for b in broker loadtest; do
    [ -x "$BIN_DIR/$b" ] || { echo "demo: $BIN_DIR/$b missing; cargo build --release -p loadtest -p broker" >&2; exit 2; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/demo-100k.XXXXXX")
PIDS=()
SAMPLER=
cleanup() {
    local code=$?
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Brokers drain on SIGTERM; give them a few seconds, then make sure.
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP_WORK:-}" = 1 ]; then echo "demo: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run under FD_LIMIT open files when prlimit is there: ${LIMITED[@]} CMD...
LIMITED=()
command -v prlimit >/dev/null && LIMITED=(prlimit --nofile="$FD_LIMIT":"$FD_LIMIT")

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports below the ephemeral range (32768+), so the clients' own ports never take them.
BASE=$((21000 + ($$ % 400) * 20))
while ! port_free "$BASE"; do BASE=$((BASE + 20)); done
NATS_PORT=$BASE

wait_for() { # wait_for SECONDS CMD...: until CMD succeeds, bounded
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$until" ] && return 1
        sleep 0.1
    done
}

echo "== nats-server on 127.0.0.1:$NATS_PORT"
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
wait_for 10 bash -c "echo >/dev/tcp/127.0.0.1/$NATS_PORT" || { echo "demo: nats-server did not start" >&2; exit 2; }

URLS=()
OPS=()
BROKER_PIDS=()
for i in $(seq 1 "$BROKERS"); do
    ws=$((BASE + i)); ops=$((BASE + 10 + i))
    cat >"$WORK/broker$i.json" <<EOF
{"websocket":{"port":$ws,"host":"127.0.0.1","approvedSocketDomains":["^http://localhost\$"],"socketApiKey":"$KEY"},
 "broker":{"jwtSecret":"$SECRET","ops":{"host":"127.0.0.1","port":$ops},
           "cluster":{"nats":"nats://127.0.0.1:$NATS_PORT","subject":"demo$$"}}}
EOF
    RUST_LOG=warn "${LIMITED[@]}" "$BIN_DIR/broker" -c "$WORK/broker$i.json" >"$WORK/broker$i.log" 2>&1 &
    PIDS+=($!); BROKER_PIDS+=($!)
    URLS+=("ws://127.0.0.1:$ws/"); OPS+=("$ops")
done
for i in $(seq 1 "$BROKERS"); do
    wait_for 20 curl -sf "http://127.0.0.1:${OPS[$((i - 1))]}/readyz" || {
        echo "demo: broker $i did not become ready:" >&2; tail -5 "$WORK/broker$i.log" >&2; exit 2; }
done
echo "== $BROKERS brokers ready (pids ${BROKER_PIDS[*]}), open-file limit $FD_LIMIT each"

# Every second: each broker's resident memory and open connections.
(
    while :; do
        for i in $(seq 1 "$BROKERS"); do
            pid=${BROKER_PIDS[$((i - 1))]}
            rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            conns=$(curl -s --max-time 1 "http://127.0.0.1:${OPS[$((i - 1))]}/metrics" 2>/dev/null |
                awk '/^broker_connections_open/ {s += $NF} END {print s + 0}')
            echo "$i $rss $conns"
        done >>"$WORK/samples.txt"
        sleep 1
    done
) &
SAMPLER=$!

cat >"$WORK/demo.toml" <<EOF
[[phase]]
name = "broadcast to all $CONNECTIONS"
scenario = "broadcast"
listeners = $CONNECTIONS
publishers = $WORKERS
rate = $BROADCAST_RATE
duration = "$SEND_FOR"
drain = "60s"

[[phase]]
name = "user-targeted, one user per connection"
scenario = "publish"
via = "ws"
listeners = $CONNECTIONS
publishers = $WORKERS
rate = $USER_RATE
duration = "$SEND_FOR"
drain = "60s"
[[phase.event]]
target = "user"
type = 1
EOF

# Source addresses: 127.0.0.1..4, so no (source, destination) pair runs out of ephemeral ports.
CMD=("${LIMITED[@]}" "$BIN_DIR/loadtest" --url "$(IFS=,; echo "${URLS[*]}")" --api-key "$KEY"
    --jwt-secret "$SECRET" --workers "$WORKERS" --source-addrs 4 --connect-rate "$CONNECT_RATE"
    --max-inflight 128 --connect-timeout 30s --window 5s
    --threshold 'completeness>=1' --threshold 'failed==0'
    --json mixed "$WORK/demo.toml")
echo "== loadtest: $CONNECTIONS connections over $BROKERS brokers from $WORKERS workers"
echo "   ${CMD[*]}"
set +e
timeout --signal=INT --kill-after=30 "$LIMIT_S" "${CMD[@]}" >"$WORK/result.json"
STATUS=$?
set -e
kill "$SAMPLER" 2>/dev/null || true; SAMPLER=

echo "== brokers: resident memory per connection (at each broker's peak of open connections)"
awk -v n="$BROKERS" '
    { if (!($1 in base)) base[$1] = $2
      if ($3 > peak[$1]) { peak[$1] = $3; rss[$1] = $2 } }
    END {
        for (i = 1; i <= n; i++) {
            per = peak[i] > 0 ? (rss[i] - base[i]) / peak[i] : 0
            printf "   broker %d: %6d connections, RSS %7.1f MiB (idle %5.1f MiB): %5.1f KiB per connection\n",
                i, peak[i], rss[i] / 1024, base[i] / 1024, per
            tc += peak[i]; tr += rss[i] - base[i]
        }
        if (tc > 0) printf "   all:      %6d connections, %.1f KiB per connection\n", tc, tr / tc
    }' "$WORK/samples.txt"
echo "== loadtest exit status $STATUS (0: every threshold held)"
if command -v python3 >/dev/null && [ -s "$WORK/result.json" ]; then
    python3 - "$WORK/result.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for p in s["phases"]:
    for r in p["runs"]:
        d, l = r["delivery"], r["latency"]
        dl = l.get("delivery", {})
        # A phase that took over every connection of the one before made no handshake.
        hs = l.get("handshake", {}).get("p99_ms", "-")
        c = r["connections"]
        print(f'   {p["name"]}: {d["listeners"]} listeners, {d["sent"]} events, '
              f'{d["received"]}/{d["expected"]} delivered, completeness {d["completeness"]*100:.4f}%, '
              f'misdelivered {d.get("misdelivered", 0)}; delivery p50 {dl.get("p50_ms")} ms, '
              f'p99 {dl.get("p99_ms")} ms, max {dl.get("max_ms")} ms; handshake p99 '
              f'{hs} ms; connections {c["established"]} established '
              f'({c.get("reused", 0)} carried over), {c["failed"]} failed')
EOF
fi
exit "$STATUS"
