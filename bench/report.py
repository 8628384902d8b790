#!/usr/bin/env python3
"""Writes docs/PERFORMANCE.md from dsm_bench's JSON output (--benchmark_out).

Every dsm figure is shown beside its floor (composed from floors measured in the same run)
and the ratio, checked against the product's latency targets (docs/PERFORMANCE.md).

Usage: report.py --json out.json [--json more.json ...] --machine machine.txt
                 [--notes bench/PERFORMANCE_notes.md] [--command "scripts/bench.sh"]
                 > docs/PERFORMANCE.md
Several --json files (one per network, say) are merged; a figure present in more than one
keeps the first file's value.
"""
import argparse
import json
import re
import sys


def key_of(name):
    name = re.sub(r"/iterations:\d+", "", name)
    name = re.sub(r"/manual_time|/real_time", "", name)
    return name


def load_one(path):
    with open(path) as f:
        doc = json.load(f)
    runs = {}
    medians = {}
    for b in doc.get("benchmarks", []):
        if b.get("error_occurred"):
            runs[key_of(b.get("run_name", b["name"]))] = {"error": b.get("error_message", "?")}
            continue
        k = key_of(b.get("run_name", b["name"]))
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[k] = b
        else:
            runs.setdefault(k, b)
    # With repetitions, the median aggregate stands for the figure.
    runs.update(medians)
    return doc.get("context", {}), runs


def load(paths):
    ctx, runs = {}, {}
    for p in paths:
        c, r = load_one(p)
        ctx = ctx or c
        for k, v in r.items():
            runs.setdefault(k, v)
    return ctx, runs


def repetitions(runs):
    """How many repetitions each figure is the median of (1 without repetitions)."""
    reps = {int(b.get("repetitions", 1) or 1) for b in runs.values() if isinstance(b, dict)}
    return max(reps) if reps else 1


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


class Figures:
    def __init__(self, runs):
        self.runs = runs

    def get(self, key, counter):
        b = self.runs.get(key)
        if b is None or "error" in b:
            return None
        return b.get(counter)

    def err(self, key):
        b = self.runs.get(key)
        if b is None:
            return "not run"
        return b.get("error")


def verdict(ok):
    if ok is None:
        return "—"
    return "**met**" if ok else "**not met**"


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_speedup(v):
    """'1.70×' when faster than the plain run, '0.28× (3.6× slower)' when not."""
    if v is None or v <= 0:
        return "—"
    if v >= 1:
        return f"{v:.2f}×"
    slower = 1 / v
    if slower >= 100:
        return f"{'<0.01' if v < 0.01 else f'{v:.2f}'}× ({slower:,.0f}× slower)"
    if slower >= 10:
        return f"{v:.2g}× ({slower:,.0f}× slower)"
    return f"{v:.2f}× ({slower:.1f}× slower)"


