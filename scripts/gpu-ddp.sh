#!/usr/bin/env bash
# The multi-GPU check and benchmark of `simplex train --gpus N` (issue 17, docs/multi-gpu.md).
#
# Here (no GPU needed):
#   scripts/gpu-ddp.sh bundle
# builds `simplex` with --features cuda,nccl and the test executable of
# crates/simplex-train/tests/cuda_nccl.rs, strips and xz-packs them into
# gpu-bundle-ddp/bins.tar.xz beside a copy of this script (gpu-bundle-ddp/run.sh). A toolchain
# already in the environment (NVCC set) is used as is, else this checkout's is installed;
# CARGO_TARGET_DIR defaults to target-cuda/. SIMPLEX_BUNDLE_DIR=DIR writes the bundle elsewhere.
#
# Then with the device tool, on a machine with 2 or more GPUs (kind nvidia-h100-x2 or larger):
#   carry ["gpu-bundle-ddp"], command `bash gpu-bundle-ddp/run.sh`, timeout 600
# (`DDP_SECTIONS="bench" bash gpu-bundle-ddp/run.sh` for one section). Sections, logs in $OUT:
#   test    cuda_nccl: NCCL sums, maxima, views, broadcasts and the gradient buckets, 2 GPUs
#   curves  the same global batch on 1 and 2 GPUs: preset 25m, 100 steps, lr 1e-3, seed 1,
#           16 sequences of 512 per update (1 GPU: batch 8 x grad_accum 2; 2 GPUs: batch 8
#           each) -> curves.txt, PASS when every train loss of steps <= 50 agrees within 2%
#           and the final held-out loss within 5%
#   kill    a rank SIGKILLed mid-run: the launcher must name it and end the job within 60 s;
#           the run then resumes on 1 GPU (grad_accum doubles by itself); ranks started by
#           hand (RANK/WORLD_SIZE, --ddp-timeout 60): rank 0 must end within 120 s after its
#           peer dies (NCCL's error or the watchdog)
#   bench   tokens/s of presets 25m and 100m on 1, 2 (4, 8 where present) GPUs, 16 x 1024
#           tokens per GPU per update (weak scaling), 40 updates, the median of the logged
#           intervals after the first -> bench.md (the BENCHMARKS.md table)
# The exit status is 0 when every section that ran passed.
#
# NCCL: $SIMPLEX_NCCL_LIB, else the machine's libnccl.so.2 (ldconfig, /usr/local/cuda), else
# the nvidia-nccl wheel of its Python (PyTorch's). DDP_DEVICE=cpu runs the same sections with
# CPU ranks (no GPU: a check of this script; with DDP_CURVE_PRESET=tiny DDP_BENCH_PRESETS=tiny
# DDP_SEQ=64 DDP_BATCH=4 it takes a minute). DDP_BIN=path/to/simplex skips the bundle.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" = bundle ]; then
  set -e
  root=$(cd "$here/.." && pwd)
  cd "$root"
  if [ -z "${NVCC:-}" ] || [ ! -x "$NVCC" ]; then
    scripts/cuda-toolchain.sh >/dev/null
    # shellcheck disable=SC1091
    source .toolchain/env.sh
  fi
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
  bundle=$root/${SIMPLEX_BUNDLE_DIR:-gpu-bundle-ddp}
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  cargo build --release -p simplex-cli --features cuda,nccl
  cp "$CARGO_TARGET_DIR/release/simplex" "$stage/simplex"
  cargo test --no-run --release -p simplex-train --features nccl --test cuda_nccl \
    --message-format=json >"$stage/build.json"
  exe=$(python3 -c 'import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_nccl":
        print(m["executable"])' "$stage/build.json")
  cp "$exe" "$stage/cuda_nccl"
  rm "$stage/build.json"
  strip "$stage/simplex" "$stage/cuda_nccl"
  mkdir -p "$bundle"
  tar -C "$stage" -cf - . | xz -T2 -9 >"$bundle/bins.tar.xz"
  cp "$here/gpu-ddp.sh" "$bundle/run.sh"
  du -sh "$bundle"
  echo "ready: with the device tool (2+ GPUs), carry [\"$(basename "$bundle")\"], command: bash $(basename "$bundle")/run.sh"
  exit 0
fi

out=${OUT:-$here/out}
mkdir -p "$out"
work=$(mktemp -d)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export RUST_BACKTRACE=0
dev=${DDP_DEVICE:-cuda}
sections=${DDP_SECTIONS:-test curves kill bench}
seq=${DDP_SEQ:-1024}
batch=${DDP_BATCH:-16}
repo=$(cd "$here/.." && pwd)
corpus=${DDP_DATA:-$repo/crates/simplex-train/corpus}
if [ -n "${DDP_BIN:-}" ]; then
  simplex=$DDP_BIN
  nccl_test=${DDP_NCCL_TEST:-}
else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
    "$here/bins.tar.xz" "$work" || exit 1
  simplex=$work/simplex
  nccl_test=$work/cuda_nccl
fi

if [ "$dev" = cuda ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  if [ -z "${SIMPLEX_NCCL_LIB:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl.so.2 ' &&
    [ ! -e /usr/local/cuda/lib64/libnccl.so.2 ]; then
    lib=$(python3 -c 'import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for d in dirs for p in glob.glob(os.path.join(d, "nvidia", "nccl", "lib", "libnccl.so.2"))]
print(hits[0] if hits else "")' 2>/dev/null)
    [ -n "$lib" ] && export SIMPLEX_NCCL_LIB=$lib
  fi
else
  gpus=${DDP_CPU_RANKS:-2}
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  echo "devices: $gpus ($dev); NCCL: ${SIMPLEX_NCCL_LIB:-libnccl.so.2 from the system}"
  ldd "$simplex" | grep -E "cuda|cublas|nccl|not found"
} >"$out/device.txt" 2>&1
cat "$out/device.txt"
status=0
verdict() { # verdict NAME OK(0/1) WHY
  if [ "$2" = 0 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; status=1; fi | tee -a "$out/summary.txt"
}
wait_ckpt() { # wait_ckpt DIR SECONDS: the checkpoint's step, or empty
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if [ -f "$1/checkpoint/state.json" ]; then
      python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$1/checkpoint/state.json"
      return
    fi
    sleep 0.1
  done
}
child_with_rank() { # child_with_rank PARENT RANK
  local p
  for p in $(ps -o pid= --ppid "$1"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$2"; then echo "$p"; fi
  done
}
rank_pid() { # rank_pid RANK RUN_DIR: a rank started by hand
  local p
  for p in $(pgrep -f -- "--out $2"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$1"; then echo "$p"; fi
  done
}

if [[ " $sections " == *" test "* ]]; then
  echo "== test: cuda_nccl"
  if [ "$dev" != cuda ] || [ -z "$nccl_test" ]; then
    echo "(skipped: no GPUs or no test executable)"
  else
    SIMPLEX_REQUIRE_CUDA=1 timeout 300 "$nccl_test" --nocapture >"$out/cuda_nccl.log" 2>&1
    verdict test $? "$(grep -E 'test result|NCCL' "$out/cuda_nccl.log" | tr '\n' ' ')"
  fi
fi

if [[ " $sections " == *" curves "* ]]; then
  echo "== curves: the same global batch on 1 and 2 ranks"
  preset=${DDP_CURVE_PRESET:-25m}
  common=(--data "$corpus" --preset "$preset" --steps "${DDP_CURVE_STEPS:-100}" --seq-len "${DDP_CURVE_SEQ:-512}"
    --lr 1e-3 --seed 1 --log-every 5 --eval-every 50 --ckpt-every 0 --warmup 10)
  half=$((${DDP_CURVE_BATCH:-16} / 2))
  timeout 400 "$simplex" train --device "$dev" "${common[@]}" --out "$work/c1" \
    --batch-size "$half" --grad-accum 2 >"$out/curve-1.log" 2>&1
  r1=$?
  timeout 400 "$simplex" train --gpus 2 --device "$dev" "${common[@]}" --out "$work/c2" \
    --batch-size "$half" >"$out/curve-2.log" 2>&1
  r2=$?
  cp "$work/c1/metrics.jsonl" "$out/curve-1.jsonl" 2>/dev/null
  cp "$work/c2/metrics.jsonl" "$out/curve-2.jsonl" 2>/dev/null
  python3 - "$work/c1/metrics.jsonl" "$work/c2/metrics.jsonl" >"$out/curves.txt" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
worst, ok = 0.0, True
print("step  loss_1  loss_2  rel_diff  grad_norm_1  grad_norm_2  tok/s_1  tok/s_2")
for x, y in zip(a, b):
    d = abs(x["train_loss"] - y["train_loss"]) / x["train_loss"]
    if x["step"] <= 50:
        worst = max(worst, d)
    print(f'{x["step"]:4d}  {x["train_loss"]:.4f}  {y["train_loss"]:.4f}  {d:8.2e}  {x["grad_norm"]:.4f}  {y["grad_norm"]:.4f}  {x["tokens_per_s"]:.0f}  {y["tokens_per_s"]:.0f}')
va = [r["val_loss"] for r in a if "val_loss" in r]
vb = [r["val_loss"] for r in b if "val_loss" in r]
vd = abs(va[-1] - vb[-1]) / va[-1] if va and vb else 1.0
ok = len(a) == len(b) and len(a) > 0 and worst <= 0.02 and vd <= 0.05
print(f"worst relative train-loss difference (steps <= 50): {worst:.2e}; final val_loss {va[-1] if va else None} vs {vb[-1] if vb else None} ({vd:.2e})")
sys.exit(0 if ok else 1)
PY
  rc=$?
  tail -1 "$out/curves.txt"
  [ "$r1$r2" = 00 ] || rc=1
  verdict curves "$rc" "1 rank: status $r1, 2 ranks: status $r2; $(tail -1 "$out/curves.txt")"
fi

if [[ " $sections " == *" kill "* ]]; then
  echo "== kill: a rank killed mid-run"
  k=$work/kill
  args=(--data "$corpus" --preset "${DDP_CURVE_PRESET:-25m}" --steps 100000 --seq-len "${DDP_CURVE_SEQ:-512}"
    --batch-size 8 --ckpt-every 20 --log-every 10 --eval-every 0 --out "$k")
  "$simplex" train --gpus 2 --device "$dev" "${args[@]}" >"$out/kill-launcher.log" 2>&1 &
  launcher=$!
  saved=$(wait_ckpt "$k" 300)
  victim=$(child_with_rank "$launcher" 1)
  if [ -z "$saved" ] || [ -z "$victim" ]; then
    verdict kill 1 "no checkpoint or no rank 1 (see kill-launcher.log)"
    kill "$launcher" 2>/dev/null
  else
    kill -9 "$victim"
    t0=$(date +%s)
    wait "$launcher"
    rc=$?
    dt=$(($(date +%s) - t0))
    grep -q "rank 1 (pid $victim) was killed by signal 9" "$out/kill-launcher.log" && named=0 || named=1
    [ "$rc" != 0 ] && [ "$named" = 0 ] && [ "$dt" -le 60 ] && ok=0 || ok=1
    verdict kill-launcher "$ok" "launcher status $rc after ${dt}s: $(grep -m1 '^error' "$out/kill-launcher.log")"
    saved=$(wait_ckpt "$k" 1)
    until=$((saved + 10))
    "$simplex" train --device "$dev" --out "$k" --resume --until "$until" >"$out/kill-resume.log" 2>&1
    rc=$?
    last=$(tail -1 "$k/metrics.jsonl" | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["step"])')
    [ "$rc" = 0 ] && [ "$last" = "$until" ] && ok=0 || ok=1
    verdict kill-resume "$ok" "resumed at step $saved on 1 rank, reached step $last (status $rc); $(grep -m1 'grad_accum' "$k/train.toml")"
  fi
  # ranks started by hand: rank 0 must notice that rank 1 died
  h=$work/by-hand
  args=(--data "$corpus" --preset "${DDP_CURVE_PRESET:-25m}" --steps 100000 --seq-len "${DDP_CURVE_SEQ:-512}"
    --batch-size 8 --ckpt-every 20 --log-every 10 --eval-every 0 --ddp-timeout 60 --device "$dev" --out "$h")
  port=$((20000 + RANDOM % 20000))
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_PORT=$port "$simplex" train "${args[@]}" >"$out/kill-rank$r.log" 2>&1 &
  done
  saved=$(wait_ckpt "$h" 300)
  r0=$(rank_pid 0 "$h")
  r1=$(rank_pid 1 "$h")
  if [ -z "$saved" ] || [ -z "$r0" ] || [ -z "$r1" ]; then
    verdict kill-by-hand 1 "no checkpoint or ranks not found (see kill-rank0.log)"
  else
    kill -9 "$r1"
    t0=$(date +%s)
    while kill -0 "$r0" 2>/dev/null && [ $(($(date +%s) - t0)) -lt 120 ]; do sleep 0.5; done
    dt=$(($(date +%s) - t0))
    if kill -0 "$r0" 2>/dev/null; then
      kill -9 "$r0"
      verdict kill-by-hand 1 "rank 0 still running 120 s after rank 1 died"
    else
      verdict kill-by-hand 0 "rank 0 ended ${dt}s after rank 1 died: $(grep -m1 'error' "$out/kill-rank0.log")"
    fi
  fi
fi

if [[ " $sections " == *" bench "* ]]; then
  echo "== bench: tokens/s on 1, 2, 4, 8 ranks"
  echo "| preset | GPUs | tokens/s | per GPU | vs 1 GPU |" >"$out/bench.md"
  echo "| --- | --- | --- | --- | --- |" >>"$out/bench.md"
  for preset in ${DDP_BENCH_PRESETS:-25m 100m}; do
    base=""
    for n in 1 2 4 8; do
      [ "$n" -le "$gpus" ] || continue
      d=$work/bench-$preset-$n
      if [ "$n" = 1 ]; then mode=(--device "$dev"); else mode=(--gpus "$n" --device "$dev"); fi
      timeout 300 "$simplex" train "${mode[@]}" \
        --data "$corpus" --preset "$preset" --steps "${DDP_BENCH_STEPS:-40}" --seq-len "$seq" --batch-size "$batch" \
        --warmup 4 --log-every 10 --eval-every 0 --ckpt-every 0 --out "$d" >"$out/bench-$preset-$n.log" 2>&1
      tps=$(python3 -c 'import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(round(statistics.median(r["tokens_per_s"] for r in rows[1:] or rows)))' "$d/metrics.jsonl" 2>/dev/null)
      if [ -z "$tps" ]; then
        verdict "bench-$preset-$n" 1 "no metrics (see bench-$preset-$n.log)"
        continue
      fi
      [ -n "$base" ] || base=$tps
      python3 -c 'import sys; p, n, t, b = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"| {p} | {n} | {t:,.0f} | {t / n:,.0f} | {t / b:.2f}x |")' "$preset" "$n" "$tps" "$base" >>"$out/bench.md"
    done
  done
  cat "$out/bench.md"
fi
rm -rf "$work"
echo "== status $status (0: every section that ran passed)"
exit $status
