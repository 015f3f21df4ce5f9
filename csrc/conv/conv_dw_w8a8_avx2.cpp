// AVX2 depthwise W8A8 convolution: 16 channels per step, codes widened to int16, one vpmullw
// per tap (exact: |x w| <= 16129), int32 sums; channel tails and channel multipliers > 1 take
// the scalar pixel of the ref. Bit-identical to the ref (conv_dw_w8a8.h).
#include <immintrin.h>

#include "common/parallel.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

void run_dw_avx2(const DwCall& k) {
  if (k.mult != 1) return run_dw_ref(k);  // input channel n / mult: no contiguous vector
  const ConvW8A8Args& c = k.c;
  const int64_t full = c.N / 16 * 16, Hp = k.in.Hp, Wp = k.in.Wp;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * c.kh * c.kw, c.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
  const DwRowOutput out(c);
#pragma omp for schedule(static)
  for (int64_t r = 0; r < c.B * c.Ho; ++r) {
    const int64_t b = r / c.Ho, oh = r % c.Ho;
    const int8_t* img = k.in.xq + b * Hp * Wp * c.C;
    const __m256 vsx = _mm256_set1_ps(k.in.scale[b]);
    for (int64_t ow = 0; ow < c.Wo; ++ow) {
      const int8_t* patch = img + (oh * c.sh * Wp + ow * c.sw) * c.C;
      float* y = out.row(r) + ow * c.N;
      for (int64_t n0 = 0; n0 < full; n0 += 16) {
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        const int16_t* w = k.wt + n0;
        for (int64_t i = 0; i < c.kh; ++i)
          for (int64_t j = 0; j < c.kw; ++j, w += k.Np) {
            const int8_t* x = patch + (i * c.dh * Wp + j * c.dw) * c.C + n0;
            const __m256i x16 =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
            const __m256i p =
                _mm256_mullo_epi16(x16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
            a0 = _mm256_add_epi32(a0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
            a1 = _mm256_add_epi32(a1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
          }
        const __m256 s0 = _mm256_mul_ps(vsx, _mm256_loadu_ps(c.w_scale + n0));
        const __m256 s1 = _mm256_mul_ps(vsx, _mm256_loadu_ps(c.w_scale + n0 + 8));
        const __m256 b0 = c.bias ? _mm256_loadu_ps(c.bias + n0) : _mm256_setzero_ps();
        const __m256 b1 = c.bias ? _mm256_loadu_ps(c.bias + n0 + 8) : _mm256_setzero_ps();
        _mm256_storeu_ps(y + n0, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), s0, b0));
        _mm256_storeu_ps(y + n0 + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s1, b1));
      }
      if (full < c.N) dw_pixel_ref(k, b, oh, ow, full, c.N, y);
    }
    out.finish_row(r);
  }
  }
}

}  // namespace tersor::conv
