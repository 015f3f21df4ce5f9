// The AVX2 W8A8 micro-kernel (CPUs without VNNI), shared by the GEMM (gemm_w8a8_avx2.cpp) and
// the direct convolution (conv/conv_w8a8_avx2.cpp). Include only from *_avx2.cpp files.
//
// vpmaddubsw multiplies u8 by s8 into saturating int16 pair sums; vpmaddwd with ones then
// widens the pairs to int32. The variants, by the row codes' signs and the weights' range
// (Signs below):
//  - non-negative activations (every conv after a ReLU): the s8 codes 0..127 are valid u8
//    operands as they are; a pair sum is at most 2 * 127 * 127 < 32767, so u8 x s8 is exact.
//  - signed activations in the GEMM's own row buffer (kXorA): the quantized rows are split
//    once into |a| and a's sign masks m (split_signs), and each product is |a| x (w XOR m).
//    Where a < 0 that is |a| * (-w - 1) = a * w - |a|, so a row's accumulators start at its
//    sum of |a| over the negative codes and come out exact; |a| <= 127 against any s8 cannot
//    saturate. One XOR per row and weight vector beside the two multiplies and the add, as
//    kXorW, but nothing staged: the weights are read as packed. A row's |a| and masks
//    alternate by 4-k group, so both broadcasts read one line (kept apart, K = 4096 put a
//    tile's 8 streams in one L1 set: 0.8x).
//  - signed activations read in place (the convolutions), 3-4 rows (kXorW): the same with the
//    roles swapped, |w| x (a XOR m), m = 0xFF where w < 0: |w| * (-a - 1) = a * w - |w|, the
//    accumulators at the column's sum of |w| over its negative codes (XorWeights stages |w|,
//    the masks and the sums once per column block and thread). Any vector ALU takes the XOR,
//    where the sign trick's vpsignb (below) competes with vpmaddubsw / vpmaddwd for the two
//    multiply ports on Zen. Zen 3, one thread, 256-512 signed rows: 65-69 -> 72-75 GMAC/s
//    (non-negative rows: 90).
//  - signed activations, 1-2 rows (a decode step, bound by the weight stream): the sign trick
//    (llama.cpp), |a| * sign(w, a) == a * w, with no set-up per column block.
//  - narrow weights (every |w| <= 64: W8A8Config(weight_bits=7), OpenVINO's choice on CPUs
//    without VNNI), any rows: u8 (a + 128) x s8 w, whose pair sums stay within 255 * 64 * 2 <
//    32768; the accumulators start at -128 * colsum. The GEMM's quantizer writes the rows as
//    a + 128 already (a XOR 0x80); codes read in place (the convolutions) are flipped once per
//    row and k-step, shared by both weight vectors. The non-negative tile's three ops per row
//    and weight vector: Zen 3, one thread, 90 GMAC/s against the XOR tile's 75.
//  - narrow weights and non-negative rows (a 7-bit-weight convolution after a ReLU): a pair
//    sum is at most 2 * 127 * 64 = 16256, so the int16 sums of two 4-k groups add exactly
//    (vpaddw, <= 32512) before one vpmaddwd widens both. That is 6 multiply-port ops per row,
//    weight vector and 8 k instead of 8. Zen 3: a tile over an L1-resident block 84 -> 104
//    GMAC/s; 3x3 layers of 64-512 channels 1.07-1.12x on one thread, 0.95-1.05x on two;
//    ResNet-18 (weight_bits=7, batch 1 and 8, two threads) 1.02x.
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

