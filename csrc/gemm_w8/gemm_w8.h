// W8 weight-only GEMM: fp32 activations, packed int8 weights (common/formats.h) widened to fp32
// in registers, fp32 FMA. Per output, every path accumulates sum_k x[m][k] * float(W[n][k]) in
// the same k order with fused multiply-adds, then y = fma(acc, scale_w[n], bias[n]): all ISA
// paths agree bit for bit with the ref.
#pragma once
#include "common/linear_args.h"

namespace tersor::gemm_w8 {

void run_ref(const PackedW8LinearArgs& a);
void run_avx2(const PackedW8LinearArgs& a);
void run_avx512(const PackedW8LinearArgs& a);
void run(const PackedW8LinearArgs& a);

}  // namespace tersor::gemm_w8
