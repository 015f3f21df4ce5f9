// bf16 / fp16 <-> fp32 rows with AVX-512, 16 elements a step, the tail under a mask: the same
// bits as half_io_ref.cpp (half_avx512.h). The bf16 rounding is 7 ops per 16 values against 11
// per 8 on the AVX2 path: a bf16 LLM prefill converts ~100M values (attention rows, the MLP
// gate, GEMM rows), which took 3-4% of its time with the AVX2 conversions (Zen 5).
#include <immintrin.h>

#include "common/simd.h"
#include "half_io/half_avx512.h"

namespace tersor::half_io {

void widen_avx512(const RowsArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const uint16_t* s = static_cast<const uint16_t*>(a.src) + m * a.lds;
    float* d = static_cast<float*>(a.dst) + m * a.ldd;
    int64_t k = 0;
    for (; k + 16 <= a.K; k += 16)
      _mm512_storeu_ps(
          d + k, widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + k)), a.dtype));
    if (k < a.K) {
      const __mmask16 mask = tail_mask16(a.K - k);
      _mm512_mask_storeu_ps(d + k, mask, widen16(_mm256_maskz_loadu_epi16(mask, s + k), a.dtype));
    }
  }
}

void narrow_avx512(const RowsArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const float* s = static_cast<const float*>(a.src) + m * a.lds;
    uint16_t* d = static_cast<uint16_t*>(a.dst) + m * a.ldd;
    int64_t k = 0;
    for (; k + 16 <= a.K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k),
                          narrow16(_mm512_loadu_ps(s + k), a.dtype));
    if (k < a.K) {
      const __mmask16 mask = tail_mask16(a.K - k);
      _mm256_mask_storeu_epi16(d + k, mask, narrow16(_mm512_maskz_loadu_ps(mask, s + k), a.dtype));
    }
  }
}

}  // namespace tersor::half_io
