#!/usr/bin/env bash
# Builds, HERE (no GPU needed), everything one device run needs into gpu-bundle/ (ignored by git):
#   gpu-bundle/bins.tar.xz   the `cuda` test executables of simplex-attn and simplex-model
#                            (tests/cuda_*.rs) and the `simplex` binary, built with --features
#                            cuda, stripped, xz-compressed
#                            (each embeds candle's ~40 MB of PTX; compressed they fit the device
#                            tool's 64 MiB)
#   gpu-bundle/run.sh        a copy of scripts/gpu-run.sh, run on the GPU machine: every GPU
#                            test, the timings, then `simplex bench attn --device cuda` if the
#                            binary has it; logs to $OUT
# SIMPLEX_GPU_TESTS="cuda_vs_oracle cuda_timing" bundles only those test targets (default: every
# tests/cuda_*.rs). SIMPLEX_BUNDLE_DIR=gpu-bundle-x writes the bundle to another (ignored) folder,
# so that two people can keep bundles at once.
# Then, with the device tool: carry ["gpu-bundle"], command `bash gpu-bundle/run.sh` (docs/gpu.md).
# Uses target-cuda/ (not target/) so it never invalidates the CPU build; the first build takes
# ~10 minutes on 2 cores (candle's own CUDA kernels), later ones seconds.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A toolchain already in the environment (NVCC set, e.g. a git worktree sourcing the main
# checkout's .toolchain/env.sh) is used as is; otherwise this checkout's is installed.
if [ -z "${NVCC:-}" ] || [ ! -x "$NVCC" ]; then
  scripts/cuda-toolchain.sh >/dev/null
  # shellcheck disable=SC1091
  source .toolchain/env.sh
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
bundle=$root/${SIMPLEX_BUNDLE_DIR:-gpu-bundle}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/tests"

echo "building the cuda test executables of simplex-attn and simplex-model ..."
# poison-outputs: every kernel output is NaN-filled before its kernel runs unless a call says
# otherwise (the fused ops have no per-call switch), so the tests see unwritten elements
cargo test --no-run --release -p simplex-attn -p simplex-model \
  --features simplex-attn/cuda,simplex-attn/poison-outputs,simplex-model/cuda \
  --message-format=json >"$stage/build.json"
python3 - "$stage/build.json" "$stage/tests" "${SIMPLEX_GPU_TESTS:-}" <<'PY'
import json, shutil, sys
only = sys.argv[3].split()
found = 0
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    name = m["target"]["name"]
    if m["profile"].get("test") and name.startswith("cuda_") and (not only or name in only):
        shutil.copy(m["executable"], f"{sys.argv[2]}/{name}")
        found += 1
        print("  test", name)
if not found:
    sys.exit("no cuda_* test executables were built")
PY

echo "building simplex (simplex-cli, --features cuda) ..."
if cargo build --release -p simplex-cli --features cuda; then
  cp "$CARGO_TARGET_DIR/release/simplex" "$stage/simplex"
else
  echo "WARNING: simplex-cli does not build with --features cuda; the bundle has the tests only" >&2
fi

strip "$stage"/tests/*
if [ -f "$stage/simplex" ]; then strip "$stage/simplex"; fi
rm -f "$stage/build.json"
mkdir -p "$bundle"
rm -f "$bundle/bins.tar.xz"
tar -C "$stage" -cf - . | xz -T2 -9 >"$bundle/bins.tar.xz"

cp scripts/gpu-run.sh "$bundle/run.sh"
chmod +x "$bundle/run.sh"
du -sh "$bundle"
size=$(du -sm "$bundle" | cut -f1)
if [ "$size" -gt 56 ]; then
  echo "gpu-bundle/ is $size MiB: over the device tool's budget (64 MiB with the repo)" >&2
  exit 1
fi
b=${SIMPLEX_BUNDLE_DIR:-gpu-bundle}
echo "ready: run with the device tool, carry [\"$b\"], command: bash $b/run.sh"
