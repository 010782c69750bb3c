#!/usr/bin/env bash
# One instance against two instances sharing events through NATS, both behind the shipped
# HAProxy config, driven by `loadtest broadcast` in the same run. Loopback only; every process
# started here is stopped on exit.
#
#   deploy/compare-cluster.sh [LISTENERS] [RATE] [SECONDS]     (defaults: 2000 100 15)
#
# Needs haproxy and nats-server (apt-get install haproxy nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
listeners=${1:-2000}; rate=${2:-100}; secs=${3:-15}
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -q -p broker -p loadtest
bin=target/release

nats-server -a 127.0.0.1 -p 14222 >/dev/null 2>&1 & pids+=($!)

# The shipped HAProxy config with this run's addresses: a minimal `global`, loopback `bind`,
# no slow start, and the given servers.
haproxy_cfg() { # haproxy_cfg FILE SERVER_LINES...
    local out=$1; shift
    awk -v servers="$(printf '%s\n' "$@")" '
        /^global/ { print "global\n    maxconn 9000\n"; skip=1; next }
        skip && /^[a-z]/ { skip=0 }
        skip { next }
        /^[[:space:]]*log / { next }
        /^listen stats/ { stats=1; next }
        stats && /^[a-z]/ { stats=0 }
        stats { next }
        /^[[:space:]]*bind :80/ { print "    bind 127.0.0.1:18000"; next }
        /^[[:space:]]*server b[0-9]/ { if (!done) { print servers; done=1 }; next }
        { gsub(/ slowstart [0-9a-z]+/, ""); print }
    ' deploy/haproxy.cfg > "$out"
}

start_broker() { # start_broker NAME WSPORT OPSPORT [NATS]
    BROKER_HOST=127.0.0.1 BROKER_PORT=$2 BROKER_OPS_PORT=$3 BROKER_INSTANCE_ID=$1 \
    BROKER_SOCKET_API_KEY=compare-key BROKER_CLUSTER_NATS=${4:-} \
    BROKER_APPROVED_SOCKET_DOMAINS='["^http://localhost$"]' RUST_LOG=warn \
        $bin/broker >"$work/$1.log" 2>&1 & pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$3/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
    echo "broker $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}

run() { # run LABEL -> JSON summary in $work/LABEL.json
    local haproxy_pid=$1 label=$2
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18000) 2>/dev/null && break; sleep 0.1; done
    $bin/loadtest --url ws://127.0.0.1:18000/ --api-key compare-key --source-addrs 4 --quiet --json \
        broadcast -l "$listeners" -p 2 --rate "$rate" -d "${secs}s" > "$work/$label.json"
    kill "$haproxy_pid"
}

# One instance.
start_broker one 18081 19081
haproxy_cfg "$work/one.cfg" "    server b1 127.0.0.1:18081 check port 19081"
haproxy -f "$work/one.cfg" -db >"$work/haproxy-one.log" 2>&1 & hp=$!; pids+=($hp)
run $hp one
kill "${pids[1]}"

# Two instances with NATS.
start_broker a 18082 19082 nats://127.0.0.1:14222
start_broker b 18083 19083 nats://127.0.0.1:14222
for port in 19082 19083; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/metrics" | grep -q '^broker_cluster_connected 1' && break; sleep 0.1; done
done
haproxy_cfg "$work/two.cfg" "    server b1 127.0.0.1:18082 check port 19082" "    server b2 127.0.0.1:18083 check port 19083"
haproxy -f "$work/two.cfg" -db >"$work/haproxy-two.log" 2>&1 & hp=$!; pids+=($hp)
run $hp two
share=$(for port in 19082 19083; do curl -fs "http://127.0.0.1:$port/metrics" | awk '/^broker_cluster_messages_total/ {printf "%s ", $0}'; done)

python3 - "$work/one.json" "$work/two.json" "$listeners" "$rate" "$secs" <<'PY'
import json, sys
one, two = (json.load(open(p)) for p in sys.argv[1:3])
print(f"broadcast: {sys.argv[3]} listeners, 2 publishers, {sys.argv[4]} events/s, {sys.argv[5]} s, through HAProxy")
print(f"{'':28}{'one instance':>16}{'two + NATS':>16}")
def row(name, f):
    print(f"{name:28}{f(one):>16}{f(two):>16}")
row("deliveries/s", lambda s: f"{s['messages']['received_per_s']:,.0f}")
row("completeness", lambda s: f"{100*s['delivery']['completeness']:.4f} %")
row("missing / duplicates", lambda s: f"{s['delivery']['missing']} / {s['delivery']['duplicates']}")
for p in ("p50_ms", "p99_ms", "max_ms"):
    row(f"delivery latency {p[:-3]}", lambda s, p=p: f"{s['latency']['delivery'][p]:.1f} ms")
PY
echo "cluster counters: $share"
