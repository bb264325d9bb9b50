#!/usr/bin/env python3
"""Import cycles between the files of each crate, and the largest files and
longest functions: the numbers the layout work is judged by.

A file depends on another when it names one of its items through a path
(`use crate::a::b`, `crate::a::f()`, `super::x`, `self::y`). Tests
(`#[cfg(test)]` modules) are left out, as are `lib.rs`/`mod.rs` re-exports
(a parent that only declares and re-exports its children is not a cycle).
Cycles are the strongly connected components with more than one file.

Usage: python3 scripts/import-cycles.py [--json] [crate ...]
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["proto", "semantics", "consensus", "cache", "gateway", "loadtest", "testkit"]


def module_files(src):
    """module path (tuple) -> file path, for every .rs file under src."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "main", "mod"):
                rel = rel[:-1]
            if rel and rel[0] == "bin":
                continue
            mods[tuple(rel)] = full
    return mods


def strip_tests(text):
    """Drops `#[cfg(test)] mod ... { ... }` blocks and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    return "".join(out)


def resolve(path, here, mods):
    """The module a path names, or None. `path` is a list of segments."""
    if not path:
        return None
    if path[0] == "crate":
        base, rest = (), path[1:]
    elif path[0] == "super":
        base = here[:-1]
        rest = path[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif path[0] == "self":
        base, rest = here, path[1:]
    else:
        return None
    best = None
    cur = base
    if cur in mods:
        best = cur
    for seg in rest:
        cur = cur + (seg,)
        if cur in mods:
            best = cur
        else:
            break
    return best


def use_paths(text):
    """Every `crate::`/`super::`/`self::` path, use-trees expanded."""
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)(?:::[^;]+));", text, re.S):
        paths.extend(expand(m.group(1).replace("\n", " ")))
    for m in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", text):
        paths.append(m.group(1).split("::"))
    return paths


def expand(tree):
    tree = tree.strip()
    m = re.match(r"^([\w:]*?)::\{(.*)\}$", tree, re.S)
    if not m:
        segs = [s.strip() for s in tree.split("::")]
        segs = [s.split(" as ")[0].strip() for s in segs]
        return [[s for s in segs if s and s != "*"]]
    head = [s for s in m.group(1).split("::") if s]
    body, parts, depth, cur = m.group(2), [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        p = p.strip()
        if not p:
            continue
        if p == "self":
            out.append(head)
            continue
        for sub in expand(p):
            out.append(head + sub)
    return out


def graph(crate):
    src = os.path.join(ROOT, crate, "src")
    if not os.path.isdir(src):
        return None, None
    mods = module_files(src)
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        text = strip_tests(open(f, encoding="utf-8").read())
        for p in use_paths(text):
            t = resolve(p, m, mods)
            if t is not None and t != m:
                # A parent naming its own child (mod.rs re-exports) or a
                # child naming its parent module file is structure, not a
                # dependency between rooms, unless it reaches past it.
                edges[m].add(t)
    # lib.rs / mod.rs that only declare children: drop parent->child edges.
    for m in mods:
        edges[m] = {t for t in edges[m] if not (len(t) == len(m) + 1 and t[: len(m)] == m)}
    return mods, edges


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def longest_functions(files, n=5):
    """(lines, file, fn name) of the longest fns outside tests."""
    found = []
    for f in files:
        lines = open(f, encoding="utf-8").read().split("\n")
        in_test = False
        for i, line in enumerate(lines):
            if re.match(r"\s*#\[cfg\(test\)\]", line):
                in_test = True
            m = re.match(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)", line)
            if not m or in_test:
                continue
            indent = len(m.group(1))
            # The body ends at the first later line closing at this indent.
            for j in range(i + 1, len(lines)):
                if lines[j].startswith(" " * indent + "}") and (
                    len(lines[j]) == indent + 1 or lines[j][indent + 1] in " ;)"
                ):
                    found.append((j - i + 1, os.path.relpath(f, ROOT), m.group(6)))
                    break
    found.sort(reverse=True)
    return found[:n]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    crates = args or CRATES
    report = {"cycles": {}, "largest_files": [], "longest_functions": []}
    all_files = []
    for c in crates:
        mods, edges = graph(c)
        if mods is None:
            continue
        all_files.extend(mods.values())
        report["cycles"][c] = [["/".join(m) or "lib" for m in comp] for comp in sccs(edges)]
    sizes = []
    for f in all_files:
        with open(f, encoding="utf-8") as fh:
            sizes.append((sum(1 for _ in fh), os.path.relpath(f, ROOT)))
    sizes.sort(reverse=True)
    report["largest_files"] = sizes[:5]
    report["longest_functions"] = longest_functions(all_files)
    if "--json" in sys.argv:
        print(json.dumps(report, indent=1))
        return
    total = sum(len(v) for v in report["cycles"].values())
    print(f"import cycles between files: {total}")
    for c, comps in report["cycles"].items():
        for comp in comps:
            print(f"  {c}: {' <-> '.join(comp)}")
    print("largest source files:")
    for n, f in report["largest_files"]:
        print(f"  {n:5} {f}")
    print("longest functions:")
    for n, f, name in report["longest_functions"]:
        print(f"  {n:5} {f} {name}")


if __name__ == "__main__":
    main()
