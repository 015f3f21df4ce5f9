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

// int4 -> fp32, *transposed*: out[k][n] = (q[n][k] - z) * s for n < N, k < K (row stride ldo).
// Transposed because a W4Tile yields k = 8t + i of 16 columns per vector: those are 16
// contiguous floats of a W^T row, which a dense GEMM (x @ W^T) consumes directly. Callers
// dequantize a column panel by offsetting w / scale / zero to its first block.
struct W4TArgs {
  const uint8_t* w;        // W4Tile[Np/16][Kp/8]
  const uint16_t* scale;   // fp16 [Np/16][ngroups][16]
  const uint8_t* zero;     // uint8 [Np/16][ngroups][16] or nullptr (z = 8)
  int64_t group_size, ngroups, N, K;
  float* out;              // K x N, row stride ldo
  int64_t ldo;
  int nthreads;
};

void w4t_ref(const W4TArgs& a);
void w4t_avx2(const W4TArgs& a);
void w4t_avx512(const W4TArgs& a);
void w4t(const W4TArgs& a);

void w8_ref(const W8Args& a);
void w8_avx2(const W8Args& a);
void w8_avx512(const W8Args& a);
void w8(const W8Args& a);  // per-call ISA dispatch

}  // namespace tersor::dequant
