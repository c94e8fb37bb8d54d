#!/usr/bin/env bash
# On the GPU machine: the kernel-time breakdown of one simplex training update (ncu, durations
# only; the machine has ncu but not nsys). Run from a bundle folder made like gpu-bundle-train
# (scripts/train-bench.sh says how): carry it and run
#   PROFILE_PATTERN=DDDDDDDD bash gpu-bundle-train/profile-train.sh
# Prints the kernels of the second (timed) update by total time; the raw CSV lands in $OUT.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64
bin=$(mktemp -d)
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
  "$here/bins.tar.xz" "$bin" || exit 1
p=${PROFILE_PATTERN:-DDDDDDDD}
timeout 500 /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --csv --print-units base \
  "$bin/simplex" bench train --device cuda --preset 25m --pattern "$p" --steps 1 --warmup-steps 1 \
  >"$out/ncu-$p.csv" 2>"$out/ncu-$p.err"
python3 - "$out/ncu-$p.csv" <<'PY'
import collections, csv, sys
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
rows = list(csv.reader(lines[start:]))
hdr, rows = rows[0], rows[1:]
name, value = hdr.index("Kernel Name"), hdr.index("Metric Value")
second = rows[len(rows) // 2:]  # warm-up update first, then the timed one (same kernels)
total, count = collections.Counter(), collections.Counter()
for r in second:
    total[r[name][:70]] += float(r[value].replace(",", ""))
    count[r[name][:70]] += 1
print(f"{len(second)} kernels, {sum(total.values()) / 1e6:.1f} ms of GPU time in one update")
for k, ns in total.most_common(30):
    print(f"{ns / 1e6:8.2f} ms {count[k]:6d}x  {k}")
PY
