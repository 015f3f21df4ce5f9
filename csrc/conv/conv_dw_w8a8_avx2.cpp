// AVX2 depthwise W8A8 convolution: 16 channels per step, two taps at a time: the codes of taps
// t and t + 1 widened to int16 and interleaved channel by channel, one vpmaddwd against the
// weights interleaved the same way gives x_t w_t + x_t+1 w_t+1 per channel in int32 (exact:
// 2 * 127 * 127 < 2^31; half the widening and adds of one tap at a time):
//
//   unpacklo(x_t, x_t+1)  lane 0: (x_t[0], x_t+1[0]) .. (x_t[3], x_t+1[3])   channels 0-3
//                         lane 1: channels 8-11          (unpackhi: 4-7 and 12-15)
//
// so the two accumulators hold channels [0-3 | 8-11] and [4-7 | 12-15]; the scales and biases
// are laid out the same way, so the codes pack back to channels 0-15 with no lane swap (fp32
// output swaps lanes once). An odd last tap pairs with zero weights. Channel multipliers > 1
// take the ref.
//
// A thread walks consecutive output rows; for each it takes the kh input rows it reads with
// their zero border (Wp = W + 2 pw pixels): rows of the padded copy, or, where the static
// pipeline hands its codes in place (k.padded false), rows copied into a ring of kh bordered
// rows, each built once at stride 1. The copy of the whole input that the ring replaces was a
// read and a write of every code, 11% of a 56x56 layer's time (Zen 3). In the static pipeline
// (folded scales, requant.h) each pixel then runs every 16-channel block and writes codes
// straight from the sums (walk_row); fp32 out, each block walks the row with its weights,
// scales and bias held (walk_block). Bit-identical to the ref (conv_dw_w8a8.h).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

namespace {
constexpr int kMaxPairs = 13;  // dw_avx2_reads_in_place: up to 26 taps
constexpr int kMaxRows = 2 * kMaxPairs;  // kernel rows: kh <= kh * kw <= 26

// The kh bordered input rows of an output row (see the top of the file).
class BorderedRows {
 public:
  explicit BorderedRows(const DwCall& k) : k_(k), c_(k.c), wp_(k.c.W + 2 * k.c.pw) {
    if (k.padded) return;
    const int64_t bytes = wp_ * c_.C;
    ring_ = alloc_scratch<int8_t>((c_.kh + 1) * bytes);
    std::memset(ring_.get(), 0, (c_.kh + 1) * bytes);  // slot kh: the zero row
    for (int64_t i = 0; i < c_.kh; ++i) held_[i] = -1;
  }
  // rows[i] = input row oh * sh + i * dh (padded coordinates) of image b
  void get(int64_t b, int64_t oh, const int8_t** rows) {
    const int64_t Hp = c_.H + 2 * c_.ph, bytes = wp_ * c_.C;
    if (k_.padded) {
      for (int64_t i = 0; i < c_.kh; ++i)
        rows[i] = k_.in.xq + (b * k_.in.Hp + oh * c_.sh + i * c_.dh) * k_.in.Wp * c_.C;
      return;
    }
    int64_t tag[kMaxRows];
    for (int64_t i = 0; i < c_.kh; ++i) tag[i] = b * Hp + oh * c_.sh + i * c_.dh;
    for (int64_t i = 0; i < c_.kh; ++i) {
      const int64_t h = oh * c_.sh + i * c_.dh - c_.ph;  // the row in the codes
      if (h < 0 || h >= c_.H) {
        rows[i] = ring_.get() + c_.kh * bytes;
        continue;
      }
      int64_t slot = find(tag[i]);
      if (slot < 0) {  // a slot no row of this output row holds
        for (slot = 0; slot < c_.kh; ++slot) {
          bool needed = false;
          for (int64_t j = 0; j < c_.kh; ++j) needed = needed || held_[slot] == tag[j];
          if (!needed) break;
        }
        int8_t* dst = ring_.get() + slot * bytes;  // the border bytes stay zero
        std::memcpy(dst + c_.pw * c_.C, c_.xs + (b * c_.H + h) * c_.W * c_.C, c_.W * c_.C);
        held_[slot] = tag[i];
      }
      rows[i] = ring_.get() + slot * bytes;
    }
  }

