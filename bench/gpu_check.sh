#!/usr/bin/env bash
# GPU check, for a session that has a CUDA GPU (H100/H200 class): builds tersor with its CUDA
# extension against the machine's own torch (offline: no dependency is fetched), runs the GPU
# tests, a memory check of the CUDA kernels on small shapes, then times ours against cuBLAS fp16
# and prints one table. Budget: about 5 minutes on one GPU.
#   bash bench/gpu_check.sh            (from the repository root; CPU torch is not enough:
#                                       a CUDA build of torch must be installed)
# Logs go to $OUT when it is set (the device tool's result folder), else /tmp.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-/tmp}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PATH="$PATH:/usr/local/cuda/bin"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')" \
  || exit 1
nvidia-smi -L
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

SECONDS=0
export CMAKE_ARGS="${CMAKE_ARGS:-} -DTERSOR_CUDA=on" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
timeout 300 $PY -m pip install --no-build-isolation --no-deps -v -Cbuild-dir=build/gpu -e . \
  > "$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "== build: ${SECONDS} s; ptxas: $(grep -c 'ptxas info *: Used' "$LOG/build.log") kernels"
$PY -c "import tersor._C_cuda" || { echo "the CUDA extension did not build"; exit 1; }

SECONDS=0
timeout 200 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 \
  | tee "$LOG/tests.log" | tail -30
echo "== tests: ${SECONDS} s"

SECONDS=0
timeout 150 $PY -m tersor.bench.gpu 2>&1 | tee "$LOG/bench.log"
echo "== bench: ${SECONDS} s"

# memcheck of our CUDA kernels (not Triton's) on the small shapes; torch's caching allocator off
# so that an access past one of our buffers lands outside any allocation
SECONDS=0
if command -v compute-sanitizer > /dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool memcheck \
    --error-exitcode 9 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
    -k "not 4096 and not triton" > "$LOG/memcheck.log" 2>&1
  echo "== memcheck: rc $? in ${SECONDS} s"; tail -5 "$LOG/memcheck.log"
fi
