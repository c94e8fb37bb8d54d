#!/usr/bin/env bash
# Runs on the GPU machine (device tool): the scaling sweep (configs/scaling-small.toml) and,
# optionally, the Match3 runs, from a bundle folder made here:
#   BUNDLE/bins.tar.xz     the cuda `simplex` binary (scripts/gpu-bundle.sh)
#   BUNDLE/corpus.tar.xz   scripts/prepare-corpus.py --tar (the machine has no network)
#   BUNDLE/sweep-prev.tar  optional: the results of earlier sessions (result.json files),
#                          so that finished runs are skipped
#   BUNDLE/after.sh        optional: more commands after the sweep (the binary is $BIN)
# The eval sets are the repository's evals/ (committed). Usage:
#   bash scripts/gpu-study.sh BUNDLE SWEEP_SECONDS [MATCH3_SECONDS COMPARE_ARGS...]
# Writes $OUT/study.tar (the sweep folder without checkpoints, the Match3 folders, logs).
set -uo pipefail
bundle=$1
seconds=$2
shift 2
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
work=/tmp/study
mkdir -p "$work/bin" "$OUT/logs"
tar -xJf "$bundle/bins.tar.xz" -C "$work/bin"
bin=$(find "$work/bin" -name simplex -type f | head -1)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/logs/gpu.txt"
tar -xJf "$bundle/corpus.tar.xz" -C "$work"
"$bin" prepare --data "$work/corpus" --out data/corpus --doc-sep '' 2>&1 | tee "$OUT/logs/prepare.log"
mkdir -p runs
if [ -f "$bundle/sweep-prev.tar" ]; then tar -xf "$bundle/sweep-prev.tar" -C runs; fi
"$bin" sweep configs/scaling-small.toml --device cuda --out runs/scaling-small \
  --time-limit "$seconds" 2>&1 | tee "$OUT/logs/sweep.log"
if [ -f "$bundle/after.sh" ]; then
  BIN=$bin bash "$bundle/after.sh" 2>&1 | tee "$OUT/logs/after.log"
fi
if [ $# -gt 1 ]; then
  limit=$1
  shift
  timeout "$limit" "$bin" compare --device cuda "$@" 2>&1 | tee "$OUT/logs/match3.log"
fi
tar -cf "$OUT/study.tar" --exclude=checkpoint --exclude=data runs "$OUT/logs" 2>/dev/null
ls -la "$OUT"