def app_figures(w, F, n):
    """The table "application figures" over network n (bench/bench_apps.cc)."""
    keys = [(kind, nodes, f"App_{kind}/{n}/nodes:{nodes}")
            for kind in ("Sor", "Matmul", "CounterTable") for nodes in (1, 2, 3)]
    if not any(k in F.runs for _, _, k in keys):
        return
    w(f"### Application figures over `{n}`")
    w("")
    w("The example applications' kernels (examples/app_kernels.h) on 1-3 nodes, node 0 the "
      "home, each beside a plain run of the same kernel in one process on private memory, "
      "measured in the same iteration and compared with it byte for byte (a wrong result is "
      "an error, never a figure). Wall and CPU cover the compute phase only (after every node "
      "initialized its share). CPU: all six node processes; plain CPU: the plain run's thread. "
      "Speed-up = plain CPU / dsm wall (the plain run's CPU time is its wall time on an idle "
      "vCPU; its measured wall here mostly measures the other tenants). Pages moved: pages "
      "installed at, plus pages sent home by, the nodes other than the home. CPU per page: the "
      "run's CPU beyond the plain run's, per page moved. With 3 nodes the 2 vCPUs are "
      "oversubscribed: read CPU per page and pages moved there, not the speed-up (see "
      "\"Application figures\" in the notes below).")
    w("")
    w("| application | nodes | wall ms | plain ms | speed-up vs plain (plain CPU ÷ wall) | "
      "CPU ms, all nodes | plain CPU ms | pages moved | faults | "
      "CPU µs per page moved, beyond plain |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, nodes, key in keys:
        a, b = F.get(key, "size_a"), F.get(key, "size_b")
        if kind == "Sor":
            label = (f"red-black SOR, {fmt_int(a + 2) if a else '?'}² doubles, "
                     f"{fmt_int(b)} iterations")
        elif kind == "Matmul":
            label = f"matrix multiply, {fmt_int(a)}² doubles"
        else:
            label = (f"counter table, {fmt_int(a)} packed records, {fmt_int(b)} ops per node "
                     f"(per op: wall {fmt(F.get(key, 'us_per_op'))} µs, CPU "
                     f"{fmt(F.get(key, 'cpu_us_per_op'))} µs)")
        wall = F.get(key, "wall_ms")
        if wall is None:
            if key in F.runs:
                w(f"| {label} | {nodes} | error: {F.err(key)} | | | | | | | |")
            continue
        pages = fmt_int(F.get(key, "pages_moved"))
        per_it = F.get(key, "pages_per_iteration")
        if per_it is not None:
            pages += f" ({fmt(per_it)} per iteration)"
        w(f"| {label} | {nodes} | {fmt(wall)} | {fmt(F.get(key, 'plain_ms'))} | "
          f"{fmt_speedup(F.get(key, 'speedup'))} | {fmt(F.get(key, 'cpu_ms'))} | "
          f"{fmt(F.get(key, 'plain_cpu_ms'))} | {pages} | {fmt_int(F.get(key, 'faults'))} | "
          f"{fmt(F.get(key, 'extra_cpu_us_per_page'))} |")
    w("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True, action="append")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--notes")
    ap.add_argument("--command", default="scripts/bench.sh")
    ap.add_argument("--spin-json", action="append",
                    help="a second run of the key figures with another --poll_spin_us")
    args = ap.parse_args()

    ctx, runs = load(args.json)
    F = Figures(runs)
    with open(args.machine) as f:
        machine = f.read().strip()

    out = []
    w = out.append
    w("# Performance")
    w("")
    reps = repetitions(runs)
    each = (f" Each figure (and each floor) is the median of {reps} repetitions, interleaved "
            "in random order within each network's run, so a burst of load from other "
            "processes hits a few samples of many figures rather than every sample of one."
            if reps > 1 else "")
    w(f"Generated by `{args.command}` from one run of `dsm_bench` per network "
      "(bench/dsm_bench.cc); do not edit by hand — edit bench/PERFORMANCE_notes.md or "
      f"bench/report.py and re-run.{each}")
    w("")
    w("## Machine")
    w("")
    for line in machine.splitlines():
        w(f"- {line}")
    smoke = ctx.get("dsm_smoke") == "1"
    if smoke:
        w("- **smoke mode**: tiny sizes, one short repetition; the numbers mean nothing")
    w("")

    # ---- floors ---------------------------------------------------------------------------
    miss = F.get("Floor_UffdMissing/busy", "median_us")
    wp = F.get("Floor_UffdWp/busy", "median_us")
    nets = [n for n in ("lo", "veth") if f"Floor_TcpRtt4K/{n}" in runs]

    w("## Floors (measured in the same run)")
    w("")
    w("| floor | median µs | p99 µs | CPU µs/op | other |")
    w("|---|---:|---:|---:|---|")
    for k, label in [
        ("Floor_UffdMissing/busy", "uffd MISSING round trip, handler busy-polls (UFFDIO_COPY)"),
        ("Floor_UffdWp/busy", "uffd WP round trip, handler busy-polls (UFFDIO_WRITEPROTECT)"),
        ("Floor_UffdMissing/blocking", "uffd MISSING round trip, handler blocks in poll()"),
        ("Floor_UffdWp/blocking", "uffd WP round trip, handler blocks in poll()"),
    ]:
        w(f"| {label} | {fmt(F.get(k, 'median_us'))} | {fmt(F.get(k, 'p99_us'))} | "
          f"{fmt(F.get(k, 'cpu_us_per_op'))} | |")
    for n in nets:
        for k, label in [(f"Floor_TcpRtt4K/{n}", f"raw TCP 64 B request / 4 KiB reply ({n}), busy-poll"),
                         (f"Floor_TcpRtt64/{n}", f"raw TCP 64 B request / 64 B reply ({n}), busy-poll")]:
            w(f"| {label} | {fmt(F.get(k, 'median_us'))} | {fmt(F.get(k, 'p99_us'))} | "
              f"{fmt(F.get(k, 'cpu_us_per_op'))} | |")
        for k, size in [(f"Floor_TcpStream/{n}", "4 KiB"), (f"Floor_TcpStreamRun/{n}", "256 KiB")]:
            w(f"| raw TCP streaming of {size} send()s ({n}), one direction | | | "
              f"{fmt(F.get(k, 'cpu_us_per_op'))} per 4 KiB | {fmt(F.get(k, 'MB_per_s'))} MB/s |")
        k = f"Floor_RemoteFaultRaw/{n}"
        w(f"| composed: remote fault with no dsm code ({n}): busy-polling uffd handler fetches "
          f"the page with a raw 4 KiB RTT, then UFFDIO_COPY | {fmt(F.get(k, 'median_us'))} | "
          f"{fmt(F.get(k, 'p99_us'))} | {fmt(F.get(k, 'cpu_us_per_op'))} | |")
        k = f"Floor_RunInstallRaw/{n}"
        w(f"| composed: readahead receive-and-install with no dsm code ({n}): 256 KiB raw replies, "
          f"4 in flight, one UFFDIO_COPY of 64 pages each, one thread | | | "
          f"{fmt(F.get(k, 'cpu_us_per_op'))} per page | {fmt(F.get(k, 'MB_per_s'))} MB/s |")
    w("")

    # ---- figures --------------------------------------------------------------------------
    for n in nets:
        rtt = F.get(f"Floor_TcpRtt4K/{n}", "median_us")
        rtt64 = F.get(f"Floor_TcpRtt64/{n}", "median_us")
        # The scan's floor is raw streaming at its best: the faster of 4 KiB and 256 KiB sends.
        streams = [x for x in (F.get(f"Floor_TcpStream/{n}", "MB_per_s"),
                               F.get(f"Floor_TcpStreamRun/{n}", "MB_per_s")) if x is not None]
        stream = max(streams) if streams else None

        def s(*xs):
            return None if any(x is None for x in xs) else sum(xs)

        w(f"## dsm figures over `{n}` " +
          ("(TCP on 127.0.0.1)" if n == "lo" else "(each node in its own network namespace, veth + bridge)"))
        w("")
        w("Latencies are per operation as the application sees it (median / p99 of every "
          "operation of the run). Floor = the sum of the floors the operation cannot beat; "
          "ratio = median / floor. CPU = CPU time consumed by all six node processes per "
          "operation (each process's CPU clock read around the timed loop, untimed preparation "
          "left out); floor CPU = the same sum of the floors' CPU per operation (a busy-polled "
          "floor burns its whole wall time on each side: both ends of a raw RTT spin).")
        w("")
        w("| figure | median µs | p99 µs | CPU µs/op | floor µs | floor CPU µs/op | floor is | "
          "ratio | target | verdict |")
        w("|---|---:|---:|---:|---:|---:|---|---:|---|---|")

        def row(key, label, floor, floor_is, target=None, check=None, floor_cpu=None,
                med_counter="median_us", med=None):
            med = F.get(key, med_counter) if med is None else med
            p99 = F.get(key, "p99_us")
            if med is None:
                w(f"| {label} | error: {F.err(key)} | | | | | | | {target or ''} | |")
                return
            ratio = med / floor if floor else None
            ok = check(med, p99, ratio) if (check and ratio is not None) else None
            w(f"| {label} | {fmt(med)} | {fmt(p99)} | {fmt(F.get(key, 'cpu_us_per_op'))} | "
              f"{fmt(floor)} | {fmt(floor_cpu)} | {floor_is} | "
              f"{fmt(ratio)}{'×' if ratio is not None else ''} | {target or ''} | {verdict(ok)} |")

        def cpu(*keys):
            return s(*[F.get(k, "cpu_us_per_op") for k in keys])

        MISS, WP = "Floor_UffdMissing/busy", "Floor_UffdWp/busy"
        RTT, RTT64 = f"Floor_TcpRtt4K/{n}", f"Floor_TcpRtt64/{n}"
        row(f"ReadFault/{n}", "remote read fault I→S (home on the other node)",
            s(miss, rtt), "MISSING + raw 4K RTT", "≤ 1.3× floor, p99 ≤ 3× median",
            lambda m, p, r: r <= 1.3 and p <= 3 * m, cpu(MISS, RTT))
        for kind, label in (("Read", "load"), ("Write", "store")):
            row(f"HomeFirstTouch{kind}/{n}", f"the home's first {label} to a page no node has "
                "touched (served by its own engine; no network)", miss, "MISSING",
                floor_cpu=cpu(MISS))
        for k in (0, 1, 2, 4):
            fl = s(miss, rtt) if k == 0 else s(miss, rtt, rtt64)
            fc = cpu(MISS, RTT) if k == 0 else cpu(MISS, RTT, RTT64)
            row(f"WriteMiss/{n}/k:{k}", f"write miss I→M, {k} other sharer(s)", fl,
                "MISSING + raw 4K RTT" + ("" if k == 0 else " + raw 64 B RTT (parallel invalidations)"),
                floor_cpu=fc)
        for k in (0, 1, 2, 4):
            fl = s(wp, rtt) if k == 0 else s(wp, rtt, rtt)
            fc = cpu(WP, RTT) if k == 0 else cpu(WP, RTT, RTT)
            tgt = "≤ 1.3× floor" if k == 1 else None
            row(f"Upgrade/{n}/k:{k}", f"write upgrade S→M, {k} other sharer(s)", fl,
                "WP + raw 4K RTT" + ("" if k == 0 else " × 2"), tgt,
                (lambda m, p, r: r <= 1.3) if k == 1 else None, fc)
        row(f"Recall/{n}", "recall: read a page a third node holds M", s(miss, rtt, rtt),
            "MISSING + 2 raw 4K RTT", floor_cpu=cpu(MISS, RTT, RTT))
        hw = f"ReadFaultHomeWritten/{n}"
        rf_med = F.get(f"ReadFault/{n}", "median_us")
        row(hw, "remote read fault of a page the home has written (home holds it writable; "
            f"home CPU {fmt(F.get(hw, 'cpu_home_us_per_op'))} µs/op against "
            f"{fmt(F.get(f'ReadFault/{n}', 'cpu_home_us_per_op'))} for an untouched page)",
            s(miss, rtt, wp), "MISSING + raw 4K RTT + WP (the home's write-protect)",
            "≤ 1.3× the untouched read fault" + (f" ({fmt(1.3 * rf_med)} µs)" if rf_med else ""),
            (lambda m, p, r: rf_med is not None and m <= 1.3 * rf_med), cpu(MISS, RTT, WP))
        for kind, label, untouched, fl, fc, fl_is in (
                ("WriteMiss", "write miss I→M", f"WriteMiss/{n}/k:0", s(miss, rtt, wp),
                 cpu(MISS, RTT, WP),
                 "MISSING + raw 4K RTT + WP (the home's write-protect; its unmap not counted)"),
                ("Upgrade", "write upgrade S→M", f"Upgrade/{n}/k:0", s(wp, rtt),
                 cpu(WP, RTT), "WP + raw 4K RTT (the home's unmap not counted)")):
            key = f"{kind}HomeWritten/{n}"
            row(key, f"{label} of a page the home has written (the home's copy is taken in "
                f"place; home CPU {fmt(F.get(key, 'cpu_home_us_per_op'))} µs/op against "
                f"{fmt(F.get(untouched, 'cpu_home_us_per_op'))}; untouched page "
                f"{fmt(F.get(untouched, 'median_us'))} µs)", fl, fl_is, floor_cpu=fc)
        pp_floor = s(miss, rtt, rtt, miss, rtt, rtt)
        row(f"PingPong/{n}", "ping-pong round (two hand-offs of one page)", pp_floor,
            "2 × (MISSING + 2 raw 4K RTT)", floor_cpu=cpu(MISS, RTT, RTT, MISS, RTT, RTT))
        w("")

        # Locks: the targets are in raw 64 B round trips.
        half = rtt64 / 2 if rtt64 else None
        half_cpu = F.get(RTT64, "cpu_us_per_op")
        half_cpu = half_cpu / 2 if half_cpu else None
        w("| lock figure | median µs | p99 µs | CPU µs/op | floor µs | floor CPU µs/op | "
          "floor is | ratio | target | verdict |")
        w("|---|---:|---:|---:|---:|---:|---|---:|---|---|")
        lu = f"LockUnlock/{n}"
        row(lu, f"uncontended exclusive lock + unlock, arbiter on another node (lock "
            f"{fmt(F.get(lu, 'lock_median_us'))} µs + unlock {fmt(F.get(lu, 'unlock_median_us'))} µs)",
            rtt64, "raw 64 B RTT", "≤ 1.5× floor", lambda m, p, r: r <= 1.5, F.get(RTT64, "cpu_us_per_op"))
        for nodes in (2, 3):
            key = f"LockHandoff/{n}/nodes:{nodes}"
            m0 = F.get(key, "median_us")
            row(key, f"hand-off, {nodes} nodes lock and unlock one range in a loop: node 0's "
                f"lock + unlock median ({fmt(m0)} µs) / {nodes}, the hand-offs in one of its "
                f"rounds (wall time per operation of all nodes: {fmt(F.get(key, 'per_op_us'))} µs)",
                half, "½ raw 64 B RTT (one message)", floor_cpu=half_cpu,
                med=(m0 / nodes if m0 is not None else None))
        for nodes in (1, 3):
            key = f"CounterTable/{n}/nodes:{nodes}"
            row(key, f"counter table's lock phase, {nodes} node(s), 256 records of 64 B (per "
                f"operation of all nodes: lock, increment, unlock; node 0's median "
                f"{fmt(F.get(key, 'median_us'))} µs)", None, "", med_counter="per_op_us")
            with_key = f"CounterTableWithPages/{n}/nodes:{nodes}"
            plain = F.get(key, "per_op_us")
            withp = F.get(with_key, "per_op_us")
            vs = f"; {fmt(withp / plain)}× the row above" if plain and withp else ""
            row(with_key, f"the same, each lock granted with its page (LockOptions::with_pages"
                f"{vs}; node 0's median {fmt(F.get(with_key, 'median_us'))} µs)", None, "",
                med_counter="per_op_us")
        w("")

        # Throughput table.
        w("| throughput figure | value | floor | ratio | target | verdict |")
        w("|---|---:|---:|---:|---|---|")
        for kind, label in (("SeqScan", "sequential scan"), ("RandScan", "random scan")):
            key = f"{kind}/{n}"
            mbs = F.get(key, "MB_per_s")
            pps = F.get(key, "pages_per_s")
            if mbs is None:
                w(f"| {label} | error: {F.err(key)} | | | | |")
                continue
            ratio = mbs / stream if stream else None
            tgt = "≥ 0.8× streaming" if kind == "SeqScan" else None
            ok = (ratio >= 0.8) if (kind == "SeqScan" and ratio is not None) else None
            w(f"| {label} of a remote region ({fmt(pps)} pages/s; per page median "
              f"{fmt(F.get(key, 'median_us'))} µs, p99 {fmt(F.get(key, 'p99_us'))} µs; CPU "
              f"{fmt(F.get(key, 'cpu_us_per_op'))} µs/page, raw stream "
              f"{fmt(F.get(f'Floor_TcpStreamRun/{n}', 'cpu_us_per_op'))}) | "
              f"{fmt(mbs)} MB/s | {fmt(stream)} MB/s raw stream | {fmt(ratio)}× | {tgt or ''} | "
              f"{verdict(ok)} |")
        for kind, label in (("ReadFaultThreads", "read faults"), ("WriteMissThreads", "write misses")):
            one = F.get(f"{kind}/{n}/threads:1", "faults_per_s")
            for t in (1, 2, 4):
                key = f"{kind}/{n}/threads:{t}"
                v = F.get(key, "faults_per_s")
                if v is None:
                    w(f"| {label}, {t} thread(s) | error: {F.err(key)} | | | | |")
                    continue
                ratio = v / one if one else None
                tgt = "≥ 2.5× one thread" if (t == 4 and kind == "ReadFaultThreads") else None
                ok = (ratio >= 2.5) if tgt and ratio is not None else None
                w(f"| {label}, {t} thread(s) at once (per fault median "
                  f"{fmt(F.get(key, 'median_us'))} µs, p99 {fmt(F.get(key, 'p99_us'))} µs; CPU "
                  f"{fmt(F.get(key, 'cpu_us_per_op'))} µs/fault) | "
                  f"{fmt(v)} faults/s | {fmt(one)} faults/s (1 thread) | {fmt(ratio)}× | "
                  f"{tgt or ''} | {verdict(ok)} |")
        w("")

        # Against the composed floors: the same mechanisms chained, on the same vCPUs, in the
        # same run, with no dsm code. What is left is the library's own cost.
        cf = F.get(f"Floor_RemoteFaultRaw/{n}", "median_us")
        rf = F.get(f"ReadFault/{n}", "median_us")
        ci = F.get(f"Floor_RunInstallRaw/{n}", "MB_per_s")
        sc = F.get(f"SeqScan/{n}", "MB_per_s")
        if None not in (cf, rf) or None not in (ci, sc):
            w("| against the composed floors (no target; the library's own share) | dsm | "
              "composed floor | ratio |")
            w("|---|---:|---:|---:|")
            if None not in (cf, rf):
                w(f"| remote read fault, median µs | {fmt(rf)} | {fmt(cf)} | {fmt(rf / cf)}× |")
                a = F.get(f"ReadFault/{n}", "cpu_us_per_op")
                b = F.get(f"Floor_RemoteFaultRaw/{n}", "cpu_us_per_op")
                if None not in (a, b):
                    w(f"| remote read fault, CPU µs per fault (all processes) | {fmt(a)} | "
                      f"{fmt(b)} | {fmt(a / b)}× |")
            if None not in (ci, sc):
                w(f"| sequential scan, MB/s | {fmt(sc)} | {fmt(ci)} | {fmt(sc / ci)}× |")
                a = F.get(f"SeqScan/{n}", "cpu_us_per_op")
                b = F.get(f"Floor_RunInstallRaw/{n}", "cpu_us_per_op")
                if None not in (a, b):
                    w(f"| sequential scan, CPU µs per page | {fmt(a)} | {fmt(b)} | {fmt(a / b)}× |")
            w("")

        w("| per-page bookkeeping, 64 GiB region mapped, not touched | RSS growth | target | verdict |")
        w("|---|---:|---|---|")
        for key, counter, label in (
            (f"Bookkeeping/{n}/nonhome", "rss_bytes_per_page", "non-home node"),
            (f"Bookkeeping/{n}/nonhome", "home_rss_bytes_per_page", "home node (other nodes map it too)"),
            (f"Bookkeeping/{n}/home", "rss_bytes_per_page", "home node, alone"),
        ):
            v = F.get(key, counter)
            if v is None:
                w(f"| {label} | error: {F.err(key)} | ≤ 16 B/page | |")
                continue
            w(f"| {label} (virtual beyond the region itself: "
              f"{fmt(F.get(key, 'virt_bytes_per_page') if counter == 'rss_bytes_per_page' else None)} "
              f"B/page; map took {fmt(F.get(key, 'map_ms'))} ms) | {fmt(v)} B/page | ≤ 16 B/page | "
              f"{verdict(v <= 16)} |")
        w("")
        app_figures(w, F, n)

    if args.spin_json:
        ctx2, runs2 = load(args.spin_json)
        F2 = Figures(runs2)
        spin1 = ctx.get("dsm_poll_spin_us", "?")
        spin2 = ctx2.get("dsm_poll_spin_us", "?")
        if spin1 == "-1":  # older dsm_bench: -1 meant "the library default"
            spin1 = "default"
            ctx["dsm_poll_spin_is_default"] = "1"
        w("## Sensitivity: the engines' busy-poll (`Options::poll_spin`)")
        w("")
        main_spin = "the library default" if spin1 == "default" else f"poll_spin = {spin1} µs" + (
            " (the library default)" if ctx.get("dsm_poll_spin_is_default") == "1" else "")
        w(f"The main run used {main_spin}: the adaptive busy-poll, which spins only while a "
          "reply or the next input is due and never longer than poll_spin after the last one "
          "(see docs/ARCHITECTURE.md, \"Threads\"); "
          "a second run right after each network's main run measured the same key figures "
          f"with poll_spin = {spin2} µs "
          f"{'(never spin) ' if spin2 == '0' else ''}on every node. Ratios of the second run use "
          "the floors of the second run.")
        w("")
        col1 = "default spin" if spin1 == "default" else f"adaptive spin ≤ {spin1} µs"
        w(f"| figure | median µs, {col1} | median µs, spin {spin2} µs | "
          f"p99 µs, spin {spin2} µs | ratio to floor, spin {spin2} µs | CPU µs/op, {col1} | "
          f"CPU µs/op, spin {spin2} µs |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for n in nets:
            miss2 = F2.get("Floor_UffdMissing/busy", "median_us")
            wp2 = F2.get("Floor_UffdWp/busy", "median_us")
            rtt2 = F2.get(f"Floor_TcpRtt4K/{n}", "median_us")
            for key, label, fl in (
                (f"ReadFault/{n}", f"remote read fault ({n})", (miss2, rtt2)),
                (f"Upgrade/{n}/k:1", f"write upgrade, 1 sharer ({n})", (wp2, rtt2, rtt2)),
                (f"Recall/{n}", f"recall ({n})", (miss2, rtt2, rtt2)),
            ):
                m2 = F2.get(key, "median_us")
                floor2 = None if any(x is None for x in fl) else sum(fl)
                ratio = m2 / floor2 if (m2 is not None and floor2) else None
                w(f"| {label} | {fmt(F.get(key, 'median_us'))} | {fmt(m2)} | "
                  f"{fmt(F2.get(key, 'p99_us'))} | {fmt(ratio)}{'×' if ratio else ''} | "
                  f"{fmt(F.get(key, 'cpu_us_per_op'))} | {fmt(F2.get(key, 'cpu_us_per_op'))} |")
        w("")
        # Thread scaling under both settings: spinning makes one thread faster, which lowers
        # the 4-thread ratio even when every thread count got faster.
        rows = []
        for n in nets:
            def rate(FF, t):
                return FF.get(f"ReadFaultThreads/{n}/threads:{t}", "faults_per_s")
            a1, a4, b1, b4 = rate(F, 1), rate(F, 4), rate(F2, 1), rate(F2, 4)
            if None in (a1, a4, b1, b4):
                continue
            rows.append(f"| read faults/s, 1 and 4 threads ({n}) | {fmt(a1)} / {fmt(a4)} "
                        f"({fmt(a4 / a1)}×) | {fmt(b1)} / {fmt(b4)} ({fmt(b4 / b1)}×) |")
        if rows:
            w(f"| throughput | {col1} | spin {spin2} µs |")
            w("|---|---:|---:|")
            for r in rows:
                w(r)
            w("")

    # ---- CPU per operation -> cores ----------------------------------------------------------
    F2 = None
    if args.spin_json:
        F2 = Figures(load(args.spin_json)[1])
    model = []
    for n in nets:
        for key, label, unit in (
            (f"ReadFault/{n}", f"remote read fault ({n})", "faults"),
            (f"WriteMiss/{n}/k:0", f"write miss, no sharer ({n})", "faults"),
            (f"Upgrade/{n}/k:1", f"write upgrade, 1 sharer ({n})", "faults"),
            (f"Recall/{n}", f"recall ({n})", "faults"),
            (f"SeqScan/{n}", f"sequential scan ({n})", "pages"),
            (f"ReadFaultThreads/{n}/threads:4", f"read faults, 4 threads ({n})", "faults"),
            (f"LockUnlock/{n}", f"lock + unlock ({n})", "pairs"),
            (f"CounterTable/{n}/nodes:3", f"counter table, 3 nodes ({n})", "ops"),
        ):
            c1 = F.get(key, "cpu_us_per_op")
            c2 = F2.get(key, "cpu_us_per_op") if F2 else None
            if c1 is None and c2 is None:
                continue
            # At saturation an engine's spin finds work instead of waiting, and wake-ups are
            # rarer: the lower of the two is the better estimate of the work itself.
            base = min(x for x in (c1, c2) if x is not None)
            ceil = [fmt(cores * 1e6 / base) if base else "—" for cores in (4, 16, 64)]
            model.append(f"| {label} | {fmt(c1)} | {fmt(c2)} | {ceil[0]} | {ceil[1]} | "
                         f"{ceil[2]} | {unit}/s |")
    if model:
        w("## CPU per operation, and what 4, 16 and 64 cores would reach")
        w("")
        w("CPU µs per operation of all node processes together (see the tables above), with the "
          "engines' adaptive spin (the main run) and without it (the sensitivity run, when "
          "there is one). The ceilings are cores × 10⁶ / the lower of the two: "
          "the rate at which that many cores would be saturated by this work alone, if enough "
          "operations are in flight (see \"CPU model\" below for what this leaves out).")
        w("")
        w("| figure | CPU µs/op, adaptive spin | CPU µs/op, no spin | 4 cores | 16 cores | "
          "64 cores | unit |")
        w("|---|---:|---:|---:|---:|---:|---|")
        for r in model:
            w(r)
        w("")

    w("## Method")
    w("")
    w("""- One binary, `dsm_bench` (Google Benchmark 1.7). It is node 0 of a 6-node cluster over the
  io_uring TCP transport; nodes 1–5 are the same binary re-run with `--helper`, one process each,
  driven over a pipe each (one command per line; commands are never timed). Node 1 is the home
  of every region; nodes 2–5 are the other sharers / owners. `lo`: every node on 127.0.0.1.
  `veth`: every node in its own network namespace, joined by veth pairs on a bridge
  (tests/node/netns_cluster.h).
- Every figure is timed per operation on node 0 with `clock_gettime(CLOCK_MONOTONIC)` around one
  load or store (manual time); median and p99 are over every operation of one repetition, and
  the table shows the median of the repetitions' medians and of their p99s. Fresh pages
  are touched in a random order so no sequential pattern helps (except the sequential scan).
- Write miss / upgrade with k sharers: nodes 2..k+1 read a batch of 64 pages first (over their
  pipe, untimed); for an upgrade node 0 reads them too; then each store of node 0 is timed.
  Recall: node 2 writes a batch of 64 pages, then each load of node 0 is timed. Ping-pong: node 0
  and node 2 alternately increment one word of a page homed on node 1; one round = two hand-offs.
- Home first touch: node 0 maps a fresh region whose home it is (no other node maps it) and
  loads or stores one byte of each page in random order; the fault is served by node 0's own
  engine (its cache asks its own directory), nothing crosses the network.
- Scans: a fresh 256 MiB region homed on node 1, one load per page, sequential or in random order;
  one iteration = one whole scan; the region is remapped between iterations (untimed).
- Threads: 1, 2, 4 application threads of node 0 fault at once, each on its own fresh pages;
  faults/s = all faults / wall time of the batch.
- CPU per operation: each node process's CPU-time clock (`clock_getcpuclockid`, nanoseconds,
  all threads) is read before and after the timed loop, and around every untimed preparation
  inside it (which is left out); the sum over the six node processes (for floors: this process
  and the raw server) divided by the operations. It includes the engines' busy-poll, so the
  sensitivity run's figures (no spin) are the ones that scale with cores.
- Locks: `LockUnlock` takes and releases an exclusive 64-byte lock of a region whose arbiter
  (the home of page 0) is node 1, from one application thread of node 0, nobody else locking.
  `LockHandoff`: node 0 and helpers 2..n lock and unlock one 64-byte range in a loop at once,
  2000 times each; per operation = the loop's wall time over every node's operations.
  `CounterTable`: the lock phase of examples/counter_table.cc, 256 records of 64 bytes in one
  region (4 pages, home and arbiter node 1), each node increments a record chosen by a fixed
  mix of (node, k) under an exclusive lock of its first 8 bytes; node 0 checks the total after.
  `CounterTableWithPages`: the same with `LockOptions::with_pages` on every lock.
- Bookkeeping: resident (and virtual) size from /proc/<pid>/statm before and after mapping a
  64 GiB region, divided by 16 Mi pages.
- Floors, in the same run: a local userfaultfd MISSING round trip (UFFDIO_COPY) and WP round trip
  (UFFDIO_WRITEPROTECT) with a handler thread busy-polling a non-blocking uffd (and, for
  comparison, sleeping in poll()); raw TCP request/response (64 B request, 4 KiB or 64 B reply)
  between node 0's namespace and a server process in node 1's namespace, both busy-polling
  `recv(MSG_DONTWAIT)`; raw TCP streaming of 256 MiB in 4 KiB `send()`s and in 256 KiB
  `send()`s (the size of a 64-page readahead run), received with busy-polling recv into a
  256 KiB buffer.
- Composed floors, in the same run, no dsm code: (1) a remote fault as the brief's prototype
  did it: the faulting thread's page is fetched by a handler thread that busy-polls the uffd,
  sends a 64 B request to the raw server, busy-polls the 4 KiB reply and installs it with
  UFFDIO_COPY (pages in random order); (2) readahead's receive-and-install: 256 KiB raw replies
  with four requests in flight, each installed with one UFFDIO_COPY of 64 pages into a
  registered region, all on one thread (what one dsm engine does per run). They are not the
  composed floors; they show how much of a figure's distance from the composed floor is this
  machine (the pieces sharing two vCPUs) and how much is the library.
- Floors for the figures: read fault = MISSING + 4K RTT; write upgrade with one sharer = WP + 2 ×
  4K RTT (the composed-floor formula; the invalidation messages are small, so this floor is generous);
  sequential scan = raw streaming bandwidth, the better of the two send sizes.
""")
    if args.notes:
        with open(args.notes) as f:
            w(f.read().rstrip())
            w("")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
