// Whole-weight dequantize: packed int8 (common/formats.h) -> row-major fp32 W[N][K],
// W[n][k] = float(q[n][k]) * scale[n]. Used by QLinear.to_float(), tests, and any large-M
// path that measures faster as dequantize + dense GEMM.
#pragma once
#include <cstdint>

namespace tersor::dequant {

struct W8Args {
  const int8_t* w;       // W8Tile[Np/16][Kp/4]
  const float* w_scale;  // [Np]
  int64_t N, K;
  float* out;            // N x K, row stride K
  int nthreads;
};

void w8_ref(const W8Args& a);
void w8_avx2(const W8Args& a);
void w8_avx512(const W8Args& a);
void w8(const W8Args& a);  // per-call ISA dispatch

}  // namespace tersor::dequant