// Codes out (CodesOut in row_blocks.h), two rows per byte pack. The upper bound is taken in
// fp32, which keeps vcvtps2dq in range; the lower one on the packed bytes, where a t below
// INT32_MIN (converted to INT32_MIN, saturated to -128 by the packs) ends at lo as well. Both
// bounds are integers, so round(clamp(t)) == clamp(round(t)): the codes are the ref's. Per pair
// of rows: one vpacksswb, one vpermd, one vpmaxsb where the row-at-a-time form spent two
// lane extracts and permutes and two fp32 max per row (short-K 1x1 layers, where K is 16-160,
// spend a fifth or more of their tile here).
template <int MR>
static inline void store_codes_tile(const __m256i (&acc)[MR][2], const float* m_scale,
                                    const float* c, int64_t N, const CodesOut& o, int64_t m0,
                                    int64_t n0) {
  const int64_t cols = std::min<int64_t>(16, N - n0);
  const __m256 hi = _mm256_set1_ps(o.hi), rs = _mm256_set1_ps(o.res_scale);
  const __m256i lo = _mm256_set1_epi8(static_cast<int8_t>(o.lo));
  const __m256 m0v = _mm256_loadu_ps(m_scale + n0), m1v = _mm256_loadu_ps(m_scale + n0 + 8);
  const __m256 c0v = _mm256_loadu_ps(c + n0), c1v = _mm256_loadu_ps(c + n0 + 8);  // [Np]
  const int8_t* const res = o.res;
  int8_t* const q = o.q;
  const int64_t ldq = o.ldq, ldres = o.ldres;
  // row r as 16 int16: lane 0 = columns 0-3, 8-11; lane 1 = columns 4-7, 12-15
  __m256i q16[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    __m256 t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][0]), m0v, c0v);
    __m256 t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][1]), m1v, c1v);
    if (res) {
      alignas(16) int8_t tail[16] = {};
      const int8_t* rp = res + (m0 + r) * ldres + n0;
      if (cols < 16) {
        for (int64_t i = 0; i < cols; ++i) tail[i] = rp[i];
        rp = tail;
      }
      const __m128i r16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp));
      t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(r16)), rs, t0);
      t1 = _mm256_fmadd_ps(
          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(r16, r16))), rs, t1);
    }
    q16[r] = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_min_ps(t0, hi)),
                                _mm256_cvtps_epi32(_mm256_min_ps(t1, hi)));
  }
  // packs of rows r, r + 1 holds, in dwords: r 0-3, r 8-11, r+1 0-3, r+1 8-11 | r 4-7, r 12-15,
  // r+1 4-7, r+1 12-15; vpermd puts row r in the low lane and row r + 1 in the high one
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
TERSOR_UNROLL
  for (int r = 0; r < MR; r += 2) {
    const __m256i pair = _mm256_max_epi8(
        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16[r], q16[r + 1 < MR ? r + 1 : r]),
                                    order),
        lo);
    const int rows = r + 1 < MR ? 2 : 1;
    for (int i = 0; i < rows; ++i) {
      const __m128i codes =
          i ? _mm256_extracti128_si256(pair, 1) : _mm256_castsi256_si128(pair);
      int8_t* dst = q + (m0 + r + i) * ldq + n0;
      if (cols == 16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), codes);
      } else {
        alignas(16) int8_t tmp[16];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), codes);
        for (int64_t j = 0; j < cols; ++j) dst[j] = tmp[j];
      }
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
  bool biased = false;  // the codes are stored as u8 a + 128 (narrow weights only)
  // Rows split by split_signs (kXorA), neg_sum[r] row r's sum of |a| over its negative codes.
  bool split = false;
  const int32_t* neg_sum = nullptr;
};
constexpr int64_t kPrefetchLines = 8;

// Where a tile's MR rows go: fp32 at y (row stride ldy), or codes (rows m.. of *codes).
struct TileOut {
  float* y;
  int64_t ldy;
  const CodesOut* codes;
  int64_t m;
};

// the variants above; narrow weights: rows stored as a + 128 (kNarrowBiased) or as s8 codes,
// flipped in the tile (kNarrowFlip)
enum class Signs {
  kNonNegative,
  kXorW,
  kSignA,
  kNarrowBiased,
  kNarrowFlip,
  kNarrowNonNegative,
  kXorA
};
constexpr int kVariants = 7;

constexpr int64_t kShortBlocks = 8;  // the most column blocks one tile call runs (see below)

// One thread's kXorW operands for the column blocks its tiles are on, staged once per block
// (and row block) instead of once per row tile: abs and a compare per weight vector in every
// 4-row tile cost 6-7% of the tile's time (Zen 3). The drivers run every row tile of a column
// block (range) before the next, so one entry is enough.
//
//   ops[j][g] = | |w| cols 0-7 | |w| cols 8-15 | neg cols 0-7 | neg cols 8-15 |   128 bytes
//                 (one 4-k group g of column block j; neg = 0xFF where w < 0)
//   sums[16 j + c] = sum over column c's negative codes of |w|, where its accumulators start
namespace {  // its Scratch member has internal linkage (common/parallel.h)
struct XorWeights {
  const int8_t* src = nullptr;  // the weight blocks staged now
  int nb = 0;
  Scratch<uint8_t> ops;
  int64_t capacity = 0;
  alignas(32) int32_t sums[16 * kShortBlocks];

