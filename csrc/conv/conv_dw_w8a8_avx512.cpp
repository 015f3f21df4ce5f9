// AVX-512 depthwise W8A8 convolution: 16 channels per zmm of int32 (codes and weights widened,
// vpmulld), the channel tail under a mask; channel multipliers > 1 take the ref's scalar pixel.
// Bit-identical to the ref (conv_dw_w8a8.h).
#include <immintrin.h>

#include "common/parallel.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

void run_dw_avx512(const DwCall& k) {
  if (k.mult != 1) return run_dw_ref(k);
  const ConvW8A8Args& c = k.c;
  const int64_t Hp = k.in.Hp, Wp = k.in.Wp;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * c.kh * c.kw, c.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
  const DwRowOutput out(c);
#pragma omp for schedule(static)
  for (int64_t r = 0; r < c.B * c.Ho; ++r) {
    const int64_t b = r / c.Ho, oh = r % c.Ho;
    const int8_t* img = k.in.xq + b * Hp * Wp * c.C;
    const __m512 vsx = _mm512_set1_ps(k.in.scale[b]);
    for (int64_t ow = 0; ow < c.Wo; ++ow) {
      const int8_t* patch = img + (oh * c.sh * Wp + ow * c.sw) * c.C;
      float* y = out.row(r) + ow * c.N;
      for (int64_t n0 = 0; n0 < c.N; n0 += 16) {
        const int64_t left = c.N - n0;
        const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        __m512i acc = _mm512_setzero_si512();
        const int16_t* w = k.wt + n0;  // [Np] rows: 16 lanes always readable
        for (int64_t i = 0; i < c.kh; ++i)
          for (int64_t j = 0; j < c.kw; ++j, w += k.Np) {
            const int8_t* x = patch + (i * c.dh * Wp + j * c.dw) * c.C + n0;
            const __m512i x32 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, x));
            const __m512i w32 =
                _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(x32, w32));
          }
        const __m512 s = _mm512_mul_ps(vsx, _mm512_loadu_ps(c.w_scale + n0));  // [Np]
        const __m512 bias = c.bias ? _mm512_maskz_loadu_ps(m, c.bias + n0) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(y + n0, m, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, bias));
      }
    }
    out.finish_row(r);
  }
  }
}

}  // namespace tersor::conv
