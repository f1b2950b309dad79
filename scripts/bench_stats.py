#!/usr/bin/env python3
"""Overhead of "what the merge did" (`crucible merge ... --stats FILE.csv`, crate/src/merge/stats.rs).

    python3 scripts/bench_stats.py [--bin target/release/crucible] [--methods linear,slerp,ties,dare_ties]
                                   [--repeat 5]

Runs the native CLI on the SmolLM2-135M-shaped synthetic checkpoints of `npm run bench:merge`
(.cache/bench/smol, BF16, 30 layers; the recipes .cache/bench/recipes/smol_METHOD.yml — run
`npm run bench:merge` once to make them), alternating runs without and with --stats, and prints
per method the median wall time and the median CPU time (user + sys of the child, from
os.wait4: less sensitive than wall time to other processes on a shared machine) and the
overhead of --stats in percent. Each run is a fresh process writing to .cache/bench/out-stats
(removed afterwards).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"


def run(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crucible"))
    ap.add_argument("--methods", default="linear,slerp,ties,dare_ties")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    recipes = CACHE / "recipes"
    if not (CACHE / "smol").is_dir() or not recipes.is_dir():
        sys.exit("no .cache/bench/smol checkpoints: run `npm run bench:merge` once first")
    out = CACHE / "out-stats"
    csv = CACHE / "out-stats.csv"
    print(f"binary {args.bin}; SmolLM2-135M shapes (BF16, 30 layers); median of {args.repeat} runs each")
    print(f"{'method':<10} {'wall':>8} {'wall+stats':>11} {'cpu':>8} {'cpu+stats':>10} {'cpu overhead':>13} {'rows':>5}")
    for m in args.methods.split(","):
        recipe = recipes / f"smol_{m}.yml"
        if not recipe.is_file():
            sys.exit(f"{recipe} is missing: run `npm run bench:merge` once first")
        base = [args.bin, "merge", str(recipe), str(out), "--seed", "42", "--quiet"]
        plain, stats = [], []
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            plain.append(run(base))
            shutil.rmtree(out, ignore_errors=True)
            stats.append(run(base + ["--stats", str(csv)]))
        rows = sum(1 for _ in open(csv)) - 1
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        w0, w1, c0, c1 = med(plain, 0), med(stats, 0), med(plain, 1), med(stats, 1)
        print(f"{m:<10} {w0:>7.2f}s {w1:>10.2f}s {c0:>7.2f}s {c1:>9.2f}s {100 * (c1 - c0) / c0:>12.1f}% {rows:>5}")
    shutil.rmtree(out, ignore_errors=True)
    csv.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
