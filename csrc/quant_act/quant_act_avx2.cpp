// AVX2 per-row activation quantization (rules in quant_act.h; bit-exact with the ref).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "common/formats.h"
#include "quant_act/quant_act.h"

namespace tersor::quant_act {

float quantize_row_avx2(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                        uint8_t xor_mask, float amax_floor) {
  bool finite;
  const float amax = std::fmax(absmax_avx2(x, K, &finite), amax_floor);
  const float inv = (finite && amax > 0.0f) ? 127.0f / amax : 0.0f;
  const int64_t Kp = round_up(K, 4);
  auto put = [&](int64_t kk, int8_t v) {
    dst[(kk / 4) * group_stride + (kk % 4)] = static_cast<uint8_t>(v) ^ xor_mask;
  };
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m128i vxor = _mm_set1_epi8(static_cast<char>(xor_mask));
  int64_t k = 0;
  if (finite) {
    for (; k + 8 <= K; k += 8) {
      __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
      q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
      const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      const __m128i b = _mm_xor_si128(_mm_packs_epi16(w16, w16), vxor);  // 8 codes, low half
      const int32_t g0 = _mm_cvtsi128_si32(b), g1 = _mm_extract_epi32(b, 1);
      std::memcpy(dst + (k / 4) * group_stride, &g0, 4);
      std::memcpy(dst + (k / 4 + 1) * group_stride, &g1, 4);
    }
    for (; k < K; ++k) {
      float v = std::nearbyint(x[k] * inv);
      put(k, static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, v))));
    }
  }
  for (; k < Kp; ++k) put(k, 0);
  if (!finite) return NAN;
  return amax > 0.0f ? amax / 127.0f : 0.0f;
}

float quantize_row_lo_avx2(const float* x, int64_t K, uint8_t* dst, int64_t group_stride,
                           uint8_t xor_mask, float amax_floor) {
  bool finite;
  const float amax = std::fmax(absmax_avx2(x, K, &finite), amax_floor);
  if (!finite || amax == 0.0f) return quantize_row_lo_ref(x, K, dst, group_stride, xor_mask, 0.0f);
  const float inv = 127.0f / amax;
  const __m256 vinv = _mm256_set1_ps(inv), v254 = _mm256_set1_ps(254.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m128i vxor = _mm_set1_epi8(static_cast<char>(xor_mask));
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + k), vinv);
    const __m256 h = _mm256_min_ps(_mm256_max_ps(_mm256_round_ps(t, kRne), lo), hi);
    const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(t, h), v254));
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i b = _mm_xor_si128(_mm_packs_epi16(w16, w16), vxor);  // 8 codes, low half
    const int32_t g0 = _mm_cvtsi128_si32(b), g1 = _mm_extract_epi32(b, 1);
    std::memcpy(dst + (k / 4) * group_stride, &g0, 4);
    std::memcpy(dst + (k / 4 + 1) * group_stride, &g1, 4);
  }
  const int64_t Kp = round_up(K, 4);
  for (; k < Kp; ++k) {
    int8_t v = 0;
    if (k < K) {
      const float t = x[k] * inv;
      const float h = std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(t)));
      v = static_cast<int8_t>(std::nearbyint((t - h) * 254.0f));
    }
    dst[(k / 4) * group_stride + (k % 4)] = static_cast<uint8_t>(v) ^ xor_mask;
  }
  return amax / 127.0f / 254.0f;
}

float absmax_avx2(const float* x, int64_t n, bool* finite) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 zero = _mm256_setzero_ps();
  __m256 m[4] = {zero, zero, zero, zero}, nonfinite = zero;  // 4 chains: max latency
  int64_t k = 0;
  for (; k + 32 <= n; k += 32)
    for (int u = 0; u < 4; ++u) {
      const __m256 v = _mm256_loadu_ps(x + k + 8 * u);
      m[u] = _mm256_max_ps(m[u], _mm256_and_ps(v, abs_mask));
      nonfinite = _mm256_add_ps(nonfinite, _mm256_mul_ps(v, zero));  // NaN iff NaN or Inf
    }
  alignas(32) float lanes[8], checks[8];
  _mm256_store_ps(lanes, _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
  _mm256_store_ps(checks, nonfinite);
  float amax = 0.0f;
  *finite = true;
  for (int i = 0; i < 8; ++i) {
    amax = std::fmax(amax, lanes[i]);
    if (std::isnan(checks[i])) *finite = false;
  }
  for (; k < n; ++k) {
    if (!std::isfinite(x[k])) *finite = false;
    amax = std::fmax(amax, std::fabs(x[k]));
  }
  return amax;
}

void quantize_scaled_avx2(const float* x, int64_t n, float inv, int8_t* dst) {
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
    q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + k), _mm_packs_epi16(w16, w16));
  }
  for (; k < n; ++k)
    dst[k] = static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(x[k] * inv))));
}

}  // namespace tersor::quant_act
