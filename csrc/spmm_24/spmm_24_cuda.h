// GPU 2:4 sparse GEMM (spmm_24_cuda.cu): x fp16 [M][ldx], values fp16 [N][K/2] (as u32 pairs),
// meta u32 [N][K/32], bias fp16 [N] or null, y fp16 [M][N]. K % 32 == 0.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tersor::spmm_24 {

void run_cuda(const void* x, int64_t ldx, const uint32_t* values, const uint32_t* meta,
              const void* bias, void* y, int64_t M, int64_t N, int64_t K, cudaStream_t stream);

}  // namespace tersor::spmm_24