  // Stages nb column blocks (block_bytes apart) at w, unless they are the staged ones.
  // vpmaddubsw of ones by min(w, 0) gives pair sums in [-254, 0]; 128 of them still fit int16
  // before vpmaddwd widens them.
  void stage(const int8_t* w, int64_t block_bytes, int n) {
    if (w == src && n == nb) return;
    if (2 * n * block_bytes > capacity) {
      capacity = 2 * n * block_bytes;
      ops = alloc_scratch<uint8_t>(capacity);
    }
    const __m256i zero = _mm256_setzero_si256(), ones8 = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    const int64_t groups = block_bytes / 64;
    uint8_t* dst = ops.get();
    for (int j = 0; j < n; ++j) {
      const int8_t* wb = w + j * block_bytes;
      __m256i s32[2] = {zero, zero};
      for (int64_t g0 = 0; g0 < groups; g0 += 128) {
        __m256i s16[2] = {zero, zero};
        const int64_t g1 = std::min<int64_t>(groups, g0 + 128);
        for (int64_t g = g0; g < g1; ++g, dst += 128) {
TERSOR_UNROLL
          for (int h = 0; h < 2; ++h) {
            const __m256i v =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 64 * g + 32 * h));
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 32 * h), _mm256_abs_epi8(v));
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64 + 32 * h),
                               _mm256_cmpgt_epi8(zero, v));
            s16[h] = _mm256_add_epi16(s16[h],
                                      _mm256_maddubs_epi16(ones8, _mm256_min_epi8(v, zero)));
          }
        }
TERSOR_UNROLL
        for (int h = 0; h < 2; ++h)
          s32[h] = _mm256_add_epi32(s32[h], _mm256_madd_epi16(s16[h], ones16));
      }
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h)
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums + 16 * j + 8 * h),
                           _mm256_sub_epi32(zero, s32[h]));
    }
    src = w;
    nb = n;
  }
};
}  // namespace

// The accumulators' start: 0, kXorW the column's sum of |w| over its negative codes (staged
// in neg_sums), kXorA the row's sum of |a| over its negative codes (row_sums), narrow weights
// -128 * colsum.
template <int MR, Signs kSigns>
static inline void start_acc(__m256i (&acc)[MR][2], const PackedW8LinearArgs& a, int64_t n0,
                             const int32_t* neg_sums, const int32_t* row_sums = nullptr) {
  const __m256i zero = _mm256_setzero_si256();
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    __m256i start = zero;
    if constexpr (kSigns == Signs::kXorW)
      start = _mm256_load_si256(reinterpret_cast<const __m256i*>(neg_sums + 8 * h));
    if constexpr (kSigns == Signs::kNarrowBiased || kSigns == Signs::kNarrowFlip)
      start = _mm256_sub_epi32(zero, _mm256_slli_epi32(_mm256_loadu_si256(
                  reinterpret_cast<const __m256i*>(a.colsum + n0 + 8 * h)), 7));
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      acc[r][h] = kSigns == Signs::kXorA ? _mm256_set1_epi32(row_sums[r]) : start;
  }
}

