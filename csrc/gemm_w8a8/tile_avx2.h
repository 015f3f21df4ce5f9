// The AVX2 W8A8 micro-kernel (CPUs without VNNI), shared by the GEMM (gemm_w8a8_avx2.cpp) and
// the direct convolution (conv/conv_w8a8_avx2.cpp). Include only from *_avx2.cpp files.
//
// vpmaddubsw multiplies u8 by s8 into saturating int16 pair sums. Two variants:
//  - signed activations: the sign trick (llama.cpp), |a| * sign(w, a) == a * w; with |a|, |w|
//    <= 127 a pair sum is at most 2 * 127 * 127 < 32767. abs + one sign per weight vector cost
//    3 extra uops per 64 MACs: measured 49 GMAC/s per core against 65-74 without them (Zen 3).
//    Tiles of 3-4 rows take it the other way round, |w| * sign(a, w): one abs per weight
//    vector instead of one per row.
//  - non-negative activations (every conv after a ReLU): the s8 codes 0..127 are valid u8
//    operands as they are, with the same no-overflow bound, so the plain u8 x s8 product is
//    exact and the extra uops go. The caller picks the variant per tile from the codes.
// Then vpmaddwd with ones widens the pairs to int32.
//
// Register tile: MR <= 4 rows x 16 columns (2 ymm each), one pointer per row (where the codes
// come from: RowRuns in row_blocks.h).
// The weight block is the W8Tile column block of common/formats.h: [Kp/4][16 columns][4 k].
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/linear_args.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "gemm_w8a8/row_blocks.h"

namespace tersor::gemm_w8a8::avx2 {

constexpr int kMR = 4;

template <int MR>
static inline void store_codes_tile(const __m256i (&acc)[MR][2], const float* m_scale,
                                    const float* c, int64_t N, const CodesOut& o, int64_t m0,
                                    int64_t n0) {
  const int64_t cols = std::min<int64_t>(16, N - n0);
  const __m256 lo = _mm256_set1_ps(o.lo), hi = _mm256_set1_ps(o.hi);
  const __m256 rs = _mm256_set1_ps(o.res_scale);
  const __m256 m0v = _mm256_loadu_ps(m_scale + n0), m1v = _mm256_loadu_ps(m_scale + n0 + 8);
  const __m256 c0v = _mm256_loadu_ps(c + n0), c1v = _mm256_loadu_ps(c + n0 + 8);  // [Np]
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    __m256 t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][0]), m0v, c0v);
    __m256 t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][1]), m1v, c1v);
    if (o.res) {
      alignas(16) int8_t tail[16] = {};
      const int8_t* rp = o.res + (m0 + r) * o.ldres + n0;
      if (cols < 16) {
        for (int64_t i = 0; i < cols; ++i) tail[i] = rp[i];
        rp = tail;
      }
      const __m128i r16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp));
      t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(r16)), rs, t0);
      t1 = _mm256_fmadd_ps(
          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(r16, r16))), rs, t1);
    }
    const __m256i q0 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t0, lo), hi));
    const __m256i q1 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t1, lo), hi));
    const __m256i q01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
    const __m128i codes =
        _mm_packs_epi16(_mm256_castsi256_si128(q01), _mm256_extracti128_si256(q01, 1));
    int8_t* dst = o.q + (m0 + r) * o.ldq + n0;
    if (cols == 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), codes);
    } else {
      alignas(16) int8_t tmp[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(tmp), codes);
      for (int64_t i = 0; i < cols; ++i) dst[i] = tmp[i];
    }
  }
}

struct ARows {
  const uint8_t* row[kMR];
  RowRuns runs;
  // Where the weight block is read once (a decode step: every row in this tile), each line is
  // prefetched kPrefetchLines ahead with the hint of common/weight_stream.h. Zen 2, 2 threads,
  // weights from DRAM, M = 1: 0.90-0.93x the time; 16 lines alike, 24 slower.
  int prefetch = 0;  // 0: none, 1: T0, 2: NTA
};
constexpr int64_t kPrefetchLines = 8;

// Where a tile's MR rows go: fp32 at y (row stride ldy), or codes (rows m.. of *codes).
struct TileOut {
  float* y;
  int64_t ldy;
  const CodesOut* codes;
  int64_t m;
};

