#!/usr/bin/env bash
# Training throughput of simplex against PyTorch (eager and torch.compile) on the same model,
# on the GPU machine, in one go (BENCHMARKS.md, "Training throughput vs PyTorch").
#
# Here (no GPU needed):
#   SIMPLEX_BUNDLE_DIR=gpu-bundle-train SIMPLEX_GPU_TESTS="cuda_fused" scripts/gpu-bundle.sh
#   cp scripts/train-bench.sh scripts/torch_reference.py gpu-bundle-train/
#   optional, for a before/after comparison in the same run: a `simplex` binary of another
#   commit (built with --features cuda, stripped) as gpu-bundle-train/base/simplex, xz-packed:
#   tar -C DIR -cJf gpu-bundle-train/base.tar.xz simplex
# then with the device tool: carry ["gpu-bundle-train"], command
#   bash gpu-bundle-train/train-bench.sh
#
# There it unpacks the binaries and runs, logging to $OUT:
#   torch-P.log, torch-compile-P.log   scripts/torch_reference.py (eager; --compile)
#   simplex-P.log, simplex-base-P.log  simplex bench train (this build; the base build)
#   results.jsonl       one JSON line per run (tokens/s per-update median and back to back,
#                       peak memory), summary.txt the side-by-side table (printed last)
#   curve-new.jsonl, curve-base.jsonl  (TRAIN_BENCH_CURVE=1) metrics.jsonl of a 300-step `25m`
#                       run on the demo corpus by each build: the same-learning check
#                       (TRAIN_BENCH_CURVE_LR: its peak learning rate, default 4e-3)
#   profile-P.txt       (TRAIN_BENCH_PROFILE=P, with scripts/kernel-trace-build.sh's files in
#                       the bundle) each update's busy and idle device time and the kernels by
#                       time, from a CUPTI trace of a real run (trace-P.tsv)
# for P in TRAIN_BENCH_PATTERNS (default "DDDDDDDD DDDSDDDS"). Each log ends with the largest
# `nvidia-smi memory.used` sampled every 200 ms while it ran (the whole device).
# TRAIN_BENCH_STEPS (timed updates, default 12), TRAIN_BENCH_WARMUP (3), TRAIN_BENCH_BATCH (32),
# TRAIN_BENCH_SEQ (1024), TRAIN_BENCH_FRAMEWORKS (default "torch torch-compile simplex
# simplex-base"; those whose binary is missing are skipped).
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
patterns=${TRAIN_BENCH_PATTERNS:-DDDDDDDD DDDSDDDS}
frameworks=${TRAIN_BENCH_FRAMEWORKS:-torch torch-compile simplex simplex-base}
ref=$here/torch_reference.py
[ -f "$ref" ] || ref=$here/../scripts/torch_reference.py
bin=$(mktemp -d)
untar() { python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' "$1" "$2"; }
untar "$here/bins.tar.xz" "$bin" || exit 1
simplex=$bin/simplex
base=""
if [ -f "$here/base.tar.xz" ]; then
  mkdir -p "$bin/base" && untar "$here/base.tar.xz" "$bin/base" && base=$bin/base/simplex
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
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
  grep -E "^#|tokens/s|back to back|peak memory|nvidia-smi|Error|error|panicked|Traceback" "$out/$name.log" | tail -8
  return $rc
}

status=0
for p in $patterns; do
  for fw in $frameworks; do
    common=(--batch "$batch" --seq "$seq" --steps "$steps" --warmup-steps "$warm" --json "$out/results.jsonl")
    case $fw in
      torch) run "torch-$p" 200 python3 "$ref" --pattern "$p" "${common[@]}" || status=1 ;;
      torch-compile) run "torch-compile-$p" 400 python3 "$ref" --compile --pattern "$p" "${common[@]}" || status=1 ;;
      simplex) run "simplex-$p" 200 "$simplex" bench train --device cuda --preset 25m --pattern "$p" "${common[@]}" || status=1 ;;
      simplex-base)
        [ -n "$base" ] || continue
        # the base build writes framework "simplex": mark its lines
        run "simplex-base-$p" 200 "$base" bench train --device cuda --preset 25m --pattern "$p" \
          --batch "$batch" --seq "$seq" --steps "$steps" --warmup-steps "$warm" --json "$out/base.jsonl" || status=1
        python3 - "$out/base.jsonl" "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "a") as f:
    for r in rows[-1:]:
        r["framework"] = "simplex-base"
        f.write(json.dumps(r) + "\n")
PY
        ;;
    esac
  done
done

if [ "${TRAIN_BENCH_CURVE:-0}" = 1 ]; then
  corpus=$here/corpus
  [ -d "$corpus" ] || corpus=$here/../crates/simplex-train/corpus
  for b in new base; do
    exe=$simplex
    [ $b = base ] && exe=$base
    [ -n "$exe" ] || continue
    rd=$(mktemp -d)/run
    run "curve-$b" 300 "$exe" train --data "$corpus" --out "$rd" --preset 25m --device cuda \
      --steps 300 --batch-size 16 --seq-len 512 --log-every 10 --eval-every 100 --seed 1 \
      --lr "${TRAIN_BENCH_CURVE_LR:-4e-3}" || status=1
    cp "$rd/metrics.jsonl" "$out/curve-$b.jsonl" 2>/dev/null
  done
fi

if [ -n "${TRAIN_BENCH_PROFILE:-}" ]; then
  # the device timeline of every update (scripts/kernel_trace.c; the bundle needs
  # scripts/kernel-trace-build.sh's files): busy and idle time per update, kernels by time
  if [ -f "$here/kernel_trace.so" ]; then
    for p in $TRAIN_BENCH_PROFILE; do
      LD_LIBRARY_PATH=$here:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$here/kernel_trace.so \
        KERNEL_TRACE_OUT=$out/trace-$p.tsv timeout 200 "$simplex" bench train --device cuda --preset 25m \
        --pattern "$p" --steps "$steps" --warmup-steps "$warm" --batch "$batch" --seq "$seq" \
        >"$out/trace-$p.log" 2>&1 || status=1
      python3 "$here/kernel_gaps.py" "$out/trace-$p.tsv" --top 40 | tee "$out/profile-$p.txt"
    done
  else
    echo "TRAIN_BENCH_PROFILE: no kernel_trace.so in the bundle (scripts/kernel-trace-build.sh)"
  fi
fi

python3 - "$out/results.jsonl" <<'PY' | tee "$out/summary.txt"
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"
by = {(r["framework"], r["pattern"]): r for r in rows}
print(f"{'pattern':<10} {'framework':<16} {'tokens/s':>10} {'step ms':>8} {'b2b tokens/s':>13} {'peak alloc GiB':>15} {'peak reserved GiB':>18} {'vs eager':>9}")
for p in dict.fromkeys(r["pattern"] for r in rows):
    t = by.get(("pytorch", p))
    for fw in ("pytorch", "pytorch-compile", "simplex-base", "simplex"):
        r = by.get((fw, p))
        if not r:
            continue
        alloc = r.get("peak_allocated_bytes", r.get("peak_used_bytes"))
        b2b = r.get("tokens_per_s_back_to_back")
        ratio = f"{r['tokens_per_s'] / t['tokens_per_s']:.3f}x" if t else "-"
        print(f"{p:<10} {fw:<16} {r['tokens_per_s']:>10.0f} {r['step_s_median'] * 1e3:>8.1f} {b2b or 0:>13.0f} {gib(alloc):>15} {gib(r.get('peak_reserved_bytes')):>18} {ratio:>9}")
PY
echo "== status $status"
exit $status