// acc += the rows' codes ap[r][0 .. 4 * groups) x `groups` 4-k groups of one column block at
// wp (64 bytes each; kXorW: the staged 128-byte groups; kXorA: rows of 8 bytes per group, |a|
// then the masks). prefetch: ARows::prefetch, of the
// line prefetch_lines ahead, a template argument in the loops (dot_groups below). kHalf: the
// block's columns 0-7 only (acc[r][1] untouched), the last block where N % 16 is 1-8: a
// 1x1 layer with 24 outputs (MobileNetV2) spent a quarter of its products on zero columns.
template <int MR, Signs kSigns, int prefetch, bool kHalf = false>
static inline void dot_groups_with(__m256i (&acc)[MR][2], const uint8_t* const (&ap)[MR],
                                   const int8_t* wp, int64_t groups, int64_t prefetch_lines) {
  constexpr bool kXor = kSigns == Signs::kXorW;
  constexpr bool kNarrow = kSigns == Signs::kNarrowBiased || kSigns == Signs::kNarrowFlip;
  constexpr int64_t step = kXor ? 128 : 64;  // bytes per 4-k group
  const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  int64_t g = 0;
  if constexpr (kSigns == Signs::kNarrowNonNegative) {
    // two groups per step, their int16 pair sums added before one vpmaddwd (see the top)
    for (; g + 2 <= groups; g += 2, wp += 128) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32));
      const __m256i w2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 64));
      const __m256i w3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 96));
      const char* ahead = reinterpret_cast<const char*>(wp + prefetch_lines * 64);
      if constexpr (prefetch == 2)
        _mm_prefetch(ahead, _MM_HINT_NTA), _mm_prefetch(ahead + 64, _MM_HINT_NTA);
      if constexpr (prefetch == 1)
        _mm_prefetch(ahead, _MM_HINT_T0), _mm_prefetch(ahead + 64, _MM_HINT_T0);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m256i a0 = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap[r] + 4 * g));
        const __m256i a1 =
            _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap[r] + 4 * g + 4));
        const __m256i p0 =
            _mm256_add_epi16(_mm256_maddubs_epi16(a0, w0), _mm256_maddubs_epi16(a1, w2));
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
        if constexpr (!kHalf) {
          const __m256i p1 =
              _mm256_add_epi16(_mm256_maddubs_epi16(a0, w1), _mm256_maddubs_epi16(a1, w3));
          acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
        }
      }
    }
  }
#pragma GCC unroll 2  // measured 5-15% on short K (1x1 convs: 16 groups per run)
  for (; g < groups; ++g, wp += step) {
    // kXorW: |w| and w's sign masks (staged), else w
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32));
    const __m256i neg0 =
        kXor ? _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + 64)) : zero;
    const __m256i neg1 =
        kXor ? _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + 96)) : zero;
    const int64_t off = (kSigns == Signs::kXorA ? 8 : 4) * g;
    const char* ahead = reinterpret_cast<const char*>(wp + prefetch_lines * 64);
    if constexpr (prefetch == 2) _mm_prefetch(ahead, _MM_HINT_NTA);
    if constexpr (prefetch == 1) _mm_prefetch(ahead, _MM_HINT_T0);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      __m256i av = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap[r] + off));
      if constexpr (kSigns == Signs::kNarrowFlip) av = _mm256_xor_si256(av, flip);
      __m256i am = zero;  // kXorA: the row's sign masks
      if constexpr (kSigns == Signs::kXorA)
        am = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap[r] + off + 4));
      // the products of one weight vector (columns 0-7 or 8-15)
      const auto dot = [&](__m256i w, __m256i neg) {
        if constexpr (kSigns == Signs::kNonNegative || kSigns == Signs::kNarrowNonNegative ||
                      kNarrow) {
          return _mm256_maddubs_epi16(av, w);
        } else if constexpr (kXor) {
          return _mm256_maddubs_epi16(w, _mm256_xor_si256(av, neg));
        } else if constexpr (kSigns == Signs::kXorA) {
          return _mm256_maddubs_epi16(av, _mm256_xor_si256(w, am));
        } else {
          return _mm256_maddubs_epi16(_mm256_abs_epi8(av), _mm256_sign_epi8(w, av));
        }
      };
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(dot(w0, neg0), ones));
      if constexpr (!kHalf)
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(dot(w1, neg1), ones));
    }
  }
}

// The prefetch hint picked once per call: tested inside the loops, it split their bodies (the
// convolutions never prefetch). Zen 3, static int8 layers at batch 8, four alternating runs:
// 1.0-1.25x on 3x3 over 256 channels and 1x1 over 144, the same on the others.
template <int MR, Signs kSigns, bool kHalf = false>
static inline void dot_groups(__m256i (&acc)[MR][2], const uint8_t* const (&ap)[MR],
                              const int8_t* wp, int64_t groups, int prefetch,
                              int64_t prefetch_lines = kPrefetchLines) {
  if (prefetch == 1)
    return dot_groups_with<MR, kSigns, 1, kHalf>(acc, ap, wp, groups, prefetch_lines);
  if (prefetch == 2)
    return dot_groups_with<MR, kSigns, 2, kHalf>(acc, ap, wp, groups, prefetch_lines);
  dot_groups_with<MR, kSigns, 0, kHalf>(acc, ap, wp, groups, prefetch_lines);
}

