#!/usr/bin/env bash
# Compile every CUDA source with nvcc (sm_80 and sm_90) without running anything: CI runs this wherever
# nvcc exists, since there may be no GPU to test on. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

status=0
for src in csrc/cuda/*.cu; do
  obj="$OUT/$(basename "$src" .cu).o"
  if "$NVCC" -std=c++17 --fmad=false -O3 -DMFP8_WITH_CUDA -I csrc/include \
      -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
      -Xcompiler -Wall -c "$src" -o "$obj"; then
    echo "ok    $src"
  else
    echo "FAIL  $src"
    status=1
  fi
done
exit $status
