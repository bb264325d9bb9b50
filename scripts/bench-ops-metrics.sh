#!/usr/bin/env bash
# Gateway fan-out CPU with and without the operations metrics (issue 19):
# two `lookout` binaries (BEFORE: built from the commit before them,
# AFTER: with them), each as a store + gateway pair, driven by the same
# `lookout-load fanout` in interleaved repetitions so the shared machine's
# noise hits both alike. Reports gateway and store CPU per delivered event
# and the ratio after/before. Loopback only; every process it starts is
# stopped by its PID on exit.
#
#   BEFORE=/path/to/lookout-before AFTER=target/release/lookout \
#     bash scripts/bench-ops-metrics.sh [OUT_DIR]
#
# Env: W (watchers, 1000), C (connections, 10), R (puts/s, 200), T (seconds
# per run, 20), REPEAT (3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOAD=${LOAD:-$ROOT/target/release/lookout-load}
BEFORE=${BEFORE:?path of the lookout binary without the new metrics}
AFTER=${AFTER:-$ROOT/target/release/lookout}
OUT=${1:-$ROOT/loadtest/results/ops}
W=${W:-1000}; C=${C:-10}; R=${R:-200}; T=${T:-20}; REPEAT=${REPEAT:-3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

run() { # label, binary
  local label=$1 bin=$2 sp gp store gw
  sp=$(port); gp=$(port)
  rm -rf "$WORK/data"
  RUST_LOG=warn "$bin" store --name bench --data-dir "$WORK/data" \
    --listen-client-urls "http://127.0.0.1:$sp" >"$WORK/store.log" 2>&1 &
  store=$!; pids+=("$store")
  RUST_LOG=warn "$bin" gateway --listen-addr "127.0.0.1:$gp" \
    --endpoints "127.0.0.1:$sp" >"$WORK/gateway.log" 2>&1 &
  gw=$!; pids+=("$gw")
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$gp/health" >/dev/null && break
    sleep 0.1
  done
  curl -sf "127.0.0.1:$gp/health" >/dev/null || { cat "$WORK/gateway.log"; exit 1; }
  "$LOAD" fanout --endpoints "127.0.0.1:$gp" --truth-endpoint "127.0.0.1:$sp" \
    --server-pid "gateway=$gw" --server-pid "store=$store" --watchers "$W" \
    --connections "$C" --rate "$R" --keys 1000 --value-size 256 --duration "${T}s" \
    --label "$label" --no-progress 2>>"$WORK/load.err" >>"$OUT/fanout.jsonl"
  kill "$gw" "$store"
  wait "$gw" "$store" 2>/dev/null || true
}

: >"$OUT/fanout.jsonl"
for rep in $(seq "$REPEAT"); do
  echo "repetition $rep/$REPEAT" >&2
  if [ $((rep % 2)) -eq 1 ]; then
    run before "$BEFORE"; run after "$AFTER"
  else
    run after "$AFTER"; run before "$BEFORE"
  fi
done

python3 - "$OUT" "$W" "$C" "$R" "$T" "$REPEAT" <<'PY'
import json, statistics, sys
out, w, c, r, t, rep = sys.argv[1:]
rows = {}
for line in open(f"{out}/fanout.jsonl"):
    d = json.loads(line)
    events = sum(g["checks"]["events"] for g in d["watch"].values())
    srv = {s["label"]: s for s in d["servers"]}
    rows.setdefault(d["target"], []).append({
        "gw": srv["gateway"]["cpu_s"] / events * 1e6,
        "store": srv["store"]["cpu_s"],
        "events": events,
        "p99": d["latency"]["p99_ms"],
        "ok": d["sustained"] and all(g["checks"]["clean"] == g["checks"]["watchers"] for g in d["watch"].values()),
    })
med = lambda k, f: statistics.median(x[f] for x in rows[k])
lines = [
    "| binary | gateway CPU µs / delivered event (runs) | median | store CPU s / run (median) | events / run | p99 put→event ms | all sustained and clean |",
    "|---|---|---|---|---|---|---|",
]
for k in ["before", "after"]:
    v = rows[k]
    runs = ", ".join("%.3f" % x["gw"] for x in v)
    lines.append(f"| {k} | {runs} | {med(k,'gw'):.3f} | {med(k,'store'):.2f} | "
                 f"{int(med(k,'events')):,} | {med(k,'p99'):.1f} | {'yes' if all(x['ok'] for x in v) else 'NO'} |")
lines.append("")
lines.append(f"after / before, gateway CPU per delivered event: {med('after','gw')/med('before','gw'):.3f}x; "
             f"store CPU per run: {med('after','store')/med('before','store'):.3f}x "
             f"(W={w} watchers over {c} connections, R={r} puts/s, {t} s per run, {rep} interleaved repetitions).")
open(f"{out}/fanout.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
