// Dynamic per-row activation quantization: fp32 row -> int8 codes + one fp32 scale.
//
//   amax  = max_k |x[k]|                  (exact)
//   inv   = 127.0f / amax                 (one fp32 division, same in every ISA path)
//   q[k]  = round_half_even(x[k] * inv)   in [-127, 127]
//   scale = amax / 127.0f
// amax == 0 gives scale 0 and q == 0. A row holding NaN or Inf gives scale NaN and q == 0, so
// the GEMM epilogue turns the whole output row into NaN (NaN propagates, defined and tested).
//
// Codes are written in groups of 4 (one VNNI lane): byte k goes to
//   dst[(k / 4) * group_stride + k % 4]
// so the same routine writes a plain row (group_stride = 4) or one row of an interleaved
// A panel (group_stride = 4 * rows_per_panel). Bytes K..Kp-1 are written as code 0. Every code
// is XORed with `xor_mask` (0x80 turns s8 codes into the u8 "q + 128" that vpdpbusd wants).
#pragma once
#include <cstdint>
#include <functional>

#include "half_io/half_io.h"

namespace tersor::quant_act {

float quantize_row_ref(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                       uint8_t xor_mask, float amax_floor = 0.0f);
float quantize_row_avx2(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                        uint8_t xor_mask, float amax_floor = 0.0f);
float quantize_row_avx512(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                          uint8_t xor_mask, float amax_floor = 0.0f);

using RowQuantizer = float (*)(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                               uint8_t xor_mask, float amax_floor);

// Two planes (16-bit activations through the int8 kernels; gemm_w4a8 with x_planes = 2): a row
// is the sum of a high plane, the codes above with scale s = amax / 127, and a low plane that
// rounds what the high one left, in units of s / 254:
//
//   t = x[k] * inv            (inv, s: as above)
//   h = clamp(round_half_even(t), -127, 127)       the high plane's code
//   l = round_half_even((t - h) * 254.0f)          the low plane's code, in [-127, 127]
//   scale_lo = s / 254.0f
//
// t - h is exact (|t - h| <= 1/2), so x = s * (h + l / 254) within s / 508 (amax / 64516) and
// one fp32 rounding of t: about 16-bit activations, each plane a row of the int8 kernel. Why
// 254 and not 256: (t - h) * 254 stays within 127, so no code needs a clamp. Returns
// scale_lo (0 for a zero row, NaN for a row holding NaN or Inf, whose codes are 0).
float quantize_row_lo_ref(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                          uint8_t xor_mask, float amax_floor = 0.0f);
float quantize_row_lo_avx2(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                           uint8_t xor_mask, float amax_floor = 0.0f);

// Row m of an A8 kernel's activations (Args: common/linear_args.h), as its quantizer reads it:
// the row itself or, when the layer keeps an input scale (AWQ / SmoothQuant), x[m][k] *
// x_scale[k] formed in this thread's row buffer just before the quantizer reads it. One IEEE
// multiply per element on a cache-resident row: the scale costs no pass over x in memory, and
// the codes are bit for bit those of quantizing x * x_scale. The buffer is overwritten by the
// thread's next call.
//
// Half rows (a.x_io BF16 / F16, half_io::run_staged with a8) are widened into the same buffer the
// same way, exactly, then scaled: the codes are those of quantizing the widened rows.
const float* scaled_row(const float* x, const float* s, int64_t K);
const float* widened_row(const void* x, int io, half_io::RowsFn widen, const float* s,
                         int64_t K);
template <typename Args>
inline const float* a8_row(const Args& a, int64_t m) {
  if (a.x_io)
    return widened_row(reinterpret_cast<const uint16_t*>(a.x) + m * a.ldx, a.x_io, a.x_widen,
                       a.x_scale, a.K);
  const float* x = a.x + m * a.ldx;
  return a.x_scale ? scaled_row(x, a.x_scale, a.K) : x;
}

// Row m's floor from a kernel argument row_amax (fp32 [M] or nullptr).
inline float amax_floor(const float* row_amax, int64_t m) { return row_amax ? row_amax[m] : 0.0f; }

// One row of a grouped (int4) GEMM's A panel: `quantize` writes s8 codes interleaved for
// `panel_rows` rows, codes K..Kp-1 are zero (Kp = ngroups * G), and gsum[g] receives the sum of
// the codes of group g (the zero-point term). Returns the row's scale.
float quantize_row_grouped(RowQuantizer quantize, const float* x, int64_t K, int64_t G,
                           int64_t ngroups, uint8_t* dst, int64_t panel_rows, int32_t* gsum,
                           float amax_floor = 0.0f);

// Plane row p of a grouped A8 kernel (PackedW4LinearArgs: x_planes 1 or 2) into its A panel
// (quantize_row_grouped): x's row p, or plane p % 2 of row p / 2 (quantize: the ISA path's
// high-plane quantizer, lo: its low-plane one). Returns the plane row's scale.
template <typename Args>
inline float a8_grouped_row(const Args& a, int64_t p, RowQuantizer quantize, RowQuantizer lo,
                            uint8_t* dst, int64_t panel_rows, int32_t* gsum) {
  const int64_t m = a.x_planes == 2 ? p >> 1 : p;
  return quantize_row_grouped(a.x_planes == 2 && (p & 1) ? lo : quantize, a8_row(a, m), a.K,
                              a.group_size, a.ngroups, dst, panel_rows, gsum,
                              amax_floor(a.row_amax, m));
}

// The same for a kernel that writes plain codes (dst, group_stride, no xor: the AMX A rows).
template <typename Args>
inline float a8_plane_codes(const Args& a, int64_t p, RowQuantizer quantize, RowQuantizer lo,
                            uint8_t* dst, int64_t group_stride) {
  const int64_t m = a.x_planes == 2 ? p >> 1 : p;
  return (a.x_planes == 2 && (p & 1) ? lo : quantize)(a8_row(a, m), a.K, dst, group_stride, 0,
                                                      amax_floor(a.row_amax, m));
}

// AMX A operand: M_pad rows x lda bytes of s8, row m < M written by row_codes(m, row) (K codes,
// zeros up to round_up(K, 4); returns the row's scale), zero beyond that and in the padding rows
// (whose scale is 0). A work-shared loop: call it inside an OpenMP parallel region.
void fill_rows_amx(int64_t M, int64_t K, int64_t M_pad, int64_t lda, int8_t* out,
                   float* scales, const std::function<float(int64_t, uint8_t*)>& row_codes);

// The two halves of the rules for callers that quantize a whole block with one scale (the conv
// family: one scale per image): absmax_* returns max |x| over n floats (*finite = false when one
// is NaN or Inf), quantize_scaled_* writes q = clamp(round_half_even(x * inv), -127, 127) as s8.
float absmax_ref(const float* x, int64_t n, bool* finite);
float absmax_avx2(const float* x, int64_t n, bool* finite);
float absmax_avx512(const float* x, int64_t n, bool* finite);
void quantize_scaled_ref(const float* x, int64_t n, float inv, int8_t* dst);
void quantize_scaled_avx2(const float* x, int64_t n, float inv, int8_t* dst);
void quantize_scaled_avx512(const float* x, int64_t n, float inv, int8_t* dst);

// Plain row-major s8 output for tests / tools: q is M x K (ld = K), scales M.
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t ldx, int8_t* q, float* scales,
                   int nthreads);

}  // namespace tersor::quant_act
