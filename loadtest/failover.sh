#!/usr/bin/env bash
# Does a deploy lose events for clients that resume? Two brokers share a nats-server with
# JetStream (positions are cluster-wide), HAProxy sits in front of them, and `loadtest failover`
# runs N listeners through HAProxy with `?recover=1` while one publisher sends numbered
# broadcasts; mid-run broker 1 is disrupted. Three cases, broker 1 restarted between them:
#
#   drain       POST /admin/v1/drain to broker 1; listeners resume with ?since=   (must lose nothing)
#   sigkill     SIGKILL to broker 1; listeners resume with ?since=              (reported as is)
#   norecover   POST /admin/v1/drain to broker 1; listeners reconnect WITHOUT positions (today)
#
#   loadtest/failover.sh                   # 2,000 listeners, 200 events/s for 20 s, all three cases
#   loadtest/failover.sh 200               # smaller
#   BIN_DIR=target/debug CASES="drain norecover" SEND_FOR=4s loadtest/failover.sh 200
#
# Settings (environment): BIN_DIR (release build by default), RATE (200), SEND_FOR (20s),
# DISRUPT_AT (5s), DRAIN_WINDOW (brokers' broker.drainWindow, 5), CASES, SOURCE_ADDRS (4),
# OUT_DIR (keep each case's JSON there), LIMIT_S (the whole script's bound, 600), KEEP_WORK=1.
#
# Loopback only (127.0.0.1, ports the script picks); bounded in time (LIMIT_S, and every wait
# has its own deadline); everything it starts is stopped when it ends, however it ends.
# Needs nats-server (with JetStream), haproxy and curl. Exit status: 0 when the drain case with
# recovery held its thresholds (missing, duplicates, out of order, incomplete recoveries and
# listeners left without a connection all 0) and every case ran; 1 when it did not; 2 setup.
set -euo pipefail

LISTENERS=${1:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
RATE=${RATE:-200}
SEND_FOR=${SEND_FOR:-20s}
DISRUPT_AT=${DISRUPT_AT:-5s}
DRAIN_WINDOW=${DRAIN_WINDOW:-5}
CASES=${CASES:-drain sigkill norecover}
SOURCE_ADDRS=${SOURCE_ADDRS:-4}
LIMIT_S=${LIMIT_S:-600}
KEY=failover-publisher-key
TOKEN=failover-admin-token

case "$LISTENERS" in '' | *[!0-9]*) echo "failover: LISTENERS must be a number" >&2; exit 2 ;; esac
for c in $CASES; do
    case "$c" in drain | sigkill | norecover) ;; *) echo "failover: unknown case $c" >&2; exit 2 ;; esac
done
HAPROXY=$(command -v haproxy || true)
[ -z "$HAPROXY" ] && [ -x /usr/sbin/haproxy ] && HAPROXY=/usr/sbin/haproxy
[ -n "$HAPROXY" ] || { echo "failover: haproxy is needed (apt-get install haproxy)" >&2; exit 2; }
for tool in nats-server curl; do
    command -v "$tool" >/dev/null || { echo "failover: $tool is needed" >&2; exit 2; }
done
for b in broker loadtest; do
    [ -x "$BIN_DIR/$b" ] || {
        echo "failover: $BIN_DIR/$b missing; cargo build --release -p loadtest -p broker (or set BIN_DIR)" >&2
        exit 2
    }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/failover.XXXXXX")
OUT_DIR=${OUT_DIR:-$WORK}
mkdir -p "$OUT_DIR"
PIDS=()
WATCHDOG=
cleanup() {
    local code=$?
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP_WORK:-}" = 1 ]; then echo "failover: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$code"
}
trap cleanup EXIT
trap 'echo "failover: stopped (time limit or signal)" >&2; exit 130' INT TERM
# The whole script is bounded: past LIMIT_S it stops itself (and cleans up).
# (Short sleeps, and no inherited output: a killed watchdog leaves nothing holding the
# script's stdout open, so callers reading it see its end at once.)
(
    end=$((SECONDS + LIMIT_S))
    while [ "$SECONDS" -lt "$end" ]; do
        sleep 1
        kill -0 $$ 2>/dev/null || exit 0
    done
    kill -TERM $$
) </dev/null >/dev/null 2>&1 &
WATCHDOG=$!

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports below the ephemeral range (32768+), so the clients' own ports never take them.
BASE=$((23000 + ($$ % 400) * 20))
while ! port_free "$BASE" || ! port_free $((BASE + 1)) || ! port_free $((BASE + 2)) ||
    ! port_free $((BASE + 5)) || ! port_free $((BASE + 6)) || ! port_free $((BASE + 11)) ||
    ! port_free $((BASE + 12)); do
    BASE=$((BASE + 20))
