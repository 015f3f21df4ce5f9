// W4 GEMM: fp32 activations x int4 group-wise weights (common/formats.h, W4Tile) dequantized in
// registers. Every path computes, per output, in k order with fused multiply-adds:
//     w   = fma(float(q), s, -z * s)        == (q - z) * s exactly (small integer x fp16 scale)
//     acc = fma(x[k], w, acc)
//     y   = acc + bias
// i.e. exact fp32 math on the exactly dequantized weights; all ISA paths agree bit for bit.
#pragma once
#include "common/linear_args.h"

namespace tersor::gemm_w4 {

constexpr int64_t kChunk = 32;

void run_ref(const PackedW4LinearArgs& a);
void run_avx2(const PackedW4LinearArgs& a);
void run_avx512(const PackedW4LinearArgs& a);
void run(const PackedW4LinearArgs& a);

}  // namespace tersor::gemm_w4
