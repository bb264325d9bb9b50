#!/usr/bin/env bash
# NDJSON (and etcd /v3/watch) watch fan-out against gRPC fan-out from the
# same `lookout gateway` process: gateway CPU seconds per delivered event,
# as ratios. Runs on loopback only; every process it starts is stopped by
# PID on exit.
#
#   cargo build --release -p lookout-gateway -p lookout-loadtest
#   bash scripts/bench-http-fanout.sh [OUT_DIR]
#
# Env: W (watchers, 1000), R (puts/s, 100), T (seconds per run, 15),
# REPEAT (3). Each repetition runs every shape once, interleaved, so load
# from elsewhere on the machine hits them alike; the table shows medians.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${1:-$ROOT/loadtest/results/http-fanout}
W=${W:-1000}; R=${R:-100}; T=${T:-15}; REPEAT=${REPEAT:-3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SP=$(port); GP=$(port)
RUST_LOG=warn "$BIN/lookout" store --name bench --data-dir "$WORK/data" \
  --listen-client-urls "http://127.0.0.1:$SP" >"$WORK/store.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$BIN/lookout" gateway --listen-addr "127.0.0.1:$GP" \
  --endpoints "127.0.0.1:$SP" >"$WORK/gateway.log" 2>&1 &
GW=$!; pids+=($GW)
for _ in $(seq 100); do
  curl -sf "127.0.0.1:$GP/health" >/dev/null && break
  sleep 0.1
done
curl -sf "127.0.0.1:$GP/health" >/dev/null || { cat "$WORK/gateway.log"; exit 1; }

run() { # label, lookout-load args...
  local label=$1; shift
  "$BIN/lookout-load" "$@" --endpoint "127.0.0.1:$GP" --truth-endpoint "127.0.0.1:$SP" \
    --server-pid "gateway=$GW" --watchers "$W" --rate "$R" --duration "${T}s" \
    --label "$label" --no-progress 2>>"$WORK/load.err" >>"$OUT/results.jsonl"
}

: >"$OUT/results.jsonl"
for rep in $(seq "$REPEAT"); do
  echo "repetition $rep/$REPEAT" >&2
  run grpc-1:1 fanout --connections "$W"
  run grpc-muxed fanout --connections 10
  run ndjson http --http-api lookout
  run etcd-v3-watch http --http-api etcd
done

python3 - "$OUT" "$W" "$R" "$T" "$REPEAT" <<'PY'
import json, statistics, sys
out, w, r, t, rep = sys.argv[1:]
rows = {}
for line in open(f"{out}/results.jsonl"):
    d = json.loads(line)
    events = sum(g["checks"]["events"] for g in d["watch"].values())
    gw = next(s for s in d["servers"] if s["label"] == "gateway")
    rows.setdefault(d["target"], []).append({
        "us_per_event": gw["cpu_s"] / events * 1e6 if events else float("nan"),
        "events": events, "cpu_s": gw["cpu_s"], "client_cpu_s": d["client"]["cpu_s"],
        "sustained": d["sustained"], "p99_ms": d["latency"]["p99_ms"],
        "clean": all(g["checks"]["clean"] == g["checks"]["watchers"] for g in d["watch"].values()),
    })
med = {k: statistics.median(x["us_per_event"] for x in v) for k, v in rows.items()}
base1, basem = med.get("grpc-1:1"), med.get("grpc-muxed")
lines = [
    f"# HTTP watch fan-out vs gRPC, one gateway",
    "",
    f"W = {w} watchers on one prefix, R = {r} puts/s over 1,000 keys, 256 B values, "
    f"{t} s per run, {rep} interleaved repetitions (median shown); gateway in front of "
    "`lookout store`, client and servers on one 2-core machine (loopback).",
    "",
    "| shape | gateway CPU µs / delivered event | vs gRPC 1:1 | vs gRPC muxed | events / run | p99 latency ms | all runs sustained and clean |",
    "|---|---|---|---|---|---|---|",
]
for k in ["grpc-1:1", "grpc-muxed", "ndjson", "etcd-v3-watch"]:
    if k not in rows: continue
    v = rows[k]
    lines.append(
        f"| {k} | {med[k]:.3f} | {med[k]/base1:.2f}x | {med[k]/basem:.2f}x | "
        f"{int(statistics.median(x['events'] for x in v)):,} | "
        f"{statistics.median(x['p99_ms'] for x in v):.1f} | "
        f"{'yes' if all(x['sustained'] and x['clean'] for x in v) else 'NO'} |")
lines += [
    "",
    "- grpc-1:1: one connection, one stream, one watcher each (the shape HTTP has).",
    "- grpc-muxed: the same watchers over 10 connections (etcd clients' usual shape).",
    "- ndjson: `GET /v1/watch/<prefix>?prefix=true`, one connection each.",
    "- etcd-v3-watch: etcd's `POST /v3/watch`, one connection each.",
    "",
    "CPU is the gateway process's user + system time from /proc during the run;",
    "events are the deliveries the checker counted (every one verified against",
    "the store's history).",
]
open(f"{out}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
