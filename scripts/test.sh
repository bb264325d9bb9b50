#!/usr/bin/env bash
# The one test command (README and CI both call it): installs the test
# dependencies when missing, builds the `lookout` binary the process tests
# start, then runs every crate's tests with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# Process-level tests (crash, etcdctl interop) start the real binary.
cargo build -p lookout-gateway --bin lookout
exec cargo nextest run --workspace --profile "${NEXTEST_PROFILE:-default}" "$@"
