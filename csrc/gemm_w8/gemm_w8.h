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

// The bf16 dot-product path (CPUs with AVX512-BF16, bf16 activations from a few rows:
// ops/gemm_w8.py), as gemm_w4.h's: x rounded to bf16, the int8 weights exact, products exact,
// added in fp32 as vdpbf16ps adds them (odd k, then even k, each add rounded):
//   acc = sum over pairs of  xb[2i+1] w[2i+1] then xb[2i] w[2i];   y = fma(acc, scale_w, bias)
void run_bf16_ref(const PackedW8LinearArgs& a);
void run_avx512bf16(const PackedW8LinearArgs& a);
void run_bf16(const PackedW8LinearArgs& a);  // avx512bf16 where bf16_dot_available(), else the ref

// The same on AMX-BF16 tiles, for batches of rows (gemm_w8_amx.cpp): the codes exact in bf16,
// the scale in the epilogue as above; the tile unit orders the fp32 additions:
//   acc = sum_k bf16(x[k]) w[k],   y = fma(acc, scale_w, bias)
// run_bf16_tiles: this where amx_bf16_available(), else run_bf16.
void run_amx_bf16(const PackedW8LinearArgs& a);
void run_bf16_tiles(const PackedW8LinearArgs& a);

// fp32 rows on AMX-BF16 tiles (the fp32 form of common/bf16_tiles.h): x = hi + mid + lo in bf16
// exactly, the codes exact, every product exact in fp32, the additions in fp32 in the tile
// unit's order (not the register kernels' FMA chain: equal to the fp32 rules above up to the
// order of the additions, as torch's own fp32 GEMM is; tests hold it to the fp64 sum):
//   acc = sum_k (hi[k] w[k] + mid[k] w[k] + lo[k] w[k]),   y = fma(acc, scale_w, bias)
// run_fp32_tiles: this where amx_bf16_available(), else run (bit for bit the fp32 rules).
void run_amx_fp32(const PackedW8LinearArgs& a);
void run_fp32_tiles(const PackedW8LinearArgs& a);

}  // namespace tersor::gemm_w8
