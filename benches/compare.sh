#!/usr/bin/env bash
# The broker against the straightforward design (benches/plain-server) and against the floor
# (benches/floor-server: one thread, epoll, pre-framed writes; issue #18), end to end over real
# sockets on this machine: the same loadtest runs against each server, with the server's CPU
# time and resident memory read per phase (`loadtest --server-pid`). Prints one markdown table
# and keeps every run's raw JSON.
#
#   benches/compare.sh [--quick] [--rounds N] [--out DIR]
#
#   --quick     skip the 19,000-connection run
#   --rounds N  run every case N times (default 3), the three servers one after another in each
#               round, and report for each server and case the run with the median server CPU
#               per unit of work (one run on a shared VM moves by 10 to 30 %)
#   --out DIR   where to write the results (default benches/results/<date>/)
#
# Environment: COMPARE_PORT (default 18480; the WebSocket port of every server in turn),
# COMPARE_OPS_PORT (default 19480; the broker's ops listener) and COMPARE_HISTORY_BYTES (the
# broker's broker.history.maxBytes, default 16777216; 0 turns positions and resuming off, to
# measure what the history costs). Loopback only. Every run is
# bounded (loadtest's own deadline, and `timeout` around it); each server is started afresh for
# each run, so one run's memory does not blur the next one's, and stopped after it (SIGTERM,
# then SIGKILL after 10 s). Nothing is left running if the script is interrupted.
#
# loadtest and the server share this machine's cores, so take ratios rather than absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=
out=
rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --rounds) [ $# -ge 2 ] || { echo "--rounds needs a number" >&2; exit 2; }; rounds=$2; shift ;;
        --rounds=*) rounds=${1#--rounds=} ;;
        --out) [ $# -ge 2 ] || { echo "--out needs a directory" >&2; exit 2; }; out=$2; shift ;;
        --out=*) out=${1#--out=} ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

case $rounds in ''|*[!0-9]*|0) echo "--rounds takes a number from 1 up" >&2; exit 2 ;; esac

port=${COMPARE_PORT:-18480}
ops_port=${COMPARE_OPS_PORT:-19480}
stamp=$(date +%Y-%m-%d_%H%M%S)
out=${out:-$root/benches/results/$stamp}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Settings from the caller's environment would change what is measured (a LOADTEST_API_KEY
# turns the broadcast publishers into publisher connections, BROKER_* override the config).
for v in $(compgen -e); do
    case $v in BROKER_*|LOADTEST_*) unset "$v" ;; esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
