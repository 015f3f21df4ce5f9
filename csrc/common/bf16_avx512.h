// Helpers of the bf16 kernels. Include only from *_avx512bf16.cpp and *_amx.cpp files (both
// compiled with AVX512-BF16; internal linkage: see common/parallel.h).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "common/simd.h"

namespace tersor {

// x[0, K) rounded to bf16 (nearest even, vcvtneps2bf16) into dst[0, lda), zero past K; lda a
// multiple of 16.
static inline void round_row_bf16(const float* x, int64_t K, int64_t lda, uint16_t* dst) {
  for (int64_t k = 0; k < lda; k += 16) {
    const __mmask16 mask = k < K ? tail_mask16(K - k) : 0;
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(v));
  }
}

}  // namespace tersor
