// AVX-512 depthwise W8A8 convolution: 16 channels per zmm of int32 sums, two taps per
// vpdpwssd (AVX512-VNNI: int16 pairs multiplied and added into int32). Each 32-bit lane holds
// one channel's codes of taps t and t + 1 as two int16, against the same channel's weights of
// the two taps:
//
//   lane c:  [ x_t[c] | x_t+1[c] ]  (int16, int16)      vpdpwssd: acc[c] += x_t w_t + x_t+1 w_t+1
//            [ w_t[c] | w_t+1[c] ]
//
// built with one sign-extending load per tap (vpmovsxbd), a shift and a masked word move: the
// channels stay in order, no lane shuffles. Exact (|x w| <= 127 * 127). The weights of a
// 16-channel block sit in registers while the block walks an output row. An odd last tap pairs
// with zero weights; the channel tail runs under masks. In the static pipeline (folded scales,
// requant.h) the codes are written straight from the sums. Bit-identical to the ref
// (conv_dw_w8a8.h). Channel multipliers > 1 take the ref.
#include <immintrin.h>

#include <vector>

#include "common/parallel.h"
#include "common/simd.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

namespace {
constexpr int kMaxPairs = 13;  // up to 5x5 (13 pairs) in registers; larger kernels: the ref
}

void run_dw_avx512(const DwCall& k) {
  const ConvW8A8Args& c = k.c;
  const int64_t taps = c.kh * c.kw, pairs = (taps + 1) / 2;
  if (k.mult != 1 || pairs > kMaxPairs) return run_dw_ref(k);
  const int64_t Hp = k.in.Hp, Wp = k.in.Wp, blocks = k.Np / 16;
  // weights of each 16-channel block and tap pair, interleaved as the codes will be
  std::vector<__m512i> wp(blocks * pairs);
  const std::vector<int64_t> tap_offset = dw_tap_offsets(c, Wp);
  for (int64_t nb = 0; nb < blocks; ++nb)
    for (int64_t p = 0; p < pairs; ++p) {
      const auto load = [&](int64_t t) {  // 16 weights widened to int32 lanes
        return t < taps ? _mm512_cvtepi16_epi32(_mm256_loadu_si256(
                              reinterpret_cast<const __m256i*>(k.wt + t * k.Np + nb * 16)))
                        : _mm512_setzero_si512();
      };
      wp[nb * pairs + p] = _mm512_mask_mov_epi16(_mm512_slli_epi32(load(2 * p + 1), 16),
                                                 0x55555555, load(2 * p));
    }
  const bool codes = c.out && c.out->folded_finite && !c.out->res;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * taps, c.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
  const DwRowOutput out(c);
#pragma omp for schedule(static)
  for (int64_t r = 0; r < c.B * c.Ho; ++r) {
    const int64_t b = r / c.Ho, oh = r % c.Ho;
    const int8_t* row = k.in.xq + (b * Hp + oh * c.sh) * Wp * c.C;
    const __m512 vsx = _mm512_set1_ps(k.in.scale[b]);
    for (int64_t nb = 0; nb < blocks; ++nb) {
      const int64_t n0 = nb * 16;
      const __mmask16 m = tail_mask16(c.N - n0);
      __m512i w[kMaxPairs];
      for (int64_t p = 0; p < pairs; ++p) w[p] = wp[nb * pairs + p];
      const __m512 s = _mm512_mul_ps(vsx, _mm512_loadu_ps(c.w_scale + n0));  // [Np]
      const __m512 bias = bias16(c.bias, n0, m);
      for (int64_t ow = 0; ow < c.Wo; ++ow) {
        const int8_t* patch = row + ow * c.sw * c.C + n0;
        __m512i acc = _mm512_setzero_si512();
        for (int64_t p = 0; p < pairs; ++p) {
          const __m512i xa =
              _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, patch + tap_offset[2 * p]));
          const __m512i xb =
              _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, patch + tap_offset[2 * p + 1]));
          const __m512i x = _mm512_mask_mov_epi16(_mm512_slli_epi32(xb, 16), 0x55555555, xa);
          acc = _mm512_dpwssd_epi32(acc, x, w[p]);
        }
        const __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, bias);
        if (codes) {  // requant.h with inv_scale 1 and no NaN: clamp, round half to even
          const __m512 v = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(c.out->lo)),
                                         _mm512_set1_ps(c.out->hi));
          _mm_mask_storeu_epi8(c.out->q + (r * c.Wo + ow) * c.out->ldq + n0, m,
                               _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
        } else {
          _mm512_mask_storeu_ps(out.row(r) + ow * c.N + n0, m, y);
        }
      }
    }
    if (!codes) out.finish_row(r);
  }
  }
}

}  // namespace tersor::conv