// Writes the tile's MR rows, columns n0 .. n0 + 16 * nb (nb column blocks, their weight
// blocks Kp * 16 bytes apart: one call per row tile for short K, see run_row_blocks).
template <int MR, bool kNonNegative>
static inline void tile(const ARows& src, const int8_t* wblock, const float* sx,
                        const PackedW8LinearArgs& a, const TileOut& out, int64_t n0, int nb) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t block_bytes = (a.K + 3) / 4 * 4 * 16;
  for (int j = 0; j < nb; ++j, wblock += block_bytes, n0 += 16) {
    __m256i acc[MR][2];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const int8_t* wp = wblock;
    for (int64_t i = 0; i < src.runs.n_runs; ++i) {
      const uint8_t* ap[MR];
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) ap[r] = src.row[r] + src.runs.run_offset[i];
#pragma GCC unroll 2  // measured 5-15% on short K (1x1 convs: 16 groups per run)
      for (int64_t g = 0; g < src.runs.run_groups; ++g, wp += 64) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32));
        // signed rows, 3 or 4 of them: |w| once per weight vector and each row's codes given
        // w's signs, |w| * (a sign(w)) == a * w: two abs per group instead of one per row
        // (Zen 3, 1 thread: a 16-channel 1x1 layer and the 7x7 stem 0.92-0.96x the time)
        constexpr bool kAbsW = !kNonNegative && MR >= 3;
        const __m256i aw0 = kAbsW ? _mm256_abs_epi8(w0) : w0;
        const __m256i aw1 = kAbsW ? _mm256_abs_epi8(w1) : w1;
        const int64_t off = 4 * g;
        const char* ahead = reinterpret_cast<const char*>(wp + kPrefetchLines * 64);
        if (src.prefetch == 2) _mm_prefetch(ahead, _MM_HINT_NTA);
        if (src.prefetch == 1) _mm_prefetch(ahead, _MM_HINT_T0);
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          const __m256i av = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap[r] + off));
          __m256i p0, p1;
          if constexpr (kNonNegative) {
            p0 = _mm256_maddubs_epi16(av, w0);
            p1 = _mm256_maddubs_epi16(av, w1);
          } else if constexpr (kAbsW) {
            p0 = _mm256_maddubs_epi16(aw0, _mm256_sign_epi8(av, w0));
            p1 = _mm256_maddubs_epi16(aw1, _mm256_sign_epi8(av, w1));
          } else {
            const __m256i aa = _mm256_abs_epi8(av);
            p0 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w0, av));
            p1 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w1, av));
          }
          acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
          acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
        }
      }
    }
    if (out.codes) {
      store_codes_tile<MR>(acc, a.w_scale, a.bias, a.N, *out.codes, out.m, n0);
    } else {
      store_int8_tile<MR>(acc, sx, a.w_scale, a.bias, a.N, out.y, out.ldy, n0);
    }
  }
}

// tile<mr, non_negative>(...) for a runtime row count 1..4.
static inline void run_tile(int mr, bool non_negative, const ARows& src, const int8_t* wblock,
                            const float* sx, const PackedW8LinearArgs& a, const TileOut& out,
                            int64_t n0, int nb = 1) {
  using TileFn = void (*)(const ARows&, const int8_t*, const float*, const PackedW8LinearArgs&,
                          const TileOut&, int64_t, int);
  static constexpr TileFn kTiles[2][kMR] = {
      {tile<1, false>, tile<2, false>, tile<3, false>, tile<4, false>},
      {tile<1, true>, tile<2, true>, tile<3, true>, tile<4, true>}};
  kTiles[non_negative][mr - 1](src, wblock, sx, a, out, n0, nb);
}

using RowBlock = gemm_w8a8::RowBlock<kMR>;

// run_row_blocks (row_blocks.h) with this tile. Short K (Kp <= kShortK) and rows for 8 row
// blocks per thread (no column chunks needed to share the work): a row tile runs up to
// kShortBlocks column blocks in one call (their weights, <= 16 KiB, stay in L1 across the row
// block's tiles); a 1x1 layer over 16-24 channels spent more of its time in the call, the
// tile's set-up and the driver's per-tile steps than in its dot products (Zen 3: 1.35-1.55x the
// speed of one block per call). Longer K: one column block at a time, its weight block in L1
// while every row tile of the row block runs over it.
constexpr int64_t kShortK = 128, kShortBlocks = 8;
template <typename Prepare>
static inline void run_row_blocks(const PackedW8LinearArgs& a, Prepare&& prepare) {
  const int64_t Kp = (a.K + 3) / 4 * 4;
  const auto tile = [&](const RowBlock& block, int64_t m, int mr, int64_t blk, int nb,
                        int64_t shift) {
    const int64_t i = m % kRowsPerBlock;
    auto at = [shift](const uint8_t* p) { return p ? p + shift : p; };  // unused ones: null
    const uint8_t* const* r = block.row + i;
    const ARows src{{at(r[0]), at(r[1]), at(r[2]), at(r[3])}, block.runs};
    const TileOut out{a.y + m * a.ldy, a.ldy, block.codes, m};
    run_tile(mr, block.non_negative[i / kMR], src, a.w + blk * Kp * 16, block.sx + i, a, out,
             blk * 16, nb);
  };
  if (Kp <= kShortK && (a.M + kRowsPerBlock - 1) / kRowsPerBlock >= 8 * a.nthreads) {
    gemm_w8a8::run_row_blocks<kMR, kShortBlocks>(a, prepare, tile);
  } else {
    gemm_w8a8::run_row_blocks<kMR, 1>(a, prepare, tile);
  }
}

// True when no byte of p[0, n) has its sign bit set (every s8 code >= 0).
static inline bool all_non_negative(const uint8_t* p, int64_t n) {
  __m256i any = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    any = _mm256_or_si256(any, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
  uint8_t tail = 0;
  for (; i < n; ++i) tail |= p[i];
  return _mm256_movemask_epi8(any) == 0 && (tail & 0x80) == 0;
}

}  // namespace tersor::gemm_w8a8::avx2
