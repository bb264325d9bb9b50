#!/usr/bin/env python3
"""Side-by-side table of two `lookout` builds from scripts/compare-builds.sh.

Reads OUT_DIR/{before,after}/<cell>/results.jsonl (one lookout row each,
written by `lookout-load compare`) and prints Markdown: per cell the
verdict, p99 put -> event, deliveries/s, the checker's counts, and the
gateway's and store's CPU and peak RSS, with after / before ratios.
"""

import json
import pathlib
import sys


def load(path):
    if not path.exists():
        return None
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    rows = [r for r in rows if r.get("target") == "lookout"]
    return rows[0] if rows else None


def watch_group(r):
    w = r.get("watch") or {}
    return next(iter(w.values()), {}) if w else {}


def server(r, label):
    for s in r.get("servers") or []:
        if s.get("label") == label:
            return s
    return {}


def metrics(r):
    """(name, value, kind) rows; kind picks formatting and whether a ratio means anything."""
    g = watch_group(r)
    c = g.get("checks") or {}
    out = [
        ("verdict", "sustained" if r.get("sustained") else "fell over: " + "; ".join(r.get("problems") or []), "text"),
        ("p99 put → event (ms)", (r.get("latency") or {}).get("p99_ms"), "ms"),
        ("deliveries/s", g.get("deliveries_per_s"), "rate"),
        (
            "missing / duplicate / out of order / unexpected",
            " / ".join(str(c.get(k, "?")) for k in ("missing", "duplicates", "out_of_order", "unexpected")),
            "text",
        ),
        ("acked writes lost", (r.get("writer") or {}).get("acked_lost"), "text"),
    ]
    inf = r.get("informers")
    if inf:
        out.append(("all informers synced (s)", inf.get("all_synced_s"), "s"))
    for label in ("lookout-gateway", "lookout-store"):
        s = server(r, label)
        out.append((f"{label} CPU (s)", s.get("cpu_s"), "s"))
        rss = s.get("peak_rss_bytes")
        out.append((f"{label} peak RSS (MiB)", rss / 2**20 if rss else None, "mib"))
    return out


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "text":
        return str(v)
    if kind == "rate":
        return f"{v / 1000:.1f} k/s"
    return f"{v:.2f}"


def main():
    out = pathlib.Path(sys.argv[1])
    run = {}
    if (out / "run.txt").exists():
        for line in (out / "run.txt").read_text().splitlines():
            k, _, v = line.partition("=")
            run[k] = v
    cells = sorted({p.name for side in ("before", "after") for p in (out / side).glob("*") if p.is_dir()},
                   key=lambda n: (n.startswith("informers"), [int(x) if x.isdigit() else x for x in n.split("-")]))
    print("# Before / after, cell by cell (scripts/compare-builds.sh)\n")
    for k in ("before", "after", "started", "ended", "loadavg_start", "loadavg_end"):
        if k in run:
            print(f"- {k}: `{run[k]}`")
    print()
    print("Each cell ran on both builds back to back (order swapped from cell to cell), every run on a fresh")
    print("`lookout store` + `lookout gateway`, clients on the same 2 shared cores. Ratios are after ÷ before;")
    print("for latency, CPU and memory lower is better, for rates higher.\n")
    print("| cell | metric | before | after | after ÷ before |")
    print("|---|---|---|---|---|")
    for cell in cells:
        b = load(out / "before" / cell / "results.jsonl")
        a = load(out / "after" / cell / "results.jsonl")
        if b is None or a is None:
            print(f"| {cell} | (missing run) | {'ok' if b else '–'} | {'ok' if a else '–'} | – |")
            continue
        for (name, bv, kind), (_, av, _) in zip(metrics(b), metrics(a)):
            ratio = "–"
            if kind != "text" and isinstance(bv, (int, float)) and isinstance(av, (int, float)) and bv:
                ratio = f"{av / bv:.2f}×"
            print(f"| {cell} | {name} | {fmt(bv, kind)} | {fmt(av, kind)} | {ratio} |")


if __name__ == "__main__":
    main()
