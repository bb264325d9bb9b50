#!/usr/bin/env bash
# Compares two `lookout` builds (the commit before a change and the one
# after) on the `lookout-load compare --full` matrix, one cell at a time
# and interleaved: each cell runs on one build and then on the other, the
# order swapped from cell to cell, so a machine that gets busier during
# the run slows both alike. Every run starts a fresh `lookout store` and
# `lookout gateway` of that build (compare's own target setup and checker).
#
#   bash scripts/compare-builds.sh BEFORE_BIN AFTER_BIN OUT_DIR [CELL...]
#
# CELL is fanout:WATCHERS:RATE or informers (default: the --full matrix).
# OUT_DIR/{before,after}/<cell>/ get compare's results.jsonl and report;
# OUT_DIR/README.md gets the side-by-side table (scripts/compare-builds.py).
# LOOKOUT_LOAD names the load generator (default target/release/lookout-load).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 3 ]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi
before="$1" after="$2" out="$3"
shift 3
load="${LOOKOUT_LOAD:-target/release/lookout-load}"
cells=("$@")
if [ "${#cells[@]}" -eq 0 ]; then
    cells=(fanout:1000:100 fanout:5000:100 fanout:10000:100 fanout:50000:100
        fanout:1000:1000 fanout:5000:1000 fanout:10000:1000 fanout:50000:1000
        informers)
fi
mkdir -p "$out"
{
    echo "before=$before"
    echo "after=$after"
    echo "started=$(date -u +%FT%TZ)"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/run.txt"
i=0
for cell in "${cells[@]}"; do
    case "$cell" in
    fanout:*:*)
        IFS=: read -r _ w r <<<"$cell"
        args=(--scenarios fanout --watchers "$w" --rates "$r")
        ;;
    informers) args=(--scenarios informers) ;;
    *)
        echo "unknown cell $cell" >&2
        exit 2
        ;;
    esac
    if [ $((i % 2)) -eq 0 ]; then order=(before after); else order=(after before); fi
    for label in "${order[@]}"; do
        if [ "$label" = before ]; then bin="$before"; else bin="$after"; fi
        mkdir -p "$out/$label"
        dir="$out/$label/${cell//:/-}"
        echo "== $cell on $label" >&2
        "$load" compare --full --targets lookout --lookout-bin "$bin" \
            "${args[@]}" --no-progress --out "$dir" >"$dir.log" 2>&1 ||
            echo "   compare exited $? (see $dir.log)" >&2
    done
    i=$((i + 1))
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/run.txt"
echo "ended=$(date -u +%FT%TZ)" >>"$out/run.txt"
python3 scripts/compare-builds.py "$out" >"$out/README.md"
cat "$out/README.md"
