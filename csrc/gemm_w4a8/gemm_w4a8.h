// W4A8 GEMM: int4 group-wise weights (common/formats.h, W4Tile) x dynamic per-row int8
// activations (quant_act.h), fp32 out.
//
// Per row m, column n and group g (exact int32):
//     acc_g = sum_{k in g} q[n][k] * xq[m][k]          (codes q in [0, 15], unsigned)
//     t_g   = acc_g - z[n][g] * S[m][g]                 S = sum_{k in g} xq[m][k]
// and in fp32, for every ISA path in the same order:
//     a = 0;  for g: a = fma(float(t_g), scale[n][g], a)
//     y = fma(a, scale_x[m], bias[n])
// The unsigned codes are the *unsigned* operand of vpdpbusd and the activations its signed
// one, so neither side needs an offset; the zero point costs one multiply per group.
#pragma once
#include "common/linear_args.h"

namespace tersor::gemm_w4a8 {

void run_ref(const PackedW4LinearArgs& a);
void run_avx2(const PackedW4LinearArgs& a);
void run_avx512(const PackedW4LinearArgs& a);
void run_amx(const PackedW4LinearArgs& a);  // AMX-INT8 tiles from kAmxMinRows rows, else avx512
void run(const PackedW4LinearArgs& a);

constexpr int64_t kAmxMinRows = 8;  // measured (4096x4096, g32): VNNI wins at 4 rows, AMX at 8

}  // namespace tersor::gemm_w4a8
