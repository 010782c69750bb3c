#!/usr/bin/env bash
# Takes docs/admin-gui.png: the admin app in a real X window (Xvfb, Mesa software GL) as a fleet
# console: two live brokers joined by a nats-server, ~20 clients spread over both (some with
# user tokens, from two origins), a publisher sending events, and a trickle of refused
# connections, so that every panel shows real data. The app talks to the first broker.
#
#   admin-gui/screenshot.sh [OUTPUT.png]
#
# Everything runs on loopback and stops by itself (trap on exit). Installs xvfb, imagemagick,
# xdotool, nats-server and Mesa with apt-get when they are missing. Env: CARGO_TARGET_DIR,
# WS_PORT, OPS_PORT (the first broker's; the second uses the next ones), NATS_PORT,
# DISPLAY_NUM, WAIT (seconds of traffic before the shot, default 100), PROFILE (debug or
# release).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-$root/docs/admin-gui.png}
target=${CARGO_TARGET_DIR:-$root/target}
profile=${PROFILE:-debug}
ws_port=${WS_PORT:-18480}
ops_port=${OPS_PORT:-19490}
nats_port=${NATS_PORT:-14222}
display=${DISPLAY_NUM:-:97}
wait_s=${WAIT:-100}
width=1600
height=1000
admin_token="screenshot-admin-token-0123456789"
api_key="screenshot-publisher-key"
jwt_secret="screenshot-jwt-secret-0123456789"