// Writes the tile's MR rows, columns n0 .. n0 + 16 * nb (nb column blocks, their weight
// blocks Kp * 16 bytes apart; nb > 1 for short K, see run_row_blocks). kXorW: xw holds the nb
// blocks staged (XorWeights); wblock is not read. Inlined into tile_span's loop.
template <int MR, Signs kSigns>
__attribute__((always_inline)) static inline void tile(const ARows& src, const int8_t* wblock,
                                                      const float* sx,
                                                      const PackedW8LinearArgs& a,
                                                      const TileOut& out, int64_t n0, int nb,
                                                      const XorWeights* xw) {
  constexpr bool kXor = kSigns == Signs::kXorW;
  const int64_t block_bytes = (a.K + 3) / 4 * 4 * 16;
  const int64_t step = kXor ? 128 : 64;  // bytes per 4-k group
  const int8_t* wsrc = kXor ? reinterpret_cast<const int8_t*>(xw->ops.get()) : wblock;
  for (int j = 0; j < nb; ++j, wsrc += step * block_bytes / 64, n0 += 16) {
    __m256i acc[MR][2];
    start_acc<MR, kSigns>(acc, a, n0, kXor ? xw->sums + 16 * j : nullptr, src.neg_sum);
    const int8_t* wp = wsrc;
    const bool half = a.N - n0 <= 8;
    for (int64_t i = 0; i < src.runs.n_runs; ++i, wp += step * src.runs.run_groups) {
      const uint8_t* ap[MR];
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) ap[r] = src.row[r] + src.runs.run_offset[i];
      if (half) {
        dot_groups<MR, kSigns, true>(acc, ap, wp, src.runs.run_groups, src.prefetch);
      } else {
        dot_groups<MR, kSigns>(acc, ap, wp, src.runs.run_groups, src.prefetch);
      }
    }
    if (out.codes) {
      store_codes_tile<MR>(acc, a.w_scale, a.bias, a.N, *out.codes, out.m, n0);
    } else {
      store_int8_tile<MR>(acc, sx, a.w_scale, a.bias, a.N, out.y, out.ldy, n0);
    }
  }
}

// split: the rows went through split_signs (kXorA); xor_w: kXorW's staging is available.
static inline Signs pick_signs(bool biased, bool non_negative, bool narrow_w, bool split,
                               bool xor_w) {
  return biased                    ? Signs::kNarrowBiased
         : non_negative && narrow_w ? Signs::kNarrowNonNegative
         : non_negative             ? Signs::kNonNegative
         : narrow_w                 ? Signs::kNarrowFlip
         : split                    ? Signs::kXorA
         : xor_w                    ? Signs::kXorW
                                    : Signs::kSignA;
}

