// bf16 / fp16 <-> fp32 rows with AVX2 + F16C, 8 elements a step; tails through half_io_ref.cpp
// (one code path per element: the same bits as the ref).
#include <immintrin.h>

#include "common/lanes.h"
#include "half_io/half_io.h"

namespace tersor::half_io {

void widen_avx2(const RowsArgs& a) {
  const int64_t K8 = a.K & ~int64_t(7);
  for (int64_t m = 0; m < a.M; ++m) {
    const uint16_t* s = static_cast<const uint16_t*>(a.src) + m * a.lds;
    float* d = static_cast<float*>(a.dst) + m * a.ldd;
    for (int64_t k = 0; k < K8; k += 8)
      _mm256_storeu_ps(d + k, Avx2Lanes8::load_half(s + k, a.dtype));
    if (K8 < a.K) widen_ref({s + K8, 1, a.K - K8, a.lds, d + K8, a.ldd, a.dtype});
  }
}

void narrow_avx2(const RowsArgs& a) {
  const int64_t K8 = a.K & ~int64_t(7);
  for (int64_t m = 0; m < a.M; ++m) {
    const float* s = static_cast<const float*>(a.src) + m * a.lds;
    uint16_t* d = static_cast<uint16_t*>(a.dst) + m * a.ldd;
    for (int64_t k = 0; k < K8; k += 8)
      Avx2Lanes8::store_half(d + k, _mm256_loadu_ps(s + k), a.dtype);
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

