#!/usr/bin/env bash
# GPU check, for a session that has a CUDA GPU (H100/H200 class): builds tersor with its CUDA
# extension, runs the GPU tests, then times ours against torch.matmul fp16 (cuBLAS) and prints
# one table. Budget: under 8 minutes on one GPU.
#   bash bench/gpu_check.sh            (from the repository root; CPU torch is not enough:
#                                       a CUDA build of torch must be installed)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
export CMAKE_ARGS="${CMAKE_ARGS:-} -DTERSOR_CUDA=on"
pip install --no-build-isolation -q -e ".[test]" 2>&1 | tail -3
python -c "import tersor._C_cuda" || { echo "the CUDA extension did not build"; exit 1; }
timeout 240 python -m pytest -q -m cuda tests/test_cuda.py
timeout 300 python -m tersor.bench.gpu
