#!/usr/bin/env python3
"""Compares two dsm_bench builds in alternating runs (A, B, A, B, ...) on this machine.

Single runs of one figure vary by up to 2x here (other VMs' load, steal time), so a change is
judged by pairs run back to back: each pair sees about the same machine. Prints every pair's
values and, per benchmark and counter, the median of each build and in how many pairs B was
higher.

Usage (as root, from the repository):
  bench/ab.py OLD/dsm_bench NEW/dsm_bench --filter '^SeqScan/lo' [--pairs 6]
              [--counter MB_per_s] [--counter median_us] [-- more dsm_bench flags]

Keep a copy of the old binary before rebuilding (cp build-bench/bench/dsm_bench /tmp/old).
"""
import argparse
import json
import statistics
import subprocess
import sys

DEFAULT_COUNTERS = ["median_us", "p99_us", "MB_per_s", "faults_per_s"]


def run(binary, flt, extra):
    cmd = [binary, f"--benchmark_filter={flt}", "--benchmark_format=json"] + extra
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.returncode != 0:
        sys.exit(f"ab.py: {' '.join(cmd)} exited with {p.returncode}")
    out = {}
    for b in json.loads(p.stdout).get("benchmarks", []):
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        name = b["name"].split("/iterations:")[0]
        out[name] = {k: v for k, v in b.items() if isinstance(v, (int, float))}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the old dsm_bench")
    ap.add_argument("b", help="the new dsm_bench")
    ap.add_argument("--filter", required=True, help="--benchmark_filter regex")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--counter", action="append",
                    help=f"counters to compare (default: those of {DEFAULT_COUNTERS} present)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    if args.pairs < 1:
        sys.exit("ab.py: --pairs must be at least 1")

    results = {"A": [], "B": []}
    for i in range(args.pairs):
        for label, binary in (("A", args.a), ("B", args.b)):
            r = run(binary, args.filter, args.extra)
            if not r:
                sys.exit(f"ab.py: no benchmark of {binary} matched --filter {args.filter!r}")
            results[label].append(r)
            shown = args.counter or DEFAULT_COUNTERS
            summary = "  ".join(
                f"{n}: " + ", ".join(f"{c}={v[c]:.4g}" for c in shown if c in v)
                for n, v in sorted(r.items()))
            print(f"pair {i + 1} {label}  {summary}", flush=True)

    print()
    print("| benchmark | counter | A median | B median | B/A | pairs with B higher |")
    print("|---|---|---:|---:|---:|---:|")
    names = sorted(set(results["A"][0]) & set(results["B"][0]))
    for n in names:
        counters = args.counter or [c for c in DEFAULT_COUNTERS if c in results["A"][0][n]]
        for c in counters:
            a = [r[n][c] for r in results["A"] if n in r and c in r[n]]
            b = [r[n][c] for r in results["B"] if n in r and c in r[n]]
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            higher = sum(1 for x, y in zip(a, b) if y > x)
            ratio = f"{mb / ma:.2f}" if ma else "—"
            print(f"| {n} | {c} | {ma:.4g} | {mb:.4g} | {ratio} | {higher} of {min(len(a), len(b))} |")


if __name__ == "__main__":
    main()