done
NATS_PORT=$BASE
WS=("" $((BASE + 1)) $((BASE + 2)))
OPS=("" $((BASE + 11)) $((BASE + 12)))
FRONT=$((BASE + 5))
STATS=$((BASE + 6))

wait_for() { # wait_for SECONDS CMD...: until CMD succeeds, bounded
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$until" ] && return 1
        sleep 0.1
    done
}

echo "== nats-server with JetStream on 127.0.0.1:$NATS_PORT"
mkdir -p "$WORK/js"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
wait_for 10 bash -c "echo >/dev/tcp/127.0.0.1/$NATS_PORT" || { echo "failover: nats-server did not start" >&2; exit 2; }

BROKER_PID=("" "" "")
STARTS=0
start_broker() { # start_broker I
    local i=$1
    STARTS=$((STARTS + 1))
    env RUST_LOG=warn BROKER_HOST=127.0.0.1 BROKER_PORT="${WS[$i]}" \
        BROKER_OPS_HOST=127.0.0.1 BROKER_OPS_PORT="${OPS[$i]}" \
        BROKER_INSTANCE_ID="b$i" BROKER_CLUSTER_NATS="nats://127.0.0.1:$NATS_PORT" \
        BROKER_CLUSTER_SUBJECT="failover$$" BROKER_SOCKET_API_KEY="$KEY" \
        BROKER_ADMIN_TOKEN="$TOKEN" BROKER_TRUSTED_PROXIES='["127.0.0.1"]' \
        BROKER_DRAIN_WINDOW="$DRAIN_WINDOW" BROKER_APPROVED_SOCKET_DOMAINS='["^http://localhost$"]' \
        BROKER_CLIENT_FANOUT_PER_SECOND=0 \
        "$BIN_DIR/broker" >"$WORK/broker$i.$STARTS.log" 2>&1 &
    BROKER_PID[$i]=$!
    PIDS+=($!)
}
ready() { curl -sf --max-time 1 "http://127.0.0.1:${OPS[$1]}/readyz" | grep -q "history: JetStream"; }
wait_ready() {
    wait_for 30 ready "$1" || {
        echo "failover: broker $1 did not become ready with a JetStream history:" >&2
        tail -5 "$WORK/broker$1.$STARTS.log" >&2
        exit 2
    }
}

start_broker 1
start_broker 2
wait_ready 1
wait_ready 2
echo "== brokers b1 (pid ${BROKER_PID[1]}, ws ${WS[1]}, ops ${OPS[1]}) and b2 (pid ${BROKER_PID[2]}, ws ${WS[2]}, ops ${OPS[2]}) ready, history in JetStream"

cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn $((LISTENERS * 2 + 1000))
defaults
    mode http
    timeout connect 5s
    timeout http-request 10s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s
    retries 3
    option redispatch 1
frontend ws_in
    bind 127.0.0.1:$FRONT
    http-request del-header X-Forwarded-For
    option forwardfor
    default_backend brokers
backend brokers
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
    server b1 127.0.0.1:${WS[1]} check port ${OPS[1]}
    server b2 127.0.0.1:${WS[2]} check port ${OPS[2]}
listen stats
    bind 127.0.0.1:$STATS
    stats enable
    stats uri /stats
EOF
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || { echo "failover: haproxy refused its configuration" >&2; exit 2; }
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
server_up() { # server_up NAME: HAProxy sees it UP
    curl -sf --max-time 1 "http://127.0.0.1:$STATS/stats;csv" |
        awk -F, -v s="$1" '$1 == "brokers" && $2 == s && $18 ~ /^UP/ {ok = 1} END {exit !ok}'
}
both_up() { server_up b1 && server_up b2; }
wait_for 20 both_up || { echo "failover: HAProxy does not see both brokers up" >&2; cat "$WORK/haproxy.log" >&2; exit 2; }
echo "== HAProxy on 127.0.0.1:$FRONT, roundrobin over b1 and b2, health checks on /readyz"

