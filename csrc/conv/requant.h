// The requantization epilogue of the static int8 pipeline (tersor.static_int8): a convolution's
// fp32 results become the next layer's s8 codes at a fixed, calibrated scale, with the residual
// add and the activation fused. fold_output_scale first moves the output scale into the
// kernel's own per-column factors, so the kernels' usual fp32 epilogue (with an input scale of
// 1) already gives the value in output codes, one fma per value:
//
//   m[n] = (xs_scale * w_scale[n]) * inv_out      c[n] = bias[n] * inv_out      (fp32)
//   y = fma(float(acc), m[n], c[n])                                 (the kernels' epilogue)
//   v = res ? fma(float(res[m][n]), res_scale * inv_out, y) : y     (a skip connection)
//   t = v * inv_scale (1 after folding);  t = isnan(t) ? 0 : t
//   q[m][n] = nearbyint(min(max(t, lo), hi))                          (half to even)
//
// lo / hi are whole codes: [-127, 127] plain, [0, 127] after a ReLU (7-bit unsigned codes, the
// AVX2 vpmaddubsw no-overflow bound, torch.ao's reduce_range for the same reason), [0, 6 / s]
// after a ReLU6. Clamping before rounding equals clamping after (integer bounds), and keeps
// +-Inf and huge values away from the float -> int32 conversion. Every path is bit-identical.
#pragma once
#include <cstdint>

#include "common/parallel.h"

namespace tersor::conv {

struct Requant {
  int8_t* q;  // [M][ldq] codes
  int64_t ldq;
  float inv_scale;  // 1 / output scale
  float lo, hi;     // whole codes in [-127, 127]
  const int8_t* res = nullptr;  // [M][ldres] residual codes, or none
  int64_t ldres = 0;
  float res_scale = 0.0f;
  // set by fold_output_scale when inv_scale is 1 and every factor is finite: no t is NaN, so a
  // kernel may write codes from its accumulators without the NaN test (conv_w8a8_avx2.cpp)
  bool folded_finite = false;
};

// Rows [m0, m1) of N columns: y points at row m0 (row stride ldy); writes q / reads res at
// rows m0.. of their own arrays.
void requant_rows_ref(const Requant& r, const float* y, int64_t ldy, int64_t m0, int64_t m1,
                      int64_t N);
void requant_rows_avx2(const Requant& r, const float* y, int64_t ldy, int64_t m0, int64_t m1,
                       int64_t N);
// All M rows of a contiguous [M][N] y, threads over rows, per-call ISA dispatch.
void requant_all(const Requant& r, const float* y, int64_t M, int64_t N, int nthreads);

// n fp32 values -> s8 codes at a fixed scale (the pipeline's entry, tersor.static_int8's
// Quantize): as rows of 4096 (threads split rows; a tensor's own last dim may be 3 long) and
// a tail.
inline void quantize_codes(const float* x, int64_t n, float inv_scale, float lo, float hi,
                           int8_t* q, int nthreads) {
  constexpr int64_t kRow = 4096;
  const int64_t done = n / kRow * kRow;
  requant_all(Requant{q, kRow, inv_scale, lo, hi}, x, n / kRow, kRow, nthreads);
  requant_all(Requant{q + done, kRow, inv_scale, lo, hi}, x + done, n > done ? 1 : 0, n - done,
              1);
}

// The factors above for a layer of N columns (arrays padded to Np, zero past N: the kernels
// load whole column blocks) and the requantization that follows them.
struct FoldedScales {
  Scratch<float> m, c;
  Requant out;
};
FoldedScales fold_output_scale(const float* w_scale, const float* bias, int64_t N, int64_t Np,
                               float xs_scale, const Requant& out);

}  // namespace tersor::conv
