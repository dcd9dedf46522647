#!/usr/bin/env bash
# Compile every CUDA source with nvcc (sm_80 and sm_90 by default; CUDA 13's nvcc still builds both)
# without running anything: CI runs this wherever nvcc exists, since there may be no GPU to test on.
# Uses the flags of the real build: kernel_build.NVCC_FLAGS plus torch's COMMON_NVCC_FLAGS (no implicit
# half/bfloat16 conversions) when torch is importable. ARCHS="90" narrows the architectures.
# Exits non-zero if any file fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
PY="${PYTHON:-$(command -v python3 || command -v python || true)}"
ARCHS="${ARCHS:-80 90}"
TORCH_FLAGS=()
if [ -n "$PY" ] && flags="$("$PY" -c 'from torch.utils.cpp_extension import COMMON_NVCC_FLAGS as f; print(" ".join(f))' 2>/dev/null)"; then
  read -r -a TORCH_FLAGS <<< "$flags"
fi
GENCODE=()
for arch in $ARCHS; do
  GENCODE+=("-gencode=arch=compute_${arch},code=sm_${arch}")
done
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

status=0
for src in csrc/cuda/*.cu; do
  obj="$OUT/$(basename "$src" .cu).o"
  if "$NVCC" -std=c++17 --fmad=false -O3 -DMFP8_WITH_CUDA -I csrc/include ${TORCH_FLAGS[@]+"${TORCH_FLAGS[@]}"} \
      "${GENCODE[@]}" -Xcompiler -Wall -c "$src" -o "$obj"; then
    echo "ok    $src"
  else
    echo "FAIL  $src"
    status=1
  fi
done
exit $status
