#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time: CI gives each a few
# seconds (a smoke run: the targets build, the committed corpus replays
# under the fuzzer, and a little new ground is covered); long campaigns
# pass more seconds (see loadtest/results/fuzz/README.md).
#
#   bash scripts/fuzz.sh [seconds per target] [target...]
#
# FUZZ_SEED=N FUZZ_RUNS=M bound a run: libFuzzer's mutations start from
# seed N, at most M inputs per target (the time still bounds it). That is
# not bit-exact across machines: which inputs libFuzzer keeps depends on
# the coverage each one reached, and that moves with hash seeds and
# timing inside the code under test, so CI can wander onto an input no
# run here tried (it did once: a backup with a negative lease TTL). A
# crash is still reproducible from its saved input, which CI prints; add
# it to fuzz/corpus/<target>/ and the ordinary tests replay it. Campaigns
# leave both unset (random seed, no input count) to cover new ground.
#
# cargo-fuzz with libFuzzer on stable Rust: `-s none` (no sanitizer) needs
# no nightly; coverage still comes from the sancov instrumentation, and
# Rust's own checks (bounds, unwrap, the targets' asserts) are what turns a
# bad input into a crash; cargo-fuzz builds optimised with debug
# assertions and overflow checks on, so an overflow is a crash too. New
# inputs go to a
# scratch directory, never into the committed corpus; a crash leaves its
# input under fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
shift || true
# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
    echo "installing g++ from Debian (libFuzzer is C++)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -q '0\.13\.'; then
    echo "installing cargo-fuzz 0.13.2" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
cd fuzz
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    echo "== fuzz $t for ${secs}s" >&2
    rc=0
    cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -seed="${FUZZ_SEED:-0}" -runs="${FUZZ_RUNS:--1}" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1 || rc=$?
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)' "$scratch/$t.log" >&2 || true
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$scratch/$t.log" >&2
        echo "fuzz target $t failed; its input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
