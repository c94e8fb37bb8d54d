#!/usr/bin/env bash
# On the GPU machine, as gpu-bundle/run.sh (scripts/gpu-bundle.sh copies it there): unpack the
# binaries, run every GPU test, the timings and the benchmark; full logs to $OUT, a summary last.
# Exit status 0 only when every GPU test passed. SIMPLEX_SKIP_BENCH=1 skips the benchmark;
# SIMPLEX_BENCH_ARGS replaces its arguments (e.g. "--only dot --reps 5 --seconds 1").
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
# the machine's CUDA 13.0 libraries (cublas, curand, nvrtc) and driver (libcuda)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SIMPLEX_REQUIRE_CUDA=1 RUST_BACKTRACE=1
bin=$(mktemp -d)
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
  "$here/bins.tar.xz" "$bin" || exit 1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  uname -a
  ldd "$bin/tests/cuda_vs_oracle" | grep -E "cuda|cublas|curand|nvrtc|not found"
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

status=0
for t in "$bin"/tests/cuda_*; do
  name=$(basename "$t")
  [ "$name" = cuda_timing ] && continue
  echo "== $name"
  # the tests pass their kernel choice with each call, so they run in parallel
  timeout 300 "$t" --nocapture >"$out/$name.log" 2>&1 || status=1
  grep -E "^test |test result|FAIL|panicked" "$out/$name.log" | head -60
done
if [ -x "$bin/tests/cuda_timing" ]; then
  echo "== cuda_timing"
  # one thread: the timings run alone
  timeout 200 "$bin/tests/cuda_timing" --ignored --nocapture --test-threads=1 >"$out/timing.log" 2>&1 || status=1
  grep -E "simplicial|test result|panicked|Error" "$out/timing.log"
fi
if [ "${SIMPLEX_SKIP_BENCH:-0}" = 1 ]; then
  echo "== simplex bench attn: skipped (SIMPLEX_SKIP_BENCH=1)"
elif [ -x "$bin/simplex" ] && "$bin/simplex" bench attn --help >/dev/null 2>&1; then
  echo "== simplex bench attn --device cuda"
  # shorter than the default (>= 3 reps, >= 2 s each): SIMPLEX_BENCH_ARGS overrides
  # shellcheck disable=SC2086
  timeout 240 "$bin/simplex" bench attn --device cuda ${SIMPLEX_BENCH_ARGS:---reps 1 --seconds 0} \
    >"$out/bench.log" 2>&1 || status=1
  tail -40 "$out/bench.log"
else
  echo "== simplex bench attn: not in this build of simplex (skipped)"
fi
echo "== status $status (0: every GPU test passed)"
exit $status
