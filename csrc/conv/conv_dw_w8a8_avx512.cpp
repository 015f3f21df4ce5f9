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
//
// Kernels three taps wide, not dilated (MobileNet's 3x3 layers, stride 1 or 2) take
// run_rows_of_three instead: one vpdpbusd per kernel row. Each input row a thread needs is
// turned once into quads, the codes of a kernel row's three taps of each channel side by side
// (u8: + 128 when the image has negative codes, taken back with 128 * the weights' sum):
//
//   T[block][ow] = | x[iw][c] x[iw+1][c] x[iw+2][c] 0 | ... 16 channels c ... |  iw = ow * sw
//   W[block][i]  = | w[i][0][c] w[i][1][c] w[i][2][c] 0 | ...                 |  (s8)
//   acc(oh, ow) = sum over kernel rows i of vpdpbusd(T of input row oh * sh + i, W[i])
//
// A thread walks consecutive output rows and keeps the last kh quad rows in a ring, so at
// stride 1 each input row is built once and read kh times.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "common/simd.h"
#include "conv/conv_dw_w8a8.h"

namespace tersor::conv {

namespace {
constexpr int kMaxPairs = 13;  // up to 5x5 (13 pairs) in registers; larger kernels: the ref
constexpr int kMaxRows = 7;    // kernel rows of run_rows_of_three

// The epilogue of 16 channels of output pixel (r, ow): codes when `codes` (requant.h with
// inv_scale 1 and no NaN: clamp, round half to even), else fp32 to the row output.
// (Its arguments copied out of c once per row: the int8 stores may alias c, so the compiler
// would reload every field per pixel.)
struct Store16 {
  bool codes;
  int8_t* q;      // codes: output row r's first pixel
  int64_t ldq;
  float* y;       // fp32: the row's output
  int64_t ldy;
  __m512 lo, hi;
  Store16(const ConvW8A8Args& c, const DwRowOutput& out, bool codes, int64_t r)
      : codes(codes),
        q(codes ? c.out->q + r * c.Wo * c.out->ldq : nullptr),
        ldq(codes ? c.out->ldq : 0),
        y(codes ? nullptr : out.row(r)),
        ldy(c.N),
        lo(_mm512_set1_ps(codes ? c.out->lo : 0.0f)),
        hi(_mm512_set1_ps(codes ? c.out->hi : 0.0f)) {}
  void operator()(int64_t ow, int64_t n0, __mmask16 m, __m512i acc, __m512 s,
                  __m512 bias) const {
    const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, bias);
    if (codes) {
      const __m128i q16 =
          _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi)));
      if (m == 0xFFFF) {  // a whole block: a plain store (the masked byte store is slower)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + ow * ldq + n0), q16);
      } else {
        _mm_mask_storeu_epi8(q + ow * ldq + n0, m, q16);
      }
    } else {
      _mm512_mask_storeu_ps(y + ow * ldy + n0, m, v);
    }
  }
};

// T[block][ow] of one input row (see the top of the file): 16 channels of the three pixels,
// one xmm each, side by side in a zmm; a word permutation gives each 128-bit lane its four
// channels' codes of the three taps, and a byte shuffle in the lane makes them quads:
//
//   [ a0..a15 | b0..b15 | d0..d15 | - ]                        (a, b, d: taps 0, 1, 2)
//   vpermw   -> lane L: a[4L..4L+3] b[4L..4L+3] d[4L..4L+3] -
//   vpshufb  -> lane L: a[4L] b[4L] d[4L] 0  a[4L+1] b[4L+1] d[4L+1] 0 ...
//
// src: the row's pixel 0; x0: the column of output 0's first tap, -pw when the row has no
// zero border (k.padded false), whose taps outside [0, W) then read as zero codes (a zero
// mask: masked-off lanes never fault).
void build_quads(const ConvW8A8Args& c, const int8_t* src, int64_t x0, int64_t W,
                 int64_t blocks, bool flip, uint8_t* T) {
  const __m512i bias = _mm512_set1_epi8(flip ? -128 : 0);
  struct Index {  // the two permutations, built once
    alignas(64) int16_t words[32];
    alignas(64) int8_t bytes[64];
    Index() {
      for (int l = 0; l < 4; ++l)
        for (int t = 0; t < 4; ++t) {
          words[8 * l + 2 * t] = static_cast<int16_t>(8 * t + 2 * l);  // t: tap a, b, d; 3: unused
          words[8 * l + 2 * t + 1] = static_cast<int16_t>(8 * t + 2 * l + 1);
          for (int j = 0; j < 4; ++j)  // quad t: codes of channel 4l + t at taps j = 0, 1, 2; 0
            bytes[16 * l + 4 * t + j] = static_cast<int8_t>(j < 3 ? 4 * j + t : -128);
        }
    }
  };
  static const Index index;
  const __m512i word_index = _mm512_load_si512(index.words);
  const __m512i byte_index = _mm512_load_si512(index.bytes);
  const int64_t C = c.C, sw = c.sw, Wo = c.Wo;  // locals: the stores below may alias c
  for (int64_t nb = 0; nb < blocks; ++nb) {
    const __mmask16 m = tail_mask16(C - nb * 16);
    for (int64_t ow = 0; ow < Wo; ++ow, T += 64) {
      const int64_t iw = x0 + ow * sw;
      const int8_t* p = src + iw * C + nb * 16;
      const bool inside = iw >= 0 && iw + 2 < W;
      const auto tap = [&](int64_t j) {
        const __mmask16 mj = inside || (iw + j >= 0 && iw + j < W) ? m : 0;
        return _mm_maskz_loadu_epi8(mj, p + j * C);
      };
      __m512i v = _mm512_castsi128_si512(tap(0));
      v = _mm512_inserti32x4(v, tap(1), 1);
      v = _mm512_inserti32x4(v, tap(2), 2);
      v = _mm512_permutexvar_epi16(word_index, _mm512_xor_si512(v, bias));
      _mm512_storeu_si512(T, _mm512_shuffle_epi8(v, byte_index));
    }
  }
}

