#!/usr/bin/env bash
# A bounded fuzz run of every target: the event decoder, the config reader, and the origin
# allow-list against the one-pattern-at-a-time reference.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]   (default 30)
#
# Uses cargo fuzz (installed if missing) with libFuzzer on the stable toolchain
# (RUSTC_BOOTSTRAP=1, no sanitizer). New inputs go to a scratch copy; the seed corpus in
# fuzz/corpus/ is read, never written. A crash leaves its input in fuzz/artifacts/TARGET/:
# add it to fuzz/corpus/TARGET/ so that `cargo test -p broker --test fuzz_corpus` keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in event_decode config origin; do
    echo "== fuzz $target for ${secs}s"
    mkdir -p "$scratch/$target"
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1 || status=$?
    # libFuzzer's progress lines are many; show the totals, and everything on a failure.
    if [ "$status" != 0 ]; then
        tail -n 60 "$scratch/$target.log"
        echo "fuzz target $target failed (exit $status): its input is in fuzz/artifacts/$target/"
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units)" "$scratch/$target.log"
done