THRESHOLDS=(--threshold 'missing==0' --threshold 'duplicates==0' --threshold 'out_of_order==0'
    --threshold 'recoveries_incomplete==0' --threshold 'not_reconnected==0')
STATUS=0
RAN=()
for c in $CASES; do
    if ! kill -0 "${BROKER_PID[1]}" 2>/dev/null; then
        start_broker 1
        wait_ready 1
        wait_for 20 both_up || { echo "failover: HAProxy does not see b1 up again" >&2; exit 2; }
        echo "== b1 restarted (pid ${BROKER_PID[1]})"
    fi
    case "$c" in
        drain) ARGS=(--disrupt drain --drain-url "http://127.0.0.1:${OPS[1]}" --admin-token "$TOKEN" "${THRESHOLDS[@]}") ;;
        sigkill) ARGS=(--disrupt sigkill --kill-pid "${BROKER_PID[1]}" "${THRESHOLDS[@]}") ;;
        norecover) ARGS=(--disrupt drain --drain-url "http://127.0.0.1:${OPS[1]}" --admin-token "$TOKEN" --no-recover) ;;
    esac
    CMD=("$BIN_DIR/loadtest" --url "ws://127.0.0.1:$FRONT/" --api-key "$KEY"
        --source-addrs "$SOURCE_ADDRS" --json failover -l "$LISTENERS" --rate "$RATE"
        -d "$SEND_FOR" --disrupt-at "$DISRUPT_AT" "${ARGS[@]}")
    echo
    echo "== case $c: ${CMD[*]}"
    set +e
    timeout --signal=INT --kill-after=20 $((LIMIT_S / 2)) "${CMD[@]}" >"$OUT_DIR/$c.json" 2>"$WORK/$c.txt"
    code=$?
    set -e
    # The summary without its per-second window rows.
    grep -Ev '^ {15,}[0-9]+\.[0-9] ' "$WORK/$c.txt" || true
    echo "   (loadtest exit status $code)"
    RAN+=("$c")
    if [ "$code" -ge 2 ]; then STATUS=1; fi
    if [ "$c" = drain ] && [ "$code" != 0 ]; then STATUS=1; fi
    # The disrupted broker exits (drain: after its window); bounded wait, then make sure.
    wait_for $((DRAIN_WINDOW + 15)) bash -c "! kill -0 ${BROKER_PID[1]}" || kill -KILL "${BROKER_PID[1]}" 2>/dev/null || true
done

echo
echo "== summary: $LISTENERS listeners through HAProxy, $RATE events/s for $SEND_FOR, broker 1 disrupted at $DISRUPT_AT (drain window ${DRAIN_WINDOW} s)"
if command -v python3 >/dev/null; then
    python3 - "$OUT_DIR" "${RAN[@]}" <<'EOF'
import json, os, sys
out, cases = sys.argv[1], sys.argv[2:]
print(f'   {"case":<10} {"published":>9} {"lost@pub":>8} {"missing":>8} {"(lstnrs)":>8} {"dups":>5} {"order":>5} {"closed":>6} {"recov ok/inc":>12} {"reconnect p50/p99/max ms":>26}')
for c in cases:
    try:
        s = json.load(open(os.path.join(out, c + ".json")))
    except Exception as e:
        print(f"   {c:<10} no result ({e})")
        continue
    f = s.get("failover") or {}
    r = f.get("reconnect_ms") or {}
    rt = "/".join(f'{r[k]:.0f}' for k in ("p50_ms", "p99_ms", "max_ms")) if r else "-"
    rec = f'{f.get("recoveries_complete", 0)}/{f.get("recoveries_incomplete", 0)}' if f.get("recover") else "-"
    print(f'   {c:<10} {f.get("published", 0):>9} {f.get("publish_lost", 0):>8} {f.get("missing", 0):>8} '
          f'{f.get("missing_listeners", 0):>8} {f.get("duplicates", 0):>5} {f.get("out_of_order", 0):>5} '
          f'{f.get("closed_listeners", 0):>6} {rec:>12} {rt:>26}')
EOF
fi
exit "$STATUS"
