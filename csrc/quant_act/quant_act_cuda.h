// GPU per-row activation quantization (quant_act_cuda.cu); rules of quant_act.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tersor::quant_act {

// x [M][ldx] fp32 (half = false) or fp16 -> q [M][ldq] s8 codes, scales [M].
void quantize_rows_cuda(const void* x, bool half, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        int64_t ldq, float* scales, cudaStream_t stream);

}  // namespace tersor::quant_act
