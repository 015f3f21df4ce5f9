// bf16 / fp16 <-> fp32 rows with AVX2 + F16C, 8 elements a step; tails through half_io_ref.cpp
// (one code path per element: the same bits as the ref).
#include <immintrin.h>

#include "half_io/half_io.h"

namespace tersor::half_io {
namespace {

// bf16 nearest even: u + 0x7fff + ((u >> 16) & 1), high half; NaN lanes -> 0x7fc0.
inline __m128i bf16_from8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  // pack 8 x u32 (< 2^16) to 8 x u16: packus works per 128-bit lane
  const __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
  return _mm_packus_epi32(lo, hi);
}

}  // namespace

void widen_avx2(const RowsArgs& a) {
  const int64_t K8 = a.K & ~int64_t(7);
  for (int64_t m = 0; m < a.M; ++m) {
    const uint16_t* s = static_cast<const uint16_t*>(a.src) + m * a.lds;
    float* d = static_cast<float*>(a.dst) + m * a.ldd;
    for (int64_t k = 0; k < K8; k += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k));
      const __m256 f = a.dtype == BF16
                           ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                           : _mm256_cvtph_ps(h);
      _mm256_storeu_ps(d + k, f);
    }
    if (K8 < a.K) widen_ref({s + K8, 1, a.K - K8, a.lds, d + K8, a.ldd, a.dtype});
  }
}

void narrow_avx2(const RowsArgs& a) {
  const int64_t K8 = a.K & ~int64_t(7);
  for (int64_t m = 0; m < a.M; ++m) {
    const float* s = static_cast<const float*>(a.src) + m * a.lds;
    uint16_t* d = static_cast<uint16_t*>(a.dst) + m * a.ldd;
    for (int64_t k = 0; k < K8; k += 8) {
      const __m256 v = _mm256_loadu_ps(s + k);
      const __m128i h = a.dtype == BF16 ? bf16_from8(v) : _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + k), h);
    }
    if (K8 < a.K) narrow_ref({s + K8, 1, a.K - K8, a.lds, d + K8, a.ldd, a.dtype});
  }
}

void scale_columns_avx2(const ScaleArgs& a) {
  const int64_t K8 = a.K & ~int64_t(7);
  for (int64_t m = 0; m < a.M; ++m) {
    const float* s = a.src + m * a.lds;
    float* d = a.dst + m * a.ldd;
    for (int64_t k = 0; k < K8; k += 8)  // a plain multiply: the same bits as the ref
      _mm256_storeu_ps(d + k, _mm256_mul_ps(_mm256_loadu_ps(s + k), _mm256_loadu_ps(a.s + k)));
    for (int64_t k = K8; k < a.K; ++k) d[k] = s[k] * a.s[k];
  }
}

}  // namespace tersor::half_io

