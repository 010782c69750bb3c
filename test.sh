#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, the Rust tests of every crate (the broker
# over real sockets, the load tester against the real broker), the Node `ws` compatibility test
# of the Users API document's own client example, the Node client in clients/js, and the
# dashboard and alert-rule checks.
# Installs what a fresh machine lacks (Debian packages, the npm `ws` package) on the way.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
need_pkg() { # need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "== installing $2 (for $1)"
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
need_pkg node nodejs
need_pkg npm npm
need_pkg promtool prometheus
need_pkg nats-server nats-server
need_pkg haproxy haproxy
need_pkg curl curl
# The desktop app's keyring test runs against a real Secret Service on a private D-Bus session.
need_pkg dbus-run-session dbus-daemon
need_pkg gnome-keyring-daemon gnome-keyring

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== dashboards and alert rules"
dashboards/check.sh

echo "== build"
cargo build --workspace --all-targets

echo "== Node ws compatibility (the API document's own client example)"
(cd compat && npm ci --no-audit --no-fund --silent && BROKER_BIN="$PWD/../target/debug/broker" node --test)

echo "== Node client (clients/js: reconnects with backoff, resumes from its position)"
(cd clients/js && npm ci --no-audit --no-fund --silent && BROKER_BIN="$PWD/../../target/debug/broker" node --test)

echo "== fuzz (bounded)"
fuzz/run.sh "${FUZZ_SECONDS:-30}"

echo "== soak (bounded)"
loadtest/soak-broker.sh "${SOAK_SECONDS:-120}" 500

echo "== cargo test"
cargo test --workspace
