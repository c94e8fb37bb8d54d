#!/usr/bin/env python3
"""Where a training update's device time goes, from a scripts/kernel_trace.c trace.

Splits the trace into updates at a kernel that ends each one (default `flat_write`, the
optimizer's last kernel), and for each update prints its span on the device (first start to
last end), the time some kernel, memcpy or memset was running (the union of their intervals),
the idle rest, and the idle time by gap length. Then, for the median update, the kernels by
total time. The idle time inside the span is what the device waited for the host (or for
launch latency) between the update's operations: the most a CUDA graph of the update could
remove.

    python3 scripts/kernel_gaps.py trace.tsv [--end flat_write] [--skip 1] [--top 15]

With --per-kernel, it prints instead each kernel's launches and device time (median, min, max,
total; us) over the whole trace, for traces that are not training updates (a benchmark's op
calls): `--per-kernel --match dot_` keeps the kernels whose name contains `dot_`.

With --chain A,B,C, it finds every run of consecutive records (kernels, memcpys, memsets) whose
kernels' names contain A, B, C in that order, and prints the run count, the median time of each
kernel, the median idle gap before each kernel after the first, and the median span (the
first start to the last end): how much of an op's calls is spent between its kernels.

    python3 scripts/kernel_gaps.py trace.tsv --chain dot_fwd_bf16,dot_bwd_dq,dot_bwd_dkv
"""
import argparse
import collections
import statistics
import sys

BUCKETS = [(0, 2e3, "<2us"), (2e3, 5e3, "2-5us"), (5e3, 20e3, "5-20us"), (20e3, 100e3, "20-100us"),
           (100e3, float("inf"), ">100us")]


def read(path):
    recs = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 4)
            if len(parts) < 5:
                continue
            kind, start, end, _stream, name = parts
            recs.append((int(start), int(end), kind, name))
    recs.sort()
    return recs


def updates(recs, end_name):
    """Lists of records, each ending with the last of a run of `end_name` kernels."""
    out, cur = [], []
    for i, r in enumerate(recs):
        cur.append(r)
        is_end = r[2] == "K" and end_name in r[3]
        next_is_end = i + 1 < len(recs) and recs[i + 1][2] == "K" and end_name in recs[i + 1][3]
        if is_end and not next_is_end:
            out.append(cur)
            cur = []
    return out


def stats(upd):
    busy, idle = 0, collections.Counter()
    cur_s, cur_e = upd[0][0], upd[0][1]
    for s, e, _, _ in upd[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gap = s - cur_e
            for lo, hi, label in BUCKETS:
                if lo <= gap < hi:
                    idle[label] += gap
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    return cur_e - upd[0][0], busy, idle  # the span: first start to last end


def per_kernel(recs, match, top):
    """Each kernel's launch count and device time over the whole trace, the largest total first."""
    times = collections.defaultdict(list)
    for s, e, kind, name in recs:
        if kind == "K" and match in name:
            times[name[:80]].append(e - s)
    if not times:
        sys.exit(f"no kernel named like {match!r} in the trace")
    print(f"{'launches':>8} {'median us':>10} {'min us':>8} {'max us':>8} {'total ms':>9}  kernel")
    for name, ts in sorted(times.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"{len(ts):8d} {statistics.median(ts) / 1e3:10.1f} {min(ts) / 1e3:8.1f} {max(ts) / 1e3:8.1f} "
              f"{sum(ts) / 1e6:9.3f}  {name}")


def chains(recs, parts):
    """Median kernel times, gaps and span of the runs of consecutive records matching `parts`."""
    n, runs = len(parts), []
    for i in range(len(recs) - n + 1):
        run = recs[i:i + n]
        if all(r[2] == "K" and p in r[3] for r, p in zip(run, parts)):
            runs.append(run)
    if not runs:
        sys.exit(f"no run of consecutive kernels named like {','.join(parts)} in the trace")
    med = lambda xs: statistics.median(xs) / 1e3  # noqa: E731 (ns -> us)
    print(f"{len(runs)} runs of {' -> '.join(parts)}")
    for j, p in enumerate(parts):
        gap = f", gap before it {med([r[j][0] - r[j - 1][1] for r in runs]):.1f} us" if j else ""
        print(f"  {p}: median {med([r[j][1] - r[j][0] for r in runs]):.1f} us{gap}")
    print(f"  span (first start to last end): median {med([r[-1][1] - r[0][0] for r in runs]):.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--end", default="flat_write", help="a name part of the kernel that ends each update")
    ap.add_argument("--skip", type=int, default=1, help="updates to leave out at the start (set-up, warm-up)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--per-kernel", action="store_true", help="per-kernel device times over the whole trace")
    ap.add_argument("--match", default="", help="with --per-kernel: keep kernels whose name contains this")
    ap.add_argument("--chain", help="comma-separated name parts of consecutive kernels: their gaps and span")
    a = ap.parse_args()
    recs = read(a.trace)
    if a.chain:
        chains(recs, a.chain.split(","))
        return
    if a.per_kernel:
        per_kernel(recs, a.match, a.top)
        return
    ups = updates(recs, a.end)[a.skip:]
    if not ups:
        sys.exit(f"{a.trace}: no update ends with a kernel named like {a.end!r}")
    rows = []
    print(f"{'update':>6} {'records':>7} {'span ms':>8} {'busy ms':>8} {'idle ms':>8} {'idle %':>6}  idle by gap length (ms)")
    for i, u in enumerate(ups):
        span, busy, idle = stats(u)
        rows.append((span, busy, u))
        by = " ".join(f"{label} {idle[label] / 1e6:.3f}" for _, _, label in BUCKETS)
        print(f"{i + a.skip:>6} {len(u):>7} {span / 1e6:8.3f} {busy / 1e6:8.3f} {(span - busy) / 1e6:8.3f} "
              f"{100 * (span - busy) / span:6.2f}  {by}")
    spans = [r[0] for r in rows]
    med = sorted(rows, key=lambda r: r[0])[len(rows) // 2]
    print(f"median span {statistics.median(spans) / 1e6:.3f} ms; median update: busy {med[1] / 1e6:.3f} ms, "
          f"idle {(med[0] - med[1]) / 1e6:.3f} ms ({100 * (med[0] - med[1]) / med[0]:.2f}%)")
    total, count = collections.Counter(), collections.Counter()
    for s, e, kind, name in med[2]:
        key = name if kind == "K" else kind
        total[key[:80]] += e - s
        count[key[:80]] += 1
    print(f"kernels of the median update by total time ({sum(count.values())} records):")
    for k, ns in total.most_common(a.top):
        print(f"{ns / 1e6:8.3f} ms {count[k]:5d}x  {k}")


if __name__ == "__main__":
    main()