 private:
  int64_t find(int64_t tag) const {
    for (int64_t s = 0; s < c_.kh; ++s)
      if (held_[s] == tag) return s;
    return -1;
  }
  const DwCall& k_;
  const ConvW8A8Args& c_;
  const int64_t wp_;
  Scratch<int8_t> ring_;
  int64_t held_[kMaxRows];
};

// One output row of one 16-channel block, fp32 out: PAIRS tap pairs known when compiling (5: a
// 3x3 kernel), 0: `pairs` at run time.
struct BlockWalk {
  const int8_t* const* tap;  // [2 * pairs]: each tap's pixel 0 in its bordered row, + n0
  const __m256i* w;          // the block's interleaved weights, [pairs][2]
  // the block's scales s0, s1 and biases b0, b1 in the accumulators' order: channels
  // [0-3 | 8-11] and [4-7 | 12-15]
  const __m256* sb;
  int64_t pairs, Wo, step;   // step: sw * C
  float* y;                  // the row's pixel 0 + n0 (ldy apart)
  int64_t ldy;
};
// 16 channels of 8 (channels 0-7, 8-15) in the accumulators' order (above)
inline void to_acc_order(__m256 c0_7, __m256 c8_15, __m256* lo, __m256* hi) {
  *lo = _mm256_permute2f128_ps(c0_7, c8_15, 0x20);
  *hi = _mm256_permute2f128_ps(c0_7, c8_15, 0x31);
}
// 16 channels of one output pixel: the codes at byte `off` of each tap, summed over the tap
// pairs against the interleaved weights w ([pairs][2]), then y = sum * scale + bias (sb: s0,
// s1, b0, b1), channels in the accumulators' order.
inline void pixel_block(const int8_t* const* tap, int64_t off, const __m256i* w, int64_t pairs,
                        const __m256* sb, __m256* y0, __m256* y1) {
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m256i xa = _mm256_cvtepi8_epi16(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(tap[2 * p] + off)));
    const __m256i xb = _mm256_cvtepi8_epi16(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(tap[2 * p + 1] + off)));
    lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(xa, xb), w[2 * p]));
    hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(xa, xb), w[2 * p + 1]));
  }
  *y0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), sb[0], sb[2]);
  *y1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), sb[1], sb[3]);
}
template <int PAIRS>
inline void walk_block(const BlockWalk& a) {
  const int64_t pairs = PAIRS > 0 ? PAIRS : a.pairs;
  __m256i w[2 * kMaxPairs];
  for (int64_t p = 0; p < 2 * pairs; ++p) w[p] = a.w[p];
  for (int64_t ow = 0; ow < a.Wo; ++ow) {
    __m256 y0, y1;
    pixel_block(a.tap, ow * a.step, w, pairs, a.sb, &y0, &y1);
    _mm256_storeu_ps(a.y + ow * a.ldy, _mm256_permute2f128_ps(y0, y1, 0x20));
    _mm256_storeu_ps(a.y + ow * a.ldy + 8, _mm256_permute2f128_ps(y0, y1, 0x31));
  }
}

// One output row in codes (the static pipeline: requant.h with inv_scale 1, no NaN), every
// full 16-channel block of a pixel before the next pixel, so a pixel's input lines are read
// while they are in L1. Block by block over the row (as the fp32 walk goes), each block's pass
// re-read the kh rows from L2 (3 x 8 KB at 56 x 144 channels): Zen 3, MobileNetV2's layers at
// batch 8, 1.07-1.21x (the same at 32 channels). w: [blocks][pairs][2] interleaved weights;
// sb: [blocks][4] scales and biases in the accumulators' order, which packs back to channels
// 0-15 without a lane swap.
struct RowWalk {
  const int8_t* const* tap;  // [2 * pairs]: each tap's pixel 0 in its bordered row
  const __m256i* w;
  const __m256* sb;
  int64_t pairs, blocks, Wo, step;
  int8_t* q;  // the row's pixel 0 (ldq apart), codes out
  int64_t ldq;
  __m256 hi;
  __m128i lo;
};
template <int PAIRS>
inline void walk_row(const RowWalk& a) {
  const int64_t pairs = PAIRS > 0 ? PAIRS : a.pairs;
  for (int64_t ow = 0; ow < a.Wo; ++ow) {
    const int64_t off = ow * a.step;
    for (int64_t nb = 0; nb < a.blocks; ++nb) {
      __m256 y0, y1;
      pixel_block(a.tap, off + nb * 16, a.w + nb * pairs * 2, pairs, a.sb + 4 * nb, &y0, &y1);
      const __m256i q01 = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_min_ps(y0, a.hi)),
                                             _mm256_cvtps_epi32(_mm256_min_ps(y1, a.hi)));
      const __m128i codes =
          _mm_packs_epi16(_mm256_castsi256_si128(q01), _mm256_extracti128_si256(q01, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a.q + ow * a.ldq + nb * 16),
                       _mm_max_epi8(codes, a.lo));
    }
  }
}
}  // namespace

