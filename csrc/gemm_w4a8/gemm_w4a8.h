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

// AMX from 16 rows: below, expanding the codes to s8 tiles costs more than the VNNI tile's
// FMAs. Xeon family 6 model 167, 2 threads, AMX time / VNNI time at 8 / 12 / 16 / 24 rows
// (2048x2048, 4096x4096, 8192x2048): g32 1.37-1.57 / 0.93-1.13 / 0.81-0.92 / 0.79-0.90, g128
// 1.51-1.55 / 0.91-1.25 / 0.72-1.05 / 0.60-0.88 (8 rows, measured elsewhere earlier, is gone).
constexpr int64_t kAmxMinRows = 16;

}  // namespace tersor::gemm_w4a8
