// AVX-512 VNNI W8A8 convolution without a gather (direct_rows.h), for CPUs without AMX (Ice
// Lake, Cascade Lake, Zen 4): one pointer per output pixel into the int8 input, one 4-code
// group broadcast per row and k-step, as the AVX2 path does, with the VNNI register tile of the
// GEMM (gemm_w8a8_avx512.cpp): MR = 8 rows x NB = 3 column blocks of 16, 24 zmm accumulators.
//
// vpdpbusd multiplies u8 by s8. The codes stay s8 in the input, so per tile of 8 rows:
//  - every code >= 0 (after a ReLU, most layers): the codes are valid u8 as they are;
//  - otherwise each broadcast is XORed with 0x80 (u8 = q + 128) and the epilogue subtracts
//    128 * colsum[n], exactly as the GEMM does (one extra uop per 3 vpdpbusd).
// Both give the exact int32 sum, then the epilogue every path shares: bit-identical results.
// In the static pipeline (c.out) the tiles write the next layer's codes directly; a whole block
// of 16 with a plain store, as conv_dw_w8a8_avx512.cpp does: with masked byte stores the static
// MobileNetV2 / ResNet-18 at batch 8 took 1.05x / 1.03x the time (Zen 5, 2 threads; the 1x1
// convolutions of 16-24 channels at 112x112 store a code byte per 4-16 multiply-adds).
#include <immintrin.h>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "conv/conv_w8a8.h"
#include "conv/direct_rows.h"
#include "gemm_w8a8/row_blocks.h"

namespace tersor::conv {
namespace {

constexpr int kMR = 8;
constexpr int kNB = 3;

struct Tile {
  const uint8_t* const* row;  // kMR row pointers (past the tile's rows: unused)
  gemm_w8a8::RowRuns runs;
  const int8_t* w;  // the first column block, [Kp/4][16][4]; the next ones Kp * 16 further
  int64_t w_block_stride;
  const float* sx;
  const gemm_w8a8::CodesOut* codes;
  int64_t m, n0;
};

template <int MR, int NB, bool kNonNegative>
void tile(const Tile& t, const PackedW8LinearArgs& a) {
  __m512i acc[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  const int8_t* wp = t.w;
  for (int64_t i = 0; i < t.runs.n_runs; ++i) {
    const uint8_t* ap[MR];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) ap[r] = t.row[r] + t.runs.run_offset[i];
    for (int64_t g = 0; g < t.runs.run_groups; ++g, wp += 64) {
      __m512i w[NB];
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) w[j] = _mm512_loadu_si512(wp + j * t.w_block_stride);
      const int64_t off = 4 * g;
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        __m512i av = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap[r] + off));
        if constexpr (!kNonNegative) av = _mm512_xor_si512(av, flip);
TERSOR_UNROLL
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, w[j]);
      }
    }
  }

TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = t.n0 + 16 * j;
    // Never taken (the driver's blocks start below N), but without it GCC 12 kept the 24
    // accumulators of the wider tiles on the stack (two stores per vpdpbusd).
    if (n >= a.N) break;
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512i comp = kNonNegative
                             ? _mm512_setzero_si512()
                             : _mm512_slli_epi32(_mm512_loadu_si512(a.colsum + n), 7);
    if (t.codes) {  // a.w_scale / a.bias: the folded factors m / c (row_blocks.h CodesOut)
      const gemm_w8a8::CodesOut& o = *t.codes;
      const __m512 mv = _mm512_loadu_ps(a.w_scale + n), cv = _mm512_loadu_ps(a.bias + n);
      const __m512 lo = _mm512_set1_ps(o.lo), hi = _mm512_set1_ps(o.hi);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], comp)), mv, cv);
        if (o.res) {
          const __m128i res = _mm_maskz_loadu_epi8(mask, o.res + (t.m + r) * o.ldres + n);
          v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(res)),
                              _mm512_set1_ps(o.res_scale), v);
        }
        const __m512i q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
        int8_t* dst = o.q + (t.m + r) * o.ldq + n;
        if (mask == 0xffff)  // a whole block: a plain store (see the comment above the driver)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(q));
        else
          _mm_mask_storeu_epi8(dst, mask, _mm512_cvtepi32_epi8(q));
      }
    } else {
      const __m512 sw = _mm512_loadu_ps(a.w_scale + n);
      const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], comp));
        const __m512 s = _mm512_mul_ps(_mm512_set1_ps(t.sx[r]), sw);
        _mm512_mask_storeu_ps(a.y + (t.m + r) * a.ldy + n, mask, _mm512_fmadd_ps(v, s, b));
      }
    }
  }
}

using TileFn = void (*)(const Tile&, const PackedW8LinearArgs&);

template <int MR, bool kNonNegative>
constexpr TileFn pick_nb(int nb) {
  return nb == 1 ? tile<MR, 1, kNonNegative>
                 : nb == 2 ? tile<MR, 2, kNonNegative> : tile<MR, 3, kNonNegative>;
}

template <bool kNonNegative>
TileFn pick(int mr, int nb) {
  switch (mr) {
    case 1: return pick_nb<1, kNonNegative>(nb);
    case 2: return pick_nb<2, kNonNegative>(nb);
    case 3: return pick_nb<3, kNonNegative>(nb);
    case 4: return pick_nb<4, kNonNegative>(nb);
    case 5: return pick_nb<5, kNonNegative>(nb);
    case 6: return pick_nb<6, kNonNegative>(nb);
    case 7: return pick_nb<7, kNonNegative>(nb);
    default: return pick_nb<8, kNonNegative>(nb);
  }
}

}  // namespace

void run_w8a8_avx512(const ConvCall& k) {
  const ConvW8A8Args& c = k.c;
  const DirectRuns d = direct_runs(c, k.in);
  if (!direct_applies(c, d)) return run_gathered(k);
  const PackedW8LinearArgs a = direct_gemm_args(c, d);
  const gemm_w8a8::CodesOut codes = direct_codes(c);
  const int64_t Kp = round_up(a.K, 4);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, c.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    gemm_w8a8::run_row_blocks<kMR, kNB>(
        a,
        [&](int64_t m0, int64_t m1, gemm_w8a8::RowBlock<kMR>& block) {
          direct_rows(c, k.in, d, &codes, m0, m1, block);
        },
        [&](const gemm_w8a8::RowBlock<kMR>& block, int64_t m, int mr, int64_t blk, int nb,
            int64_t shift) {
          const int64_t i = m % gemm_w8a8::kRowsPerBlock;
          const uint8_t* rows[kMR];
          for (int r = 0; r < kMR; ++r) rows[r] = r < mr ? block.row[i + r] + shift : nullptr;
          const Tile t{rows, block.runs, a.w + blk * Kp * 16, Kp * 16, block.sx + i,
                       block.codes, m, blk * 16};
          (block.non_negative[i / kMR] ? pick<true>(mr, nb) : pick<false>(mr, nb))(t, a);
        });
  });
}

}  // namespace tersor::conv
