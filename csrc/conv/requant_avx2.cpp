// AVX2 requantization epilogue (requant.h): 16 columns per step, the tail by the same formula
// in scalar code (hardware fma here, std::fma in the ref: the same rounding).
#include <immintrin.h>

#include <cmath>

#include "conv/requant.h"

namespace tersor::conv {
namespace {

inline float requant_one(const Requant& r, float y, const int8_t* res, int64_t n) {
  const float v = res ? std::fma(static_cast<float>(res[n]), r.res_scale, y) : y;
  float t = v * r.inv_scale;
  if (std::isnan(t)) t = 0.0f;
  return std::nearbyint(std::fmin(std::fmax(t, r.lo), r.hi));
}

// 8 values -> 8 int32 codes (the vector form of requant_one).
inline __m256i requant8(const Requant& r, __m256 v, const int8_t* res) {
  if (res) {
    const __m256 rv = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(res))));
    v = _mm256_fmadd_ps(rv, _mm256_set1_ps(r.res_scale), v);
  }
  __m256 t = _mm256_mul_ps(v, _mm256_set1_ps(r.inv_scale));
  t = _mm256_and_ps(t, _mm256_cmp_ps(t, t, _CMP_ORD_Q));  // NaN -> 0
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(r.lo)), _mm256_set1_ps(r.hi));
  return _mm256_cvtps_epi32(t);  // MXCSR default: round half to even, as nearbyint
}

}  // namespace

void requant_rows_avx2(const Requant& r, const float* y, int64_t ldy, int64_t m0, int64_t m1,
                       int64_t N) {
  for (int64_t m = m0; m < m1; ++m, y += ldy) {
    int8_t* q = r.q + m * r.ldq;
    const int8_t* res = r.res ? r.res + m * r.ldres : nullptr;
    int64_t n = 0;
    for (; n + 16 <= N; n += 16) {
      const __m256i a = requant8(r, _mm256_loadu_ps(y + n), res ? res + n : nullptr);
      const __m256i b = requant8(r, _mm256_loadu_ps(y + n + 8), res ? res + n + 8 : nullptr);
      // int32 -> int16 packs per 128-bit lane (a0-3 b0-3 a4-7 b4-7): restore the order, then
      // int16 -> int8 (the codes are already in range: the packs never saturate)
      const __m256i ab = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
      const __m128i codes =
          _mm_packs_epi16(_mm256_castsi256_si128(ab), _mm256_extracti128_si256(ab, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + n), codes);
    }
    for (; n < N; ++n) q[n] = static_cast<int8_t>(requant_one(r, y[n], res, n));
  }
}

}  // namespace tersor::conv
