#!/usr/bin/env bash
# Training throughput of simplex against a PyTorch reference of the same model, on the GPU
# machine, in one go (BENCHMARKS.md, "Training throughput vs PyTorch (H200)").
#
# Here (no GPU needed):
#   SIMPLEX_BUNDLE_DIR=gpu-bundle-train SIMPLEX_GPU_TESTS="cuda_vs_oracle" scripts/gpu-bundle.sh
#   cp scripts/train-bench.sh gpu-bundle-train/train_bench.sh
#   cp scripts/torch_reference.py gpu-bundle-train/
# then with the device tool: carry ["gpu-bundle-train"], command
#   bash gpu-bundle-train/train_bench.sh
#
# There it unpacks the `simplex` binary (built with --features cuda) and runs, logging to $OUT:
#   check.log           torch_reference.py --check (the PyTorch S layer against brute force)
#   torch-DDDSDDDS.log  PyTorch, the 25m preset, batch 32 x 1024, bf16 autocast
#   simplex-DDDSDDDS.log  simplex bench train --preset 25m, the same batch, bf16
#   torch-DDDDDDDD.log, simplex-DDDDDDDD.log   the same with every layer dot-product
#   results.jsonl       one JSON line per training run (tokens/s, peak memory)
#   summary.txt         the side-by-side table (also printed last)
# Each run's log ends with the largest `nvidia-smi memory.used` sampled every 200 ms while it
# ran (the whole device: CUDA context and allocator caches included).
# TRAIN_BENCH_STEPS (timed updates, default 12), TRAIN_BENCH_WARMUP (default 3),
# TRAIN_BENCH_BATCH (default 32), TRAIN_BENCH_SEQ (default 1024), TRAIN_BENCH_PATTERNS (default "DDDSDDDS DDDDDDDD").
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
steps=${TRAIN_BENCH_STEPS:-12}
warm=${TRAIN_BENCH_WARMUP:-3}
batch=${TRAIN_BENCH_BATCH:-32}
seq=${TRAIN_BENCH_SEQ:-1024}
patterns=${TRAIN_BENCH_PATTERNS:-DDDSDDDS DDDDDDDD}
ref=$here/torch_reference.py
[ -f "$ref" ] || ref=$here/../scripts/torch_reference.py
bin=$(mktemp -d)
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
  "$here/bins.tar.xz" "$bin" || exit 1
simplex=$bin/simplex
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
  uname -a
  ldd "$simplex" | grep -E "cuda|cublas|curand|nvrtc|not found"
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

# run NAME TIMEOUT CMD...: log to $OUT/NAME.log with the peak of nvidia-smi's memory.used
run() {
  local name=$1 limit=$2 smi rc
  shift 2
  smi=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$smi" 2>/dev/null &
  local sampler=$!
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  echo "nvidia-smi memory.used peak while running: $(sort -n "$smi" | tail -1) MiB (exit $rc, $((SECONDS - t0)) s)" >>"$out/$name.log"
  rm -f "$smi"
  grep -E "^#|tokens/s|peak memory|check |nvidia-smi|Error|error|panicked|Traceback" "$out/$name.log" | tail -12
  return $rc
}

status=0
run check 120 python3 "$ref" --check || status=1
for p in $patterns; do
  run "torch-$p" 200 python3 "$ref" --pattern "$p" --batch "$batch" --seq "$seq" \
    --steps "$steps" --warmup-steps "$warm" --json "$out/results.jsonl" || status=1
  run "simplex-$p" 200 "$simplex" bench train --device cuda --preset 25m --pattern "$p" \
    --batch "$batch" --seq "$seq" --steps "$steps" --warmup-steps "$warm" \
    --json "$out/results.jsonl" || status=1
done

python3 - "$out/results.jsonl" <<'PY' | tee "$out/summary.txt"
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"
by = {(r["framework"], r["pattern"]): r for r in rows}
print(f"{'pattern':<10} {'framework':<8} {'tokens/s':>10} {'step ms':>8} {'peak alloc GiB':>15} {'peak reserved GiB':>18} {'vs torch':>9}")
for p in dict.fromkeys(r["pattern"] for r in rows):
    t = by.get(("pytorch", p))
    for fw in ("pytorch", "simplex"):
        r = by.get((fw, p))
        if not r:
            continue
        alloc = r.get("peak_allocated_bytes", r.get("peak_used_bytes"))
        res = r.get("peak_reserved_bytes")
        ratio = f"{r['tokens_per_s'] / t['tokens_per_s']:.3f}x" if t else "-"
        print(f"{p:<10} {fw:<8} {r['tokens_per_s']:>10.0f} {r['step_s_median'] * 1e3:>8.1f} {gib(alloc):>15} {gib(res):>18} {ratio:>9}")
PY
echo "== status $status"
exit $status
