// Arguments of a y = x W^T + b kernel over a packed int8 weight (common/formats.h, W8Tile).
// Plain pointers, sizes and strides: the native core never sees a torch tensor.
#pragma once
#include <cstdint>

#include "half_io/half_io.h"

namespace tersor {

struct PackedW8LinearArgs {
  const float* x;         // M x K activations, row stride ldx (elements), unit column stride
  int64_t M, K, ldx;
  const int8_t* w;        // W8Tile[Np/16][Kp/4]
  const int32_t* colsum;  // [Np] sum_k W[n][k] (used by the VNNI +128 offset trick)
  const float* w_scale;   // [Np] per-output-channel scale
  int64_t N;
  const float* bias;      // [N] or nullptr
  float* y;               // M x N output, row stride ldy
  int64_t ldy;
  int nthreads;
  const float* row_amax = nullptr;  // A8 kernels: fp32 [M] floors under the rows' amax, or none
  const float* x_scale = nullptr;   // A8 kernels: fp32 [K] input scale (quant_act::a8_row)
  // A8 kernels: 0, or half_io::BF16 / F16 when x holds half rows (the pointer's type aside),
  // widened one row at a time by x_widen as the quantizer reads it (quant_act::a8_row)
  int x_io = 0;
  half_io::RowsFn x_widen = nullptr;
  // A8 kernels on the AVX-512 / AMX paths (half_io::a8_writes_half_rows()): BF16 / F16 when y is
  // half rows (the pointer's type aside), rounded in the epilogue (half_io/half_avx512.h)
  int y_io = 0;
  // Every |w| <= 64 (W8A8Config(weight_bits=7)): a speed hint, never a change of result. The
  // AVX2 tile then multiplies the rows as u8 (a + 128) by w, whose vpmaddubsw pair sums cannot
  // saturate (255 * 64 * 2 < 32768), and takes 128 * colsum off (gemm_w8a8/tile_avx2.h).
  bool narrow_w = false;
};

}  // namespace tersor

namespace tersor {

struct PackedW4LinearArgs {
  const float* x;         // M x K activations, row stride ldx, unit column stride
  int64_t M, K, ldx;
  const uint8_t* w;       // W4Tile[Np/16][Kp/8]
  const uint16_t* scale;  // fp16 [Np/16][ngroups][16]
  const uint8_t* zero;    // uint8 [Np/16][ngroups][16], or nullptr: symmetric (z = 8)
  int64_t group_size;     // G, a multiple of 8; Kp = ngroups * G >= K
  int64_t ngroups;
  int64_t N;
  const float* bias;      // [N] or nullptr
  float* y;
  int64_t ldy;
  int nthreads;
  const float* row_amax = nullptr;  // A8 kernels: fp32 [M] floors under the rows' amax, or none
  const float* x_scale = nullptr;   // A8 kernels: fp32 [K] input scale (quant_act::a8_row)
  // A8 kernels: 0, or half_io::BF16 / F16 when x holds half rows (the pointer's type aside),
  // widened one row at a time by x_widen as the quantizer reads it (quant_act::a8_row)
  int x_io = 0;
  half_io::RowsFn x_widen = nullptr;
  // A8 kernels on the AVX-512 / AMX paths (half_io::a8_writes_half_rows()): BF16 / F16 when y is
  // half rows (the pointer's type aside), rounded in the epilogue (half_io/half_avx512.h)
  int y_io = 0;
  // 1, or 2: 16-bit activations as two int8 planes (quant_act.h "Two planes"). gemm_w4a8::run
  // then runs the ISA kernel over 2M plane rows (row p: plane p % 2 of x's row p / 2, as
  // quant_act::a8_grouped_row quantizes it) into a scratch, and adds each row's two outputs.
  int x_planes = 1;
};

}  // namespace tersor
