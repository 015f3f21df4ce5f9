// AVX2 depthwise W8A8 convolution: 16 channels per step, two taps at a time: the codes of taps
// t and t + 1 widened to int16 and interleaved channel by channel, one vpmaddwd against the
// weights interleaved the same way gives x_t w_t + x_t+1 w_t+1 per channel in int32 (exact:
// 2 * 127 * 127 < 2^31; half the widening and adds of one tap at a time):
//
//   unpacklo(x_t, x_t+1)  lane 0: (x_t[0], x_t+1[0]) .. (x_t[3], x_t+1[3])   channels 0-3
//                         lane 1: channels 8-11          (unpackhi: 4-7 and 12-15)
//
// so the two accumulators hold channels [0-3 | 8-11] and [4-7 | 12-15] until one lane swap at
// the end. An odd last tap pairs with zero weights. Channel tails and channel multipliers > 1
// take the scalar pixel of the ref. In the static pipeline (folded scales, requant.h) the
// codes are written straight from the sums. Bit-identical to the ref (conv_dw_w8a8.h).
#include <immintrin.h>

#include <vector>

#include "common/parallel.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

void run_dw_avx2(const DwCall& k) {
  if (k.mult != 1) return run_dw_ref(k);  // input channel n / mult: no contiguous vector
  const ConvW8A8Args& c = k.c;
  const int64_t full = c.N / 16 * 16, Hp = k.in.Hp, Wp = k.in.Wp;
  const int64_t taps = c.kh * c.kw, pairs = (taps + 1) / 2, blocks = full / 16;
  // weights of each 16-channel block and tap pair, interleaved as the codes will be
  std::vector<__m256i> wp(blocks * pairs * 2);
  const std::vector<int64_t> tap_offset = dw_tap_offsets(c, Wp);
  for (int64_t nb = 0; nb < blocks; ++nb)
    for (int64_t p = 0; p < pairs; ++p) {
      const auto load = [&](int64_t t) {
        return t < taps ? _mm256_loadu_si256(
                              reinterpret_cast<const __m256i*>(k.wt + t * k.Np + nb * 16))
                        : _mm256_setzero_si256();
      };
      const __m256i a = load(2 * p), b = load(2 * p + 1);
      wp[(nb * pairs + p) * 2] = _mm256_unpacklo_epi16(a, b);
      wp[(nb * pairs + p) * 2 + 1] = _mm256_unpackhi_epi16(a, b);
    }
  const bool codes = c.out && c.out->folded_finite;
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
      for (int64_t nb = 0; nb < blocks; ++nb) {
        const int64_t n0 = nb * 16;
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        const __m256i* w = wp.data() + nb * pairs * 2;
        for (int64_t p = 0; p < pairs; ++p, w += 2) {
          const __m256i xa = _mm256_cvtepi8_epi16(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(patch + tap_offset[2 * p] + n0)));
          const __m256i xb = _mm256_cvtepi8_epi16(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(patch + tap_offset[2 * p + 1] + n0)));
          lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(xa, xb), w[0]));
          hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(xa, xb), w[1]));
        }
        const __m256i a0 = _mm256_permute2x128_si256(lo, hi, 0x20);  // channels 0-7
        const __m256i a1 = _mm256_permute2x128_si256(lo, hi, 0x31);  // channels 8-15
        const __m256 s0 = _mm256_mul_ps(vsx, _mm256_loadu_ps(c.w_scale + n0));
        const __m256 s1 = _mm256_mul_ps(vsx, _mm256_loadu_ps(c.w_scale + n0 + 8));
        const __m256 b0 = c.bias ? _mm256_loadu_ps(c.bias + n0) : _mm256_setzero_ps();
        const __m256 b1 = c.bias ? _mm256_loadu_ps(c.bias + n0 + 8) : _mm256_setzero_ps();
        const __m256 y0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), s0, b0);
        const __m256 y1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s1, b1);
        if (codes && !c.out->res) {  // the codes now (requant.h with inv_scale 1, no NaN)
          const __m256 lo_c = _mm256_set1_ps(c.out->lo), hi_c = _mm256_set1_ps(c.out->hi);
          const __m256i q0 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y0, lo_c), hi_c));
          const __m256i q1 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y1, lo_c), hi_c));
          const __m256i q01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(c.out->q + (r * c.Wo + ow) * c.N + n0),
                           _mm_packs_epi16(_mm256_castsi256_si128(q01),
                                           _mm256_extracti128_si256(q01, 1)));
        } else {
          _mm256_storeu_ps(y + n0, y0);
          _mm256_storeu_ps(y + n0 + 8, y1);
        }
      }
      if (full < c.N) dw_pixel_ref(k, b, oh, ow, full, c.N, y);
    }
    // codes written above for the full blocks; the tail (and residual rows) through requant
    if (codes && !c.out->res) {
      if (full < c.N) out.finish_columns(r, full);
    } else {
      out.finish_row(r);
    }
  }
  }
}

}  // namespace tersor::conv