// The tile for a runtime row count 1..4 and the rows' signs. Non-negative rows take the paired
// tile with narrow weights. Signed rows take the narrow weights' tile where the weights allow
// it, else kXorA where the rows are split (src.split), else kXorW from 3 rows when the
// caller keeps staged operands (xw), else kSignA. Rows stored as a + 128 (src.biased) take
// kNarrowBiased.
static inline void run_tile(int mr, bool non_negative, const ARows& src, const int8_t* wblock,
                            const float* sx, const PackedW8LinearArgs& a, const TileOut& out,
                            int64_t n0, XorWeights* xw, int nb = 1) {
  using TileFn = void (*)(const ARows&, const int8_t*, const float*, const PackedW8LinearArgs&,
                          const TileOut&, int64_t, int, const XorWeights*);
  static constexpr TileFn kTiles[kVariants][kMR] = {
      {tile<1, Signs::kNonNegative>, tile<2, Signs::kNonNegative>,
       tile<3, Signs::kNonNegative>, tile<4, Signs::kNonNegative>},
      {tile<1, Signs::kXorW>, tile<2, Signs::kXorW>, tile<3, Signs::kXorW>,
       tile<4, Signs::kXorW>},
      {tile<1, Signs::kSignA>, tile<2, Signs::kSignA>, tile<3, Signs::kSignA>,
       tile<4, Signs::kSignA>},
      {tile<1, Signs::kNarrowBiased>, tile<2, Signs::kNarrowBiased>,
       tile<3, Signs::kNarrowBiased>, tile<4, Signs::kNarrowBiased>},
      {tile<1, Signs::kNarrowFlip>, tile<2, Signs::kNarrowFlip>, tile<3, Signs::kNarrowFlip>,
       tile<4, Signs::kNarrowFlip>},
      {tile<1, Signs::kNarrowNonNegative>, tile<2, Signs::kNarrowNonNegative>,
       tile<3, Signs::kNarrowNonNegative>, tile<4, Signs::kNarrowNonNegative>},
      {tile<1, Signs::kXorA>, tile<2, Signs::kXorA>, tile<3, Signs::kXorA>,
       tile<4, Signs::kXorA>}};
  const Signs signs =
      pick_signs(src.biased, non_negative, a.narrow_w, src.split, xw && mr >= 3);
  if (signs == Signs::kXorW) xw->stage(wblock, (a.K + 3) / 4 * 4 * 16, nb);
  kTiles[static_cast<int>(signs)][mr - 1](src, wblock, sx, a, out, n0, nb, xw);
}

using RowBlock = gemm_w8a8::RowBlock<kMR>;

// Full row tiles [i0, i1) of a row block (rows m + i of the output), all of one Signs variant,
// in one call: the tile inlined in the loop, where a call per tile through run_tile's table set
// its operands up again each time. Zen 3, two threads: the GEMM over K = 384 1.25-1.31x, 1x1
// layers with a residual 1.31x, 3x3 layers 1.0-1.07x.
template <Signs kSigns>
static void tile_span(const RowBlock& block, int64_t i0, int64_t i1, int64_t m, int64_t shift,
                      const int8_t* wblock, const PackedW8LinearArgs& a, int64_t n0, int nb,
                      const XorWeights* xw) {
  for (int64_t i = i0; i < i1; i += kMR) {
    const uint8_t* const* r = block.row + i;
    const ARows src{{r[0] + shift, r[1] + shift, r[2] + shift, r[3] + shift}, block.runs, 0,
                    block.biased, block.split, block.neg_sum + i};
    const TileOut out{a.y + (m + i) * a.ldy, a.ldy, block.codes, m + i};
    tile<kMR, kSigns>(src, wblock, block.sx + i, a, out, n0, nb, xw);
  }
}

constexpr int64_t kShortK = 192;

// Rows [0, rows) of a row block (rows m .. m + rows of the output), column blocks blk ..
// blk + nb: spans of full tiles of one variant (tile_span), then a short last tile. Signed rows
// take kXorW (xw: this thread's staged operands).
static inline void block_tiles(const RowBlock& block, int64_t m, int rows, int64_t blk, int nb,
                               int64_t shift, const PackedW8LinearArgs& a, XorWeights& xw) {
  using SpanFn = void (*)(const RowBlock&, int64_t, int64_t, int64_t, int64_t, const int8_t*,
                          const PackedW8LinearArgs&, int64_t, int, const XorWeights*);
  static constexpr SpanFn kSpans[kVariants] = {
      tile_span<Signs::kNonNegative>,  tile_span<Signs::kXorW>,
      tile_span<Signs::kSignA>,        tile_span<Signs::kNarrowBiased>,
      tile_span<Signs::kNarrowFlip>,   tile_span<Signs::kNarrowNonNegative>,
      tile_span<Signs::kXorA>};
  const int64_t Kp = (a.K + 3) / 4 * 4;
  const int8_t* wblock = a.w + blk * Kp * 16;
  const auto signs_of = [&](int64_t i) {
    return pick_signs(block.biased, block.non_negative[i / kMR], a.narrow_w, block.split,
                      true);
  };
  const int64_t full = rows / kMR * kMR;
  for (int64_t i = 0; i < full;) {
    const Signs signs = signs_of(i);
    int64_t j = i + kMR;
    while (j < full && signs_of(j) == signs) j += kMR;
    if (signs == Signs::kXorW) xw.stage(wblock, Kp * 16, nb);
    kSpans[static_cast<int>(signs)](block, i, j, m, shift, wblock, a, blk * 16, nb, &xw);
    i = j;
  }
  if (full < rows) {
    auto at = [shift](const uint8_t* p) { return p ? p + shift : p; };  // unused ones: null
    const uint8_t* const* r = block.row + full;
    const ARows src{{at(r[0]), at(r[1]), at(r[2]), at(r[3])}, block.runs, 0, block.biased,
                    block.split, block.neg_sum + full};
    const TileOut out{a.y + (m + full) * a.ldy, a.ldy, block.codes, m + full};
    run_tile(rows - full, block.non_negative[full / kMR], src, wblock, block.sx + full, a, out,
             blk * 16, &xw, nb);
  }
}