// One output row's pixels in one 16-channel block: its kh quad rows (at `at` in the ring rows)
// against the block's kernel rows. KH: kh known when compiling (3: the weights and row
// pointers stay in registers, no loop over taps), 0: kh at run time.
struct RowBlock {
  const uint8_t* const* rows;
  const int8_t* wq;  // the block's kh weight quads
  int64_t at, Wo, n0;
  __mmask16 m;
  __m512i cp;
  __m512 s, bias;
};
template <int KH>
inline void row_block(const RowBlock& b, const Store16& store, int64_t kh_run_time) {
  const int64_t kh = KH > 0 ? KH : kh_run_time;
  __m512i w[kMaxRows];
  const uint8_t* p[kMaxRows];
  for (int64_t i = 0; i < kh; ++i) {
    w[i] = _mm512_loadu_si512(b.wq + i * 64);
    p[i] = b.rows[i] + b.at;
  }
  for (int64_t ow = 0; ow < b.Wo; ++ow) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t i = 0; i < kh; ++i)
      acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(p[i] + ow * 64), w[i]);
    store(ow, b.n0, b.m, _mm512_sub_epi32(acc, b.cp), b.s, b.bias);
  }
}

void run_rows_of_three(const DwCall& k, bool codes) {
  const ConvW8A8Args& c = k.c;
  const int64_t blocks = k.Np / 16, kh = c.kh, Hp = k.in.Hp, Wp = k.in.Wp;
  // W[block][i] and 128 * the sum of each channel's weights (for images read as x + 128)
  const int8_t* wq = k.weights.rows3.data();
  const int32_t* comp = k.weights.comp3.data();
  const int64_t row_bytes = blocks * c.Wo * 64;
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * kh * 3, c.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    const DwRowOutput out(c);
    auto ring = alloc_scratch<uint8_t>(kh * row_bytes);
    int64_t held[kMaxRows];  // the input row each ring slot holds: image b, row h -> tag
    for (int64_t i = 0; i < kh; ++i) held[i] = -1;
    int64_t r0, r1;
    thread_range(c.B * c.Ho, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / c.Ho, oh = r % c.Ho;
      const bool flip = !k.in.non_negative[b];
      const uint8_t* rows[kMaxRows];
      for (int64_t i = 0; i < kh; ++i) {
        // the row in the input's own coordinates: padded, or H rows with the border implied
        const int64_t h = oh * c.sh + i - (k.padded ? 0 : c.ph);
        const int64_t tag = b * (Hp + 2 * c.ph) + h + c.ph, slot = tag % kh;  // h >= -ph
        uint8_t* T = ring.get() + slot * row_bytes;
        if (held[slot] != tag) {
          if (h < 0 || h >= Hp) {  // a border row: zero codes (128 read as u8 when flipped)
            std::memset(T, flip ? 0x80 : 0, row_bytes);
          } else {
            build_quads(c, k.in.xq + (b * Hp + h) * Wp * c.C, k.padded ? 0 : -c.pw, Wp, blocks,
                        flip, T);
          }
          held[slot] = tag;
        }
        rows[i] = T;
      }
      const __m512 vsx = _mm512_set1_ps(k.in.scale[b]);
      const Store16 store(c, out, codes, r);
      for (int64_t nb = 0; nb < blocks; ++nb) {
        const int64_t n0 = nb * 16;
        const __mmask16 m = tail_mask16(c.N - n0);
        const __m512 s = _mm512_mul_ps(vsx, _mm512_loadu_ps(c.w_scale + n0));  // [Np]
        const __m512 bias = bias16(c.bias, n0, m);
        const __m512i cp = flip ? _mm512_loadu_si512(comp + nb * 16) : _mm512_setzero_si512();
        const RowBlock rb{rows, wq + nb * kh * 64, nb * c.Wo * 64, c.Wo, n0, m, cp, s, bias};
        if (kh == 3) {
          row_block<3>(rb, store, kh);
        } else {
          row_block<0>(rb, store, kh);
        }
      }
      if (!codes) out.finish_row(r);
    }
  });
}
}  // namespace

void run_dw_avx512(const DwCall& k) {
  const ConvW8A8Args& c = k.c;
  const int64_t taps = c.kh * c.kw, pairs = (taps + 1) / 2;
  const bool codes = c.out && c.out->folded_finite && !c.out->res;
  if (k.mult == 1 && c.kw == 3 && c.dw == 1 && c.dh == 1 && c.kh <= kMaxRows)
    return run_rows_of_three(k, codes);
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
  const int nt = threads_for_work(double(c.B) * c.Ho * c.Wo * c.N * taps, c.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    const DwRowOutput out(c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < c.B * c.Ho; ++r) {
      const int64_t b = r / c.Ho, oh = r % c.Ho;
      const int8_t* row = k.in.xq + (b * Hp + oh * c.sh) * Wp * c.C;
      const __m512 vsx = _mm512_set1_ps(k.in.scale[b]);
      const Store16 store(c, out, codes, r);
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
          store(ow, n0, m, acc, s, bias);
        }
      }
      if (!codes) out.finish_row(r);
    }
  });
}

}  // namespace tersor::conv