void run_dw_avx2(const DwCall& k) {
  const ConvW8A8Args& c = k.c;
  const int64_t taps = c.kh * c.kw, pairs = (taps + 1) / 2;
  // (a channel multiplier > 1 reads input channel n / mult: no contiguous vector)
  if (!dw_avx2_reads_in_place(c, k.mult)) return run_dw_ref(k);
  const int64_t N = c.N, full = N / 16 * 16, blocks = full / 16, C = c.C;
  // weights of each 16-channel block and tap pair, interleaved as the codes will be
  std::vector<__m256i> wp(blocks * pairs * 2);
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
  const bool codes = c.out && c.out->folded_finite && !c.out->res;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * N * taps, c.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    const DwRowOutput out(c);
    BorderedRows input(k);
    std::vector<__m256> sb(4 * blocks);  // [blocks][s0, s1, b0, b1] of the image sb_image
    int64_t sb_image = -1;
    int64_t r0, r1;
    thread_range(c.B * c.Ho, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / c.Ho, oh = r % c.Ho;
      const int8_t* rows[kMaxRows];
      input.get(b, oh, rows);
      const int8_t* tap0[2 * kMaxPairs];  // each tap's pixel 0; an odd last tap's partner:
      for (int64_t t = 0; t < 2 * pairs; ++t) {  // the last tap again (its weights are 0)
        const int64_t tt = t < taps ? t : taps - 1;
        tap0[t] = rows[tt / c.kw] + (tt % c.kw) * c.dw * C;
      }
      const float sx = k.in.scale[b];
      float* y = out.row(r);
      if (b != sb_image) {  // the image's scales (sx * w_scale) and biases, per block
        const __m256 vsx = _mm256_set1_ps(sx);
        for (int64_t nb = 0; nb < blocks; ++nb) {
          const int64_t n0 = nb * 16;
          __m256* v = sb.data() + 4 * nb;
          to_acc_order(_mm256_mul_ps(vsx, _mm256_loadu_ps(c.w_scale + n0)),
                       _mm256_mul_ps(vsx, _mm256_loadu_ps(c.w_scale + n0 + 8)), v, v + 1);
          to_acc_order(c.bias ? _mm256_loadu_ps(c.bias + n0) : _mm256_setzero_ps(),
                       c.bias ? _mm256_loadu_ps(c.bias + n0 + 8) : _mm256_setzero_ps(), v + 2,
                       v + 3);
        }
        sb_image = b;
      }
      if (codes) {
        const RowWalk a{tap0, wp.data(), sb.data(), pairs, blocks, c.Wo, c.sw * C,
                        c.out->q + r * c.Wo * c.out->ldq, c.out->ldq,
                        _mm256_set1_ps(c.out->hi),
                        _mm_set1_epi8(static_cast<int8_t>(c.out->lo))};
        if (pairs == 5) {
          walk_row<5>(a);
        } else {
          walk_row<0>(a);
        }
      }
      for (int64_t nb = 0; nb < (codes ? 0 : blocks); ++nb) {
        const int64_t n0 = nb * 16;
        const int8_t* tap[2 * kMaxPairs];
        for (int64_t t = 0; t < 2 * pairs; ++t) tap[t] = tap0[t] + n0;
        BlockWalk a{tap, wp.data() + nb * pairs * 2, sb.data() + 4 * nb, pairs, c.Wo, c.sw * C,
                    y + n0, N};
        if (pairs == 5) {
          walk_block<5>(a);
        } else {
          walk_block<0>(a);
        }
      }
      // the channel tail, as the ref's pixel (dw_pixel_ref) over the bordered rows
      for (int64_t ow = 0; ow < c.Wo; ++ow)
        for (int64_t n = full; n < N; ++n) {
          int32_t acc = 0;
          for (int64_t t = 0; t < taps; ++t)
            acc += int32_t(tap0[t][ow * c.sw * C + n]) * k.wt[t * k.Np + n];
          y[ow * N + n] = std::fma(static_cast<float>(acc), sx * c.w_scale[n],
                                   c.bias ? c.bias[n] : 0.0f);
        }
      // codes written above for the full blocks; the tail (and residual rows) through requant
      if (!codes) {
        out.finish_row(r);
      } else if (full < N) {
        out.finish_columns(r, full);
      }
    }
  });
}

}  // namespace tersor::conv
