// The requantization epilogue of the static int8 pipeline (tersor.static_int8): a convolution's
// fp32 results, already  y = fma(float(acc), sx * sw[n], bias[n]),  become the next layer's s8
// codes at a fixed, calibrated scale, with the residual add and the activation fused:
//
//   v = res ? fma(float(res[m][n]), res_scale, y[m][n]) : y[m][n]   (a skip connection)
//   t = v * inv_scale;  t = isnan(t) ? 0 : t
//   q[m][n] = nearbyint(min(max(t, lo), hi))                          (half to even)
//
// lo / hi are whole codes: [-127, 127] plain, [0, 127] after a ReLU (7-bit unsigned codes, the
// AVX2 vpmaddubsw no-overflow bound, torch.ao's reduce_range for the same reason), [0, 6 / s]
// after a ReLU6. Clamping before rounding equals clamping after (integer bounds), and keeps
// +-Inf and huge values away from the float -> int32 conversion. Every path is bit-identical.
#pragma once
#include <cstdint>

namespace tersor::conv {

struct Requant {
  int8_t* q;  // [M][ldq] codes
  int64_t ldq;
  float inv_scale;  // 1 / output scale
  float lo, hi;     // whole codes in [-127, 127]
  const int8_t* res = nullptr;  // [M][ldres] residual codes, or none
  int64_t ldres = 0;
  float res_scale = 0.0f;
};

// Rows [m0, m1) of N columns: y points at row m0 (row stride ldy); writes q / reads res at
// rows m0.. of their own arrays.
void requant_rows_ref(const Requant& r, const float* y, int64_t ldy, int64_t m0, int64_t m1,
                      int64_t N);
void requant_rows_avx2(const Requant& r, const float* y, int64_t ldy, int64_t m0, int64_t m1,
                       int64_t N);
// All M rows of a contiguous [M][N] y, threads over rows, per-call ISA dispatch.
void requant_all(const Requant& r, const float* y, int64_t M, int64_t N, int nthreads);

}  // namespace tersor::conv
