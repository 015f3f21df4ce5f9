// AVX-512 per-row activation quantization (rules in quant_act.h; bit-exact with the ref).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "common/formats.h"
#include "common/simd.h"
#include "quant_act/quant_act.h"

namespace tersor::quant_act {
namespace {

// max |x| over n floats and whether any is NaN or Inf. Four independent accumulators: a single
// max chain is bound by its 4-cycle latency (measured: the whole quantize pass ran at ~5 GB/s).
struct AbsMax {
  __m512 m[4];
  __mmask16 nan = 0;
  AbsMax() {
    for (auto& v : m) v = _mm512_setzero_ps();
  }
  void add(const float* x, int64_t n) {
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    int64_t k = 0;
    for (; k + 64 <= n; k += 64)
      for (int u = 0; u < 4; ++u) {
        const __m512 v = _mm512_loadu_ps(x + k + 16 * u);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m[u] = _mm512_max_ps(m[u], _mm512_and_ps(v, abs_mask));
      }
    for (; k < n; k += 16) {
      const int64_t left = n - k;
      const __mmask16 mk = tail_mask16(left);
      const __m512 v = _mm512_maskz_loadu_ps(mk, x + k);
      nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      m[0] = _mm512_max_ps(m[0], _mm512_and_ps(v, abs_mask));
    }
  }
  // amax, and false when some value was NaN or +-Inf
  float result(bool* finite) const {
    const float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])));
    *finite = nan == 0 && amax <= 3.402823466e38f;
    return amax;
  }
};

}  // namespace

float quantize_row_avx512(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                          uint8_t xor_mask, float amax_floor) {
  const __m512 zero = _mm512_setzero_ps();
  AbsMax am;
  am.add(x, K);
  bool finite;
  const float amax = std::fmax(am.result(&finite), amax_floor);
  const float inv = (finite && amax > 0.0f) ? 127.0f / amax : 0.0f;

  const int64_t Kp = round_up(K, 4);
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  const __m128i vxor = _mm_set1_epi8(static_cast<char>(xor_mask));
  const __m128i gidx = _mm_setr_epi32(0, 1 * (int)group_stride, 2 * (int)group_stride,
                                      3 * (int)group_stride);
  for (int64_t k = 0; k < Kp; k += 16) {
    const int64_t left = K - k;
    const __mmask16 m =
        left >= 16 ? static_cast<__mmask16>(0xffff)
                   : static_cast<__mmask16>(left > 0 ? (1u << left) - 1 : 0);
    __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    if (!finite) v = zero;
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));  // MXCSR: round half to even
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    const __m128i b = _mm_xor_si128(_mm512_cvtepi32_epi8(q), vxor);
    const int64_t bytes = Kp - k < 16 ? Kp - k : 16;  // multiple of 4
    uint8_t* out = dst + (k / 4) * group_stride;
    if (group_stride == 4) {
      _mm_mask_storeu_epi8(out, static_cast<__mmask16>((1u << bytes) - 1), b);
    } else {
      _mm_mask_i32scatter_epi32(out, static_cast<__mmask8>((1u << (bytes / 4)) - 1), gidx, b, 1);
    }
  }
  if (!finite) return NAN;
  return amax > 0.0f ? amax / 127.0f : 0.0f;
}

float absmax_avx512(const float* x, int64_t n, bool* finite) {
  AbsMax am;
  am.add(x, n);
  return am.result(finite);
}

void quantize_scaled_avx512(const float* x, int64_t n, float inv, int8_t* dst) {
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t k = 0; k < n; k += 16) {
    const int64_t left = n - k;
    const __mmask16 m = tail_mask16(left);
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), vinv));
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    _mm_mask_storeu_epi8(dst + k, m, _mm512_cvtepi32_epi8(q));
  }
}

void fill_rows_amx(int64_t M, int64_t K, int64_t M_pad, int64_t lda, int8_t* out,
                   float* scales, const std::function<float(int64_t, uint8_t*)>& row_codes) {
  const int64_t written = round_up(K, 4);
#pragma omp for schedule(static)
  for (int64_t m = 0; m < M_pad; ++m) {
    int8_t* row = out + m * lda;
    if (m < M) {
      scales[m] = row_codes(m, reinterpret_cast<uint8_t*>(row));
      std::memset(row + written, 0, lda - written);
    } else {
      std::memset(row, 0, lda);  // padding rows: computed, never stored
      scales[m] = 0.0f;
    }
  }
}

}  // namespace tersor::quant_act