// run_row_blocks (row_blocks.h) with this tile. Short K (Kp <= kShortK) and rows for 8 row
// blocks per thread (no column chunks needed to share the work): a row tile runs up to
// kShortBlocks column blocks in one call (their weights, <= 24 KiB, stay in L1 across the row
// block's tiles); a 1x1 layer over 16-24 channels spent more of its time in the call, the
// tile's set-up and the driver's per-tile steps than in its dot products (Zen 3: 1.35-1.55x the
// speed of one block per call). K of 129-192 (1x1 layers over 144-192 channels, 3x3 over 16):
// 1.00-1.06x with the bound at 192 instead of 128. Longer K: one column block at a time, its
// weight block in L1 while every row tile of the row block runs over it. Either way the row
// block's tiles run in one block_tiles call.
template <typename Prepare>
static inline void run_row_blocks(const PackedW8LinearArgs& a, Prepare&& prepare) {
  const int64_t Kp = (a.K + 3) / 4 * 4;
  XorWeights xw;  // this thread's (the drivers run inside the parallel region)
  const auto tiles = [&](const RowBlock& block, int64_t m, int rows, int64_t blk, int nb,
                         int64_t shift) { block_tiles(block, m, rows, blk, nb, shift, a, xw); };
  if (Kp <= kShortK && (a.M + kRowsPerBlock - 1) / kRowsPerBlock >= 8 * a.nthreads) {
    gemm_w8a8::run_row_blocks<kMR, kShortBlocks, true>(a, prepare, tiles);
  } else {
    gemm_w8a8::run_row_blocks<kMR, 1, true>(a, prepare, tiles);
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

// kXorA's rows (see the top): Kp s8 codes at row (Kp a multiple of 4) become 2 Kp bytes in
// place, by 4-k group g: |a| at 8 g, the sign masks (0xFF where a < 0) at 8 g + 4. Returns the
// sum of |a| over the negative codes. Last group first, so no code is overwritten unread.
static inline int32_t split_signs(uint8_t* row, int64_t Kp) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i sums = zero;  // vpsadbw: four 64-bit lane sums of the negative codes' |a|
  int64_t total = 0;
  int64_t i = Kp;
  for (; i % 32; i -= 4) {  // the groups past the last multiple of 32 codes
    const int64_t g4 = i - 4;  // the group's first code
    for (int64_t j = 0; j < 4; ++j) {
      const int8_t v = static_cast<int8_t>(row[g4 + j]);
      row[2 * g4 + j] = static_cast<uint8_t>(v < 0 ? -v : v);
      row[2 * g4 + 4 + j] = v < 0 ? 0xFF : 0;
      if (v < 0) total -= v;
    }
  }
  for (i -= 32; i >= 0; i -= 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i));
    const __m256i neg = _mm256_cmpgt_epi8(zero, v), abs = _mm256_abs_epi8(v);
    sums = _mm256_add_epi64(sums, _mm256_sad_epu8(_mm256_and_si256(abs, neg), zero));
    // dwords (groups) 0, 1 | 4, 5 and 2, 3 | 6, 7, each followed by its masks
    const __m256i lo = _mm256_unpacklo_epi32(abs, neg), hi = _mm256_unpackhi_epi32(abs, neg);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + 2 * i),
                        _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + 2 * i + 32),
                        _mm256_permute2x128_si256(lo, hi, 0x31));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sums);
  return static_cast<int32_t>(total + lanes[0] + lanes[1] + lanes[2] + lanes[3]);
}

}  // namespace tersor::gemm_w8a8::avx2
