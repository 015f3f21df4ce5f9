// GPU W4 GEMM (gemm_w4_cuda.cu): x fp16 [M][ldx], wq shuffled int4 words, scale / zf (1024 + z)
// fp16 [K/G][np], y fp32 [M][N] (zeroed by the caller when split_k > 1).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tersor::gemm_w4 {

void run_cuda(const void* x, int64_t ldx, const uint32_t* wq, const void* scale, const void* zf,
              int64_t np, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
              int64_t G, int split_k, cudaStream_t stream);

}  // namespace tersor::gemm_w4