log() { printf 'screenshot: %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
missing=()
command -v Xvfb >/dev/null || missing+=(xvfb)
command -v import >/dev/null || missing+=(imagemagick)
command -v xdotool >/dev/null || missing+=(xdotool)
command -v nats-server >/dev/null || missing+=(nats-server)
dpkg -s libgl1-mesa-dri >/dev/null 2>&1 || missing+=(libgl1-mesa-dri)
dpkg -s libegl1 >/dev/null 2>&1 || missing+=(libegl1)
dpkg -s libxkbcommon-x11-0 >/dev/null 2>&1 || missing+=(libxkbcommon-x11-0)
dpkg -s libxcursor1 >/dev/null 2>&1 || missing+=(libxcursor1)
dpkg -s libxrandr2 >/dev/null 2>&1 || missing+=(libxrandr2)
dpkg -s libxi6 >/dev/null 2>&1 || missing+=(libxi6)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- build -------------------------------------------------------------------------------
cargo_profile=()
[[ $profile == release ]] && cargo_profile=(--release)
log "building broker, loadtest and admin-gui ($profile)"
(cd "$root" && cargo build -q "${cargo_profile[@]}" -p broker -p loadtest -p admin-gui)
bin=$target/$profile

# --- run ---------------------------------------------------------------------------------
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

log "starting nats-server on :$nats_port"
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
pids+=($!)

# Two instances of the fleet: edge-1 (ws :$ws_port, ops :$ops_port) and edge-2 (the next ports).
start_broker() { # NAME WS_PORT OPS_PORT
    cat >"$work/$1.json" <<EOF
{
  "websocket": {
    "port": $2,
    "host": "127.0.0.1",
    "approvedSocketDomains": ["^http://localhost(:[0-9]+)?$", "^https://app\\\\.example\\\\.com$"],
    "socketApiKey": "$api_key"
  },
  "broker": {
    "instanceId": "$1",
    "ops": {"host": "127.0.0.1", "port": $3},
    "admin": {"token": "$admin_token"},
    "jwtSecret": "$jwt_secret",
    "cluster": {"nats": "nats://127.0.0.1:$nats_port", "subject": "screenshot"}
  }
}
EOF
    log "starting $1 (ws :$2, ops :$3)"
    "$bin/broker" --config "$work/$1.json" >"$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$3/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$work/$1.log" >&2
    exit 1
}
start_broker edge-1 "$ws_port" "$ops_port"
start_broker edge-2 $((ws_port + 1)) $((ops_port + 1))

jwt() { # HS256 token with sub=$1
    python3 - "$1" "$jwt_secret" <<'PY'
import base64, hashlib, hmac, json, sys
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": sys.argv[1]}).encode())
sig = b64(hmac.new(sys.argv[2].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
}

url="ws://127.0.0.1:$ws_port/"
url2="ws://127.0.0.1:$((ws_port + 1))/"
lt() { # URL ARGS...
    local u=$1
    shift
    "$bin/loadtest" --url "$u" --quiet --deadline 400s "$@" >>"$work/loadtest.log" 2>&1 &
    pids+=($!)
}

log "opening clients on both instances and a publisher"
lt "$url" soak -c 4 -d 300s --echo-interval 700ms --broadcast-rate 3
lt "$url2" soak -c 3 -d 300s --echo-interval 900ms --broadcast-rate 2
lt "$url" --origin https://app.example.com --token "$(jwt alice)" soak -c 2 -d 300s --echo-interval 1s --broadcast-rate 1
lt "$url2" --origin https://app.example.com --token "$(jwt alice)" soak -c 1 -d 300s --echo-interval 1s --broadcast-rate 1
lt "$url2" --origin https://app.example.com --token "$(jwt bob)" soak -c 2 -d 300s --echo-interval 2s --broadcast-rate 1
lt "$url" --origin http://localhost:3000 --token "$(jwt carol)" soak -c 1 -d 300s --echo-interval 3s --broadcast-rate 1
lt "$url2" --origin http://localhost:3000 --token "$(jwt carol)" soak -c 1 -d 300s --echo-interval 3s --broadcast-rate 1
lt "$url" --api-key "$api_key" publish --via ws -l 0 -p 1 --rate 12 -d 300s
# A trickle of refusals (an origin nobody approved), so that chart has something to say.
(
    for _ in $(seq 300); do
        "$bin/loadtest" --url "$url" --origin https://evil.example --quiet connect -c 1 --hold 0s >/dev/null 2>&1 || true
        sleep 1
    done
) &
pids+=($!)

log "starting Xvfb $display and the app"
Xvfb "$display" -screen 0 "${width}x${height}x24" -nolisten tcp >"$work/xvfb.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    xdpyinfo -display "$display" >/dev/null 2>&1 && break
    DISPLAY=$display xdotool getdisplaygeometry >/dev/null 2>&1 && break
    sleep 0.1
done
DISPLAY=$display LIBGL_ALWAYS_SOFTWARE=1 XDG_CONFIG_HOME="$work" BROKER_ADMIN_TOKEN="$admin_token" \
    "$bin/admin-gui" --url "http://127.0.0.1:$ops_port" --size "${width}x${height}" >"$work/app.log" 2>&1 &
pids+=($!)

# Clients that come and go while the app watches, for the activity log and the sparklines.
(
    for i in $(seq 100); do
        origin=http://localhost
        u=$url
        ((i % 2)) && origin=https://app.example.com
        ((i % 3)) || u=$url2
        "$bin/loadtest" --url "$u" --origin "$origin" --quiet connect -c 1 --hold 7s >/dev/null 2>&1 || true
        sleep 2
    done
) &
pids+=($!)

log "letting traffic run for ${wait_s}s"
sleep "$wait_s"

# Select a row of a user's connection so the details panel shows something: sort by user
# (one click on the header sorts A to Z with anonymous first, a second click reverses it so
# named users come first), then click the first row. Coordinates are for the default layout
# at 1600x1000.
window=$(DISPLAY=$display xdotool search --name "Broker admin" | head -1 || true)
if [[ -n $window ]]; then
    DISPLAY=$display xdotool windowmove "$window" 0 0 windowsize "$window" "$width" "$height" || true
    sleep 1
fi
click() { DISPLAY=$display xdotool mousemove "$1" "$2" click 1; sleep 0.7; }
click "${USER_HEADER_X:-587}" "${HEADER_Y:-509}"
click "${USER_HEADER_X:-587}" "${HEADER_Y:-509}"
click "${ROW_X:-345}" "${ROW_Y:-533}"
DISPLAY=$display xdotool mousemove 5 $((height - 5))
sleep 2

mkdir -p "$(dirname "$out")"
import -display "$display" -window root "$out"
log "wrote $out"
if ! kill -0 "${pids[-1]}" 2>/dev/null; then
    log "the app exited early:"
    cat "$work/app.log" >&2
    exit 1
fi
