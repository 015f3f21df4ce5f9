// GPU W8A8 GEMM (gemm_w8a8_cuda.cu): a s8 [M][K], b s8 [N][K] (canonical weight), fp32 row /
// column scales, y fp32 or fp16 [M][N]. K % 16 == 0.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tersor::gemm_w8a8 {

void run_cuda(const int8_t* a, const float* sa, const int8_t* b, const float* sb,
              const float* bias, void* y, bool half_out, int64_t M, int64_t N, int64_t K,
              cudaStream_t stream);

}  // namespace tersor::gemm_w8a8