need_pkg() { # need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "== installing $2 (for $1)"
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
need_pkg jq jq
need_pkg timeout coreutils

# Every connection is a descriptor, in the server and in loadtest alike (both inherit this).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fd_limit=$(ulimit -n)

echo "== cargo build --release -p broker -p loadtest -p plain-server -p floor-server"
cargo build --release -p broker -p loadtest -p plain-server -p floor-server
bin=${CARGO_TARGET_DIR:-$root/target}/release
case $bin in /*) ;; *) bin=$root/$bin ;; esac

work=$(mktemp -d)
server_pid=
lt_pid=
stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    local i
    for i in $(seq 100); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "   server $server_pid still running 10 s after SIGTERM: SIGKILL" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}
cleanup() {
    [ -z "$lt_pid" ] || kill -TERM "$lt_pid" 2>/dev/null || true
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# One config file for every server: plain-server and floor-server read the same file (port and
# origins only).
cfg=$work/config.json
cat >"$cfg" <<EOF
{
  "websocket": {
    "host": "127.0.0.1",
    "port": $port,
    "approvedSocketDomains": ["^http://localhost\$"]
  },
  "broker": {
    "logFormat": "text",
    "ops": { "host": "127.0.0.1", "port": $ops_port },
    // Exit at once on SIGTERM: there is nobody to drain for.
    "drainWindow": 0,
    "history": { "maxBytes": ${COMPARE_HISTORY_BYTES:-16777216} },
    "limits": {
      "maxConnections": 100000,
      "maxConnectionsPerAddress": 0,
      "messagesPerSecond": 0,
      // loadtest broadcasts from ordinary clients at the rates it measures.
      "clientFanoutPerSecond": 0,
      "clientFanoutBytesPerSecond": 0,
      "sendQueueBytes": 16777216,
      "handshakeTimeout": 30
    }
  }
}
EOF

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() { # start_server broker|plain|floor LOG
    local which=$1 log=$2 i
    for p in "$port" "$ops_port"; do
        if port_open "$p"; then
            echo "port $p on 127.0.0.1 is already in use; set COMPARE_PORT / COMPARE_OPS_PORT" >&2
            exit 1
        fi
    done
    case $which in
        broker) RUST_LOG=warn "$bin/broker" --config "$cfg" run >"$log" 2>&1 & ;;
        plain) "$bin/plain-server" --config "$cfg" --bind 127.0.0.1 >"$log" 2>&1 & ;;
        floor) "$bin/floor-server" --config "$cfg" --bind 127.0.0.1 >"$log" 2>&1 & ;;
    esac
    server_pid=$!
    for i in $(seq 200); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "$which exited at start-up:" >&2; tail -n 20 "$log" >&2; exit 1
        fi
        case $which in
            # The ops listener is bound after the WebSocket one.
            broker) port_open "$ops_port" && return 0 ;;
            plain|floor) grep -qs '^listening on ' "$log" && return 0 ;;
        esac
        sleep 0.05
    done
    echo "$which did not start listening within 10 s:" >&2; tail -n 20 "$log" >&2; exit 1
}

# run_case SERVER NAME LOADTEST-ARGS...: a fresh server, one loadtest run, the server stopped.
# Leaves $out/SERVER-NAME.json (the summary), .stderr (loadtest), .server.log, .rc (exit status).
run_case() {
    local which=$1 name=$2; shift 2
    local base=$out/$which-$name rc=0
    echo "== $which: $name: loadtest $*"
    start_server "$which" "$base.server.log"
    timeout --kill-after=10 600 "$bin/loadtest" --url "ws://127.0.0.1:$port/" --origin http://localhost \
        --server-pid "$server_pid" --json -q "$@" >"$base.json" 2>"$base.stderr" &
    lt_pid=$!
    wait "$lt_pid" || rc=$?
    lt_pid=
    stop_server
    echo "$rc" >"$base.rc"
    [ "$rc" = 0 ] || { echo "   loadtest exit status $rc:" >&2; tail -n 5 "$base.stderr" >&2; }
}

{
    echo "# broker vs plain-server and the floor, $(date '+%Y-%m-%d %H:%M:%S %Z')"
    echo
    echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
        "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) memory, kernel $(uname -r)"
    echo "- $(rustc --version), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- open-files limit $fd_limit; loadtest and the server on the same machine, 127.0.0.1 only"
    echo "- raw JSON of every run: $out"
} >"$out/machine.md"
cat "$out/machine.md"

servers=(broker plain floor)
# Round by round, case by case, the three servers one after the other: whatever else loads the
# machine at some moment weighs on all three alike. Runs are named SERVER-CASE.rN.
for r in $(seq "$rounds"); do
    for s in "${servers[@]}"; do
        run_case "$s" "connect-2000.r$r" connect -c 2000 --hold 5s --source-addrs 4 --connect-rate 100000 --max-inflight 64
    done
    if [ -z "$quick" ]; then
        for s in "${servers[@]}"; do
            run_case "$s" "connect-19000.r$r" connect -c 19000 --hold 5s --source-addrs 8 --connect-rate 100000 --max-inflight 64
        done
    fi
    for s in "${servers[@]}"; do
        run_case "$s" "echo.r$r" echo -c 200 -d 10s
    done
    for s in "${servers[@]}"; do
        run_case "$s" "broadcast-1000.r$r" broadcast -l 1000 -p 1 --rate max --in-flight 16 -d 10s
    done
    for s in "${servers[@]}"; do
        run_case "$s" "broadcast-10000.r$r" broadcast -l 10000 -p 1 --rate max --in-flight 16 -d 10s
    done
done

# ---- figures from the JSON -------------------------------------------------------------------

# One jq program per kind of run: the figures, and `failed` (why the row cannot be trusted).
read -r -d '' JQ_COMMON <<'JQ' || true
def phase($n): ((.server.phases // []) | map(select(.name == $n)) | first);
def cpu($names): if .server == null then null
    else [(.server.phases // [])[] | select(.name as $x | $names | index($x)) | .cpu_s] | add end;
def wall($names): [(.server.phases // [])[] | select(.name as $x | $names | index($x)) | .wall_s] | add;
def div($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b end;
def us($cpu_s; $n): if $cpu_s == null then null else div($cpu_s * 1e6; $n) end;
def conn_problems: [
    (if .connections.established < .connections.target
        then "\(.connections.established) of \(.connections.target) connected \(.connections.failures)" else empty end),
    (if .connections.dropped > 0 then "\(.connections.dropped) dropped \(.connections.drops)" else empty end),
    (if .server == null then "no server phases (loadtest without --server-pid?)" else empty end)];
JQ
JQ_CONNECT="$JQ_COMMON"'
{ conn_per_s: div(.connections.established; .connections.ramp_s),
  cpu_us: us(cpu(["ramp"]); .connections.established),
  rss_kib_per_conn: (if phase("hold") == null or phase("ramp") == null then null
      else div(phase("hold").rss_kib_end - phase("ramp").rss_kib_start; .connections.established) end),
  handshake_p99_ms: .latency.handshake.p99_ms,
  failed: (conn_problems | join("; ")) }'
JQ_ECHO="$JQ_COMMON"'
{ cpu_us: us(cpu(["echo"]); .messages.received),
  per_s: .messages.received_per_s,
  p50_ms: .latency.rtt.p50_ms, p99_ms: .latency.rtt.p99_ms,
  failed: (conn_problems + [if .messages.errors > 0 then "\(.messages.errors) errors \(.errors)" else empty end] | join("; ")) }'
JQ_BROADCAST="$JQ_COMMON"'
{ cpu_us: us(cpu(["send", "drain"]); .delivery.received),
  per_s: (if .server == null then .messages.received_per_s else div(.delivery.received; wall(["send", "drain"])) end),
  p50_ms: .latency.delivery.p50_ms, p99_ms: .latency.delivery.p99_ms,
  completeness: (.delivery.completeness * 100),
  failed: (conn_problems
      + [if .delivery.completeness < 1 then "completeness \(.delivery.completeness * 100)% (missing \(.delivery.missing))" else empty end]
      + [if .messages.errors > 0 then "\(.messages.errors) errors \(.errors)" else empty end]
      + [if .delivery.duplicates > 0 then "\(.delivery.duplicates) duplicates" else empty end]
      | join("; ")) }'

declare -A V FAIL
figures() { # figures SERVER RUN JQ-PROGRAM
    local s=$1 run=$2 prog=$3 base=$out/$1-$2 k v
    if [ ! -s "$base.json" ] || ! jq -e . "$base.json" >/dev/null 2>&1; then
        FAIL[$s.$run]="no summary (loadtest exit status $(cat "$base.rc" 2>/dev/null || echo '?'))"
        return
    fi
    local rc; rc=$(cat "$base.rc")
    while IFS=$'\t' read -r k v; do
        if [ "$k" = failed ]; then
            [ -n "$v" ] && FAIL[$s.$run]=$v
        else
            V[$s.$run.$k]=$v
        fi
    done < <(jq -r "$prog | to_entries[] | [.key, (.value // \"\" | tostring)] | @tsv" "$base.json")
    if [ "$rc" != 0 ]; then
        FAIL[$s.$run]="loadtest exit status $rc${FAIL[$s.$run]:+; ${FAIL[$s.$run]}}"
    fi
}

# median SERVER RUN JQ-PROGRAM: of the rounds of RUN that have a figure, the one with the median
# server CPU per unit of work becomes SERVER-RUN.json (and .rc); its figures are the table's.
median() {
    local s=$1 run=$2 prog=$3 r cpu picked
    picked=$(for r in $(seq "$rounds"); do
        cpu=$(jq -r "$prog | .cpu_us // empty" "$out/$s-$run.r$r.json" 2>/dev/null || true)
        [ -n "$cpu" ] && echo "$cpu $r"
    done | sort -g | awk '{ a[NR] = $2 } END { if (NR) print a[int((NR + 1) / 2)] }')
    picked=${picked:-1}
    for ext in json rc stderr server.log; do
        [ -e "$out/$s-$run.r$picked.$ext" ] && cp "$out/$s-$run.r$picked.$ext" "$out/$s-$run.$ext"
    done
    MEDIAN[$s.$run]=$picked
}

declare -A MEDIAN
runs=(connect-2000 echo broadcast-1000 broadcast-10000)
[ -n "$quick" ] || runs+=(connect-19000)
for s in "${servers[@]}"; do
    for run in "${runs[@]}"; do
        case $run in
            connect-*) prog=$JQ_CONNECT ;;
            echo) prog=$JQ_ECHO ;;
            broadcast-*) prog=$JQ_BROADCAST ;;
        esac
        median "$s" "$run" "$prog"
        figures "$s" "$run" "$prog"
    done
done

fmt() { # fmt PRINTF-FORMAT VALUE: "n/a" for a missing value
    if [ -z "$2" ]; then echo "n/a"; else LC_ALL=C awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'; fi
}
cell() { # cell SERVER RUN KEY FORMAT
    local v=${V[$1.$2.$3]:-} c
    c=$(fmt "$4" "$v")
    [ -n "${FAIL[$1.$2]:-}" ] && c="$c FAILED"
    echo "$c"
}
ratio() { # ratio RUN KEY lower|higher: how many times better the broker is than plain (>1: broker better)
    local b=${V[broker.$1.$2]:-} p=${V[plain.$1.$2]:-}
    if [ -z "$b" ] || [ -z "$p" ] || [ -n "${FAIL[broker.$1]:-}${FAIL[plain.$1]:-}" ]; then echo "-"; return; fi
    LC_ALL=C awk -v b="$b" -v p="$p" -v d="$3" 'BEGIN {
        if (d == "lower") { n = p; m = b } else { n = b; m = p }
        if (m == 0) print "-"; else printf "%.2fx\n", n / m }'
}
over() { # over SERVER RUN KEY: the broker's figure divided by SERVER's, as it stands
    local b=${V[broker.$2.$3]:-} o=${V[$1.$2.$3]:-}
    if [ -z "$b" ] || [ -z "$o" ] || [ -n "${FAIL[broker.$2]:-}${FAIL[$1.$2]:-}" ]; then echo "-"; return; fi
    LC_ALL=C awk -v b="$b" -v o="$o" 'BEGIN { if (o == 0) print "-"; else printf "%.2fx\n", b / o }'
}
row() { # row LABEL RUN KEY FORMAT lower|higher
    [[ " ${runs[*]} " == *" $2 "* ]] || return 0
    echo "| $1 | $(cell broker "$2" "$3" "$4") | $(cell plain "$2" "$3" "$4") | $(cell floor "$2" "$3" "$4")" \
        "| $(over floor "$2" "$3") | $(over plain "$2" "$3") | $(ratio "$2" "$3" "$5") |"
}
target() { # target LABEL VALUE LIMIT: one line of issue #18's targets
    local verdict
    if [ -z "$2" ] || [ "$2" = - ]; then verdict="no figure"
    elif LC_ALL=C awk -v v="${2%x}" -v l="$3" 'BEGIN { exit !(v <= l) }'; then verdict=met
    else verdict="NOT met"; fi
    echo "- $1: $2 (target <= $3): $verdict"
}

{
    cat "$out/machine.md"
    echo
    echo "| measure | broker | plain-server | floor | broker / floor | broker / plain | broker better than plain by |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    row "server CPU per delivery, 1,000 listeners (µs)" broadcast-1000 cpu_us "%.3f" lower
    row "server CPU per delivery, 10,000 listeners (µs)" broadcast-10000 cpu_us "%.3f" lower
    row "deliveries/s, 1,000 listeners" broadcast-1000 per_s "%.0f" higher
    row "deliveries/s, 10,000 listeners" broadcast-10000 per_s "%.0f" higher
    row "delivery latency p50, 1,000 listeners (ms)" broadcast-1000 p50_ms "%.3f" lower
    row "delivery latency p99, 1,000 listeners (ms)" broadcast-1000 p99_ms "%.3f" lower
    row "delivery latency p50, 10,000 listeners (ms)" broadcast-10000 p50_ms "%.3f" lower
    row "delivery latency p99, 10,000 listeners (ms)" broadcast-10000 p99_ms "%.3f" lower
    row "completeness, 1,000 listeners (%)" broadcast-1000 completeness "%.4f" higher
    row "completeness, 10,000 listeners (%)" broadcast-10000 completeness "%.4f" higher
    row "server CPU per echo (µs)" echo cpu_us "%.2f" lower
    row "echoes/s (200 connections)" echo per_s "%.0f" higher
    row "echo RTT p50 (ms)" echo p50_ms "%.3f" lower
    row "echo RTT p99 (ms)" echo p99_ms "%.3f" lower
    row "RSS per idle connection, 2,000 (KiB)" connect-2000 rss_kib_per_conn "%.1f" lower
    row "RSS per idle connection, 19,000 (KiB)" connect-19000 rss_kib_per_conn "%.1f" lower
    row "connections/s (2,000)" connect-2000 conn_per_s "%.0f" higher
    row "connections/s (19,000)" connect-19000 conn_per_s "%.0f" higher
    row "server CPU per connection, 2,000 (µs)" connect-2000 cpu_us "%.1f" lower
    row "server CPU per connection, 19,000 (µs)" connect-19000 cpu_us "%.1f" lower
    echo
    echo "CPU is the time the server's threads ran (/proc/PID/task/*/schedstat, nanoseconds) in the phases named; per delivery ="
    echo "CPU of phases send+drain / deliveries received; per echo = CPU of phase echo / replies;"
    echo "RSS per connection = (RSS at the end of hold - RSS at the start of ramp) / connections;"
    echo "CPU per connection = CPU of phase ramp (accept and upgrade) / connections."
    echo "broker / floor and broker / plain are the broker's figure over the other's, as they stand"
    echo "(below 1 on a rate is the broker behind); the last column is the former comparison, turned"
    echo "so that above 1 is the broker ahead."
    echo "Deliveries/s = deliveries / wall time of send+drain. Broadcasts: 1 publisher (a client"
    echo "sending broadcast echoes), --rate max --in-flight 16, 10 s."
    echo "Each cell is from one run: of $rounds rounds (the three servers one after the other in each),"
    echo "the one with the median server CPU per unit. That CPU in every round, broker / plain / floor:"
    for run in "${runs[@]}"; do
        line="- $run:"
        for s in "${servers[@]}"; do
            case $run in connect-*) prog=$JQ_CONNECT ;; echo) prog=$JQ_ECHO ;; *) prog=$JQ_BROADCAST ;; esac
            each=$(for r in $(seq "$rounds"); do
                jq -r "$prog | .cpu_us // \"-\"" "$out/$s-$run.r$r.json" 2>/dev/null \
                    | LC_ALL=C awk '{ if ($1 == "-") print "-"; else printf "%.3g\n", $1 }' || echo -
            done | paste -sd ' ')
            line="$line $s ${each:--}${MEDIAN[$s.$run]:+ (median: round ${MEDIAN[$s.$run]})};"
        done
        echo "${line%;}"
    done
    echo
    echo "Issue #18's targets (broker / floor, and the broker's own RSS per idle connection):"
    target "CPU per delivery, 1,000 listeners" "$(over floor broadcast-1000 cpu_us)" 1.2
    target "CPU per delivery, 10,000 listeners" "$(over floor broadcast-10000 cpu_us)" 1.2
    target "CPU per echo" "$(over floor echo cpu_us)" 1.3
    for run in "${runs[@]}"; do
        case $run in connect-*)
            n=${run#connect-}; n="$((n / 1000)),$(printf %03d $((n % 1000)))"
            target "CPU per connection, $n" "$(over floor "$run" cpu_us)" 1.5
            rss=${V[broker.$run.rss_kib_per_conn]:-}
            [ -z "${FAIL[broker.$run]:-}" ] || rss=
            target "RSS per idle connection, $n (KiB)" "$(fmt "%.1f" "$rss" | sed 's/^n\/a$//')" 4
        ;; esac
    done
    notes=()
    for run in connect-2000 connect-19000; do
        for s in "${servers[@]}"; do
            h=${V[$s.$run.handshake_p99_ms]:-}
            if [ -n "$h" ] && LC_ALL=C awk -v h="$h" 'BEGIN { exit !(h >= 900) }'; then
                notes+=("$s $run: handshake p99 $h ms: SYNs were retransmitted after the listen backlog overflowed (TcpExtListenOverflows in \`nstat\`), so connections/s measures the 1 s retransmission as much as the server")
            fi
        done
    done
    if [ ${#notes[@]} -gt 0 ]; then
        echo; echo "Notes:"
        printf -- '- %s\n' "${notes[@]}"
    fi
    failures=0
    for s in "${servers[@]}"; do
        for run in "${runs[@]}"; do
            if [ -n "${FAIL[$s.$run]:-}" ]; then
                [ "$failures" = 0 ] && { echo; echo "FAILED runs:"; }
                failures=$((failures + 1))
                echo "- $s $run: ${FAIL[$s.$run]}"
            fi
        done
    done
} >"$out/summary.md"

echo
cat "$out/summary.md"
[ -z "$(printf '%s' "${FAIL[@]:-}")" ]
