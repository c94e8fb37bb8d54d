#!/usr/bin/env bash
# Builds scripts/kernel_trace.c (a CUPTI injection library: every kernel's device start and end
# in a real run) into a bundle folder, with the libcupti it needs and scripts/kernel_gaps.py:
#   scripts/kernel-trace-build.sh gpu-bundle-train
# The CUPTI 13.0 wheel is downloaded once into .toolchain/cupti (ignored by git); cuda.h comes
# from the toolchain of scripts/cuda-toolchain.sh. On the GPU machine:
#   LD_LIBRARY_PATH=DIR:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=DIR/kernel_trace.so \
#     KERNEL_TRACE_OUT=trace.tsv PROGRAM ...
#   python3 DIR/kernel_gaps.py trace.tsv
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:?usage: scripts/kernel-trace-build.sh BUNDLE_DIR}
mkdir -p "$dest"
scripts_dir=$root/scripts
cupti=$root/.toolchain/cupti
if [ ! -f "$cupti/nvidia/cu13/lib/libcupti.so.13" ]; then
  mkdir -p "$cupti"
  python3 -m pip download -q --no-deps "nvidia-cuda-cupti==13.0.85" -d "$cupti"
  python3 -c 'import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]).extractall(sys.argv[1])' "$cupti"
fi
"$scripts_dir/cuda-toolchain.sh" >/dev/null
site=$(ls -d "$root"/.toolchain/venv/lib/python3*/site-packages | head -1)
gcc -O2 -Wall -shared -fPIC -o "$dest/kernel_trace.so" "$scripts_dir/kernel_trace.c" \
  -I"$cupti/nvidia/cu13/include" -I"$site/nvidia/cu13/include" \
  -L"$cupti/nvidia/cu13/lib" -l:libcupti.so.13
cp "$cupti/nvidia/cu13/lib/libcupti.so.13" "$scripts_dir/kernel_gaps.py" "$dest/"
echo "kernel trace: $dest/kernel_trace.so, libcupti.so.13, kernel_gaps.py"
