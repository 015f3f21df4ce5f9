// AVX2 W4 weight-only GEMM (rules in gemm_w4.h): two ymm per W4Tile (columns 0-7, 8-15).
//
// Codes become exact floats (q - 8) without a convert: the nibble or-ed into the mantissa of
// 2^23 is the float 2^23 + q exactly, and 2^23 + 8 off it is q - 8 (ymm vpermps indexes only 8
// entries, so the AVX-512 kernel's table lookup does not carry over). On Zen 2 the convert and
// the subtract it replaces shared two ports, which bounded the one-row kernel.
//
// Register tiles, both keeping every output's FMAs in k order as the rules ask:
//  - one row (a decode step): NB = 2 column blocks, four FMA chains, whose latency bounds a
//    single block's two; each code put by one vpshufb into the top byte of its lane as the
//    signed nibble q - 8 and converted, (q - 8) * 2^28 exactly, against the row times 2^-28
//    (top_byte, scaled_rows): two ops per 8 weights before the FMA where dequant_byte's or and
//    subtract took three. Zen 3, one core, resident weights: 16.9-17.3 -> 19.0-19.3 GMAC/s.
//    (Three column blocks, six chains: 2-3% more, not kept: coarser splits between threads.)
//    Two rows run it row after row over each pair of blocks (the second reads them from L1 /
//    L2): 1.15x the 2-row half-block tile, whose two FMA chains wait on their latency.
//  - 2-6 rows: up to kMR rows x one 8-column half of a block, each dequantized half serving
//    every row (a whole block for four rows would already need all 16 ymm as accumulators);
//  - 7 rows and more where the dequantized rules apply (gemm_w4.h): slabs of the dequantized
//    weight widened once into L1 (below).
// Zen 2, 2 threads, interleaved against the previous 2-row x 16-column tile with a convert:
// M = 1 0.82-0.94x the time, M = 4-8 0.80-0.83x, M = 32 0.68x (384x1536 .. 8192x2048).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "common/slab_gemm_avx2.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {
namespace {

constexpr int kMR = 6;  // rows of the half-block tile: 2 x 6 accumulators + operands in 16 ymm
// The gemv and the row tiles prefetch each weight stream this many W4Tiles ahead. Weights from
// DRAM (the AVX2 path on Zen 5, 2 threads, 4096x4096 / 2048x8192): 1.10-1.13x faster at 1-2
// rows, 1.16-1.19x at 4, 1.05-1.12x at 8; 64 ahead the same.
constexpr int64_t kPrefetchTiles = 32;
constexpr int64_t kGemvRows = 2;  // rows up to this run the one-row kernel (gemv), row by row

constexpr int shift_of(int i) { return i < 4 ? 8 * i : 8 * (i - 4) + 4; }

// k = 8t + i of 8 columns (one half of a W4Tile) as exact floats q - 8; SH = shift_of(i).
template <int SH>
static inline __m256 dequant(__m256i v) {
  const __m256i bits = _mm256_or_si256(
      _mm256_and_si256(SH ? _mm256_srli_epi32(v, SH) : v, _mm256_set1_epi32(0x0f)),
      _mm256_set1_epi32(0x4B000000));
  return _mm256_sub_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(8388616.0f));
}

// step(shift, i) for k = 8t + i, i < kn (the last W4Tile of K may be partial), each with its
// shift as a compile-time constant; kFull: kn is 8, no checks. (The checks of the whole tiles
// cost a fourth of the one-row kernel's time on Zen 3: the loops run full tiles, then the tail.)
template <bool kFull, typename Step>
static inline void for_each_k(int kn, Step&& step) {
  if (kFull || kn > 0) step(std::integral_constant<int, shift_of(0)>{}, 0);
  if (kFull || kn > 1) step(std::integral_constant<int, shift_of(1)>{}, 1);
  if (kFull || kn > 2) step(std::integral_constant<int, shift_of(2)>{}, 2);
  if (kFull || kn > 3) step(std::integral_constant<int, shift_of(3)>{}, 3);
  if (kFull || kn > 4) step(std::integral_constant<int, shift_of(4)>{}, 4);
  if (kFull || kn > 5) step(std::integral_constant<int, shift_of(5)>{}, 5);
  if (kFull || kn > 6) step(std::integral_constant<int, shift_of(6)>{}, 6);
  if (kFull || kn > 7) step(std::integral_constant<int, shift_of(7)>{}, 7);
}

// After W4Tile t: at the end of a 32-k chunk, acc += fma(8 - z, X_c, part) * s for MR rows of
// one half (8 columns at meta = that half's scale / zero offset), part cleared.
template <int MR>
static inline void close_chunk(const PackedW4LinearArgs& a, const float* X, int64_t nchunks,
                               int64_t c, int64_t meta, __m256 (&acc)[MR], __m256 (&part)[MR]) {
  const __m256 s =
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.scale + meta)));
  const __m256 zc =
      a.zero ? _mm256_sub_ps(_mm256_set1_ps(8.0f),
                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                 _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.zero + meta)))))
             : _mm256_setzero_ps();
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    const __m256 tv = _mm256_fmadd_ps(zc, _mm256_set1_ps(X[r * nchunks + c]), part[r]);
    acc[r] = _mm256_fmadd_ps(tv, s, acc[r]);
    part[r] = _mm256_setzero_ps();
  }
}

static inline bool chunk_ends(int64_t t, int64_t k8_end) {
  return t % (kChunk / 8) == kChunk / 8 - 1 || t == k8_end - 1;
}

// The one-row kernel's widening: the nibbles of a W4Tile half masked once per 4 k (v & 0x0f..
// for k = 8t..8t+3, v >> 4 & 0x0f.. for the next 4), then one vpshufb per k moves byte B of
// every lane into its low byte, the others zeroed, where dequant<SH> shifts and masks: one op
// fewer per k where the widening, not the FMA, bounds the row (Zen 2, interleaved: 0.89-0.93x
// the time with resident weights, 0.90-0.94x from DRAM). Same floats, bit for bit.
template <int B>
static inline __m256 biased_byte(__m256i nib) {  // the floats 2^23 + q
  constexpr char Z = -128;  // vpshufb: a set top bit zeroes the byte
  const __m256i idx = _mm256_setr_epi8(B, Z, Z, Z, 4 + B, Z, Z, Z, 8 + B, Z, Z, Z, 12 + B, Z, Z, Z,
                                       B, Z, Z, Z, 4 + B, Z, Z, Z, 8 + B, Z, Z, Z, 12 + B, Z, Z, Z);
  return _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_shuffle_epi8(nib, idx), _mm256_set1_epi32(0x4B000000)));
}
template <int B>
static inline __m256 dequant_byte(__m256i nib) {
  return _mm256_sub_ps(biased_byte<B>(nib), _mm256_set1_ps(8388616.0f));
}

// (q - 8) * 2^28 for k = 8t + B of 8 columns, from nib = each code as the high half of its
// byte, xor 8 (gemv): byte 4j + B moved to the top byte of lane j is the int32 (q - 8) * 2^28.
template <int B>
static inline __m256 top_byte(__m256i nib) {
  constexpr char Z = -128;  // vpshufb: a set top bit zeroes the byte
  const __m256i idx = _mm256_setr_epi8(Z, Z, Z, B, Z, Z, Z, 4 + B, Z, Z, Z, 8 + B, Z, Z, Z, 12 + B,
                                       Z, Z, Z, B, Z, Z, Z, 4 + B, Z, Z, Z, 8 + B, Z, Z, Z, 12 + B);
  return _mm256_cvtepi32_ps(_mm256_shuffle_epi8(nib, idx));
}

// One row x NB column blocks from block nb0. x: the row, or (kScaled) the row times 2^-28.
template <int NB, bool kScaled>
void gemv(const PackedW4LinearArgs& a, const float* x, const float* X, int64_t nchunks,
          int64_t nb0, float* y) {
  const int64_t G = a.group_size, block_bytes = a.ngroups * G * 8;
  constexpr int kHalves = 2 * NB;  // accumulator j: block j / 2, half j % 2
  __m256 acc[kHalves][1], part[kHalves][1];
TERSOR_UNROLL
  for (int j = 0; j < kHalves; ++j) acc[j][0] = part[j][0] = _mm256_setzero_ps();
  const int64_t k8_end = (a.K + 7) / 8, k8_full = a.K / 8;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m4hi = _mm256_set1_epi8(static_cast<char>(0xf0));
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  // W4Tile t; kFull: all 8 of its k are in K (every tile but a partial last one), so the
  // steps need no bound check.
  auto tile = [&](int64_t t, auto full) {
    constexpr bool kFull = decltype(full)::value;
    const int kn = kFull ? 8 : static_cast<int>(a.K - 8 * t);
    const float* xt = x + 8 * t;
    for (int j = 0; j < NB; ++j)  // past the block's end: the next block's start, or nothing
      _mm_prefetch(reinterpret_cast<const char*>(a.w + (nb0 + j) * block_bytes +
                                                 (t + kPrefetchTiles) * 64),
                   _MM_HINT_T0);
TERSOR_UNROLL
    for (int hi = 0; hi < 2; ++hi) {
      __m256i nib[kHalves];
TERSOR_UNROLL
      for (int j = 0; j < kHalves; ++j) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
            a.w + (nb0 + j / 2) * block_bytes + t * 64 + 32 * (j % 2)));
        if constexpr (kScaled)  // each nibble as the high half of its byte, xor 8: q - 8 signed
          nib[j] = _mm256_xor_si256(_mm256_and_si256(hi ? v : _mm256_slli_epi16(v, 4), m4hi),
                                    flip);
        else
          nib[j] = _mm256_and_si256(hi ? _mm256_srli_epi32(v, 4) : v, m4);
      }
      auto step = [&](auto b) {
        constexpr int B = decltype(b)::value;
        if (!kFull && 4 * hi + B >= kn) return;
        const __m256 xb = _mm256_set1_ps(xt[4 * hi + B]);
TERSOR_UNROLL
        for (int j = 0; j < kHalves; ++j)
          part[j][0] = _mm256_fmadd_ps(
              xb, kScaled ? top_byte<B>(nib[j]) : dequant_byte<B>(nib[j]), part[j][0]);
      };
      step(std::integral_constant<int, 0>{});
      step(std::integral_constant<int, 1>{});
      step(std::integral_constant<int, 2>{});
      step(std::integral_constant<int, 3>{});
    }
    if (chunk_ends(t, k8_end)) {
      const int64_t c = t / (kChunk / 8), g = 8 * t / G;
TERSOR_UNROLL
      for (int j = 0; j < kHalves; ++j)
        close_chunk<1>(a, X, nchunks, c, ((nb0 + j / 2) * a.ngroups + g) * 16 + 8 * (j % 2),
                       acc[j], part[j]);
    }
  };
  for (int64_t t = 0; t < k8_full; ++t) tile(t, std::true_type{});
  if (k8_full < k8_end) tile(k8_full, std::false_type{});
TERSOR_UNROLL
  for (int j = 0; j < kHalves; ++j) {
    const int64_t n = (nb0 + j / 2) * 16 + 8 * (j % 2);
    if (n >= a.N) break;
    const __m256i mask = tail_mask8(a.N - n);
    maskstore8(y + n, mask, _mm256_add_ps(acc[j][0], bias8(a.bias, n, mask)));
  }
}

// MR rows from m0 x half H (0: columns 0-7, 1: 8-15) of block nb.
template <int MR, int H>
void tile_half(const PackedW4LinearArgs& a, const float* X, int64_t nchunks, int64_t m0,
               int64_t nb) {
  const int64_t G = a.group_size, block_bytes = a.ngroups * G * 8;
  const int64_t n = nb * 16 + 8 * H;
  if (n >= a.N) return;
  const float* x = a.x + m0 * a.ldx;
  const uint8_t* wb = a.w + nb * block_bytes + 32 * H;
  __m256 acc[MR], part[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r] = part[r] = _mm256_setzero_ps();
  const int64_t k8_end = (a.K + 7) / 8, k8_full = a.K / 8;
  auto tile = [&](int64_t t, auto full) {
    if (H == 0)  // the tile's line; half 1 reads it again from L2 (this block's whole K)
      _mm_prefetch(reinterpret_cast<const char*>(wb + (t + kPrefetchTiles) * 64), _MM_HINT_T0);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + t * 64));
    for_each_k<decltype(full)::value>(static_cast<int>(std::min<int64_t>(a.K - 8 * t, 8)),
                                       [&](auto sh, int i) {
      const __m256 q = dequant<decltype(sh)::value>(v);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r)
        part[r] = _mm256_fmadd_ps(_mm256_set1_ps(x[r * a.ldx + 8 * t + i]), q, part[r]);
    });
    if (chunk_ends(t, k8_end))
      close_chunk<MR>(a, X, nchunks, t / (kChunk / 8), (nb * a.ngroups + 8 * t / G) * 16 + 8 * H,
                      acc, part);
  };
  for (int64_t t = 0; t < k8_full; ++t) tile(t, std::true_type{});
  if (k8_full < k8_end) tile(k8_full, std::false_type{});
  const __m256i mask = tail_mask8(a.N - n);
  const __m256 b = bias8(a.bias, n, mask);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    maskstore8(a.y + (m0 + r) * a.ldy + n, mask, _mm256_add_ps(acc[r], b));
}

// ---- Rows in batches: slabs widened once into L1 (common/slab_gemm_avx2.h) -----------------
//
// The half-block tile widens its 8 columns once per 6 rows and keeps only 6 FMA chains, while
// Zen 2's FMA (latency 5, two ports) needs 10 in flight. Where the dequantized rules apply
// (gemm_w4.h: 7 rows and more on a machine without AVX-512) the slab driver widens 256 k x 16
// columns of the dequantized weight once into an L1-resident panel, and its one-chain tile
// runs every row over it, 6 rows x 16 columns at a time (12 chains):
//
//   panel[256][16] float = (q - z) * s  (exact)        acc[M][16] float, in memory
//   acc[r] = fma-chain over the slab's k (in order);    y = acc + bias
//
// The scale goes into the panel once per weight, for all rows; the earlier form, which closed
// every 32-k chunk of every row with two FMAs (the rules for 1-6 rows), ran 68-71 GMAC/s on
// 2 Zen 2 cores where the W8 slabs' pure FMA chains run 84-90.

// The dequantized 16 columns of block nb, k in [k0, k1) (k0 a multiple of 8) -> panel[(k - k0)
// * 16 + col], and (MR > 0) rows m0.. of x over them as slab_avx2::tile would, into acc (the
// driver's kWidenRows: the FMAs of these rows overlap the panel's stores, which bound a
// widening loop of its own). A W4Tile's 8 k lie in one group (the group size is a multiple of
// 8), so each group's two halves take their scale and zero once. Per k and half, three ops
// (the gemv's top_byte, its convert, one FMA) and the store:
//
//   (q - 8) 2^28 as int32:  vpshufb of the nibble moved to the top byte of its lane, xor 8
//   w = (q - z) s = fma(float((q - 8) 2^28), s 2^-28, (8 - z) s)
//
// exact: (q - 8) s and (8 - z) s are exact products (<= 15 significant bits; scales are finite
// and >= 0, formats/int4.py, so s 2^-28 is exact too), and so is their sum, (q - z) s. The form
// before spent a vpshufb, an or, a subtract and a multiply per k and half, and a 64-bit
// division, the scale's conversion and the zero's per W4Tile: Zen 3, 2 threads, in-process
// A/B over 8-16 rows of 4096x4096 and 11008x4096, it took 1.03-1.16x the layer's time; a
// separate widening loop (MR = 0 for every part) 1.04-1.06x at 8-16 rows, 1.02x at 32.
template <int MR>
void widen_slab(const PackedW4LinearArgs& a, int64_t nb, int64_t k0, int64_t k1, float* panel,
                int64_t m0, float* acc, bool first) {
  const int64_t G = a.group_size, tiles_per_group = G / 8;
  const uint8_t* wb = a.w + nb * a.ngroups * G * 8;
  const uint8_t* zero = a.zero;
  const uint16_t* scale = a.scale;
  const float* x = a.x + m0 * a.ldx;
  const int64_t ldx = a.ldx;
  const __m256i m4hi = _mm256_set1_epi8(static_cast<char>(0xf0));
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 c[MR > 0 ? MR : 1][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h)
      c[r][h] = first ? _mm256_setzero_ps() : _mm256_load_ps(acc + (m0 + r) * 16 + 8 * h);
  __m256 s28[2], off[2];  // the group's s 2^-28 and (8 - z) s, columns 0-7 and 8-15
  auto group = [&](int64_t g) {
TERSOR_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t meta = (nb * a.ngroups + g) * 16 + 8 * h;
      const __m256 s =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scale + meta)));
      s28[h] = _mm256_mul_ps(s, _mm256_set1_ps(0x1p-28f));
      off[h] = _mm256_setzero_ps();
      if (zero) {
        const __m128i z8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(zero + meta));
        const __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(z8));
        off[h] = _mm256_mul_ps(_mm256_sub_ps(_mm256_set1_ps(8.0f), z), s);
      }
    }
  };
  // W4Tile t; kFull: all its 8 k are below k1 (every tile but a partial last one of K)
  auto tile = [&](int64_t t, auto full) {
    constexpr bool kFull = decltype(full)::value;
    prefetch_next_slab(wb + t * 64, slab_avx2::kSlabK / 8);
    const __m256i v[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + t * 64)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + t * 64 + 32))};
TERSOR_UNROLL
    for (int hi = 0; hi < 2; ++hi) {  // k = 8t + 4 hi + B
      __m256i nib[2];
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h)
        nib[h] = _mm256_xor_si256(_mm256_and_si256(hi ? v[h] : _mm256_slli_epi16(v[h], 4), m4hi),
                                  flip);
      auto put = [&](auto b) {
        constexpr int B = decltype(b)::value;
        const int64_t k = 8 * t + 4 * hi + B;
        if (!kFull && k >= k1) return;
        const __m256 w0 = _mm256_fmadd_ps(top_byte<B>(nib[0]), s28[0], off[0]);
        const __m256 w1 = _mm256_fmadd_ps(top_byte<B>(nib[1]), s28[1], off[1]);
        _mm256_store_ps(panel + (k - k0) * 16, w0);
        _mm256_store_ps(panel + (k - k0) * 16 + 8, w1);
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          const __m256 xb = _mm256_broadcast_ss(x + r * ldx + k);
          c[r][0] = _mm256_fmadd_ps(xb, w0, c[r][0]);
          c[r][1] = _mm256_fmadd_ps(xb, w1, c[r][1]);
        }
      };
      put(std::integral_constant<int, 0>{});
      put(std::integral_constant<int, 1>{});
      put(std::integral_constant<int, 2>{});
      put(std::integral_constant<int, 3>{});
    }
  };
  const int64_t t_full = k1 / 8, t_end = (k1 + 7) / 8;
  for (int64_t t0 = k0 / 8; t0 < t_full;) {
    const int64_t g = t0 / tiles_per_group;
    const int64_t t1 = std::min((g + 1) * tiles_per_group, t_full);
    group(g);
    for (int64_t t = t0; t < t1; ++t) tile(t, std::true_type{});
    t0 = t1;
  }
  if (t_full < t_end) {
    group(t_full / tiles_per_group);
    tile(t_full, std::false_type{});
  }
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) _mm256_store_ps(acc + (m0 + r) * 16 + 8 * h, c[r][h]);
}

using WidenFn = void (*)(const PackedW4LinearArgs&, int64_t, int64_t, int64_t, float*, int64_t,
                         float*, bool);
constexpr int kWidenRows = 4;  // 8 accumulators beside the widening's operands in 16 ymm
constexpr WidenFn kWiden[kWidenRows + 1] = {widen_slab<0>, widen_slab<1>, widen_slab<2>,
                                            widen_slab<3>, widen_slab<4>};

// The rows times 2^-28 for gemv<kScaled> (row stride round_up(K, 8)), or none where that is
// not exact (a nonzero |x| below 2^-98 would lose bits): then x * (q - 8) 2^28 is the rules'
// x * (q - 8) exactly, product and all, so the FMA chains round as before, bit for bit.
Scratch<float> scaled_rows(const PackedW4LinearArgs& a) {
  const int64_t ld = round_up(a.K, 8), K8 = a.K / 8 * 8;
  auto xs = alloc_scratch<float>(a.M * ld);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 tiny = _mm256_set1_ps(0x1p-98f), scale = _mm256_set1_ps(0x1p-28f);
  for (int64_t m = 0; m < a.M; ++m) {
    const float* x = a.x + m * a.ldx;
    float* out = xs.get() + m * ld;
    __m256 bad = _mm256_setzero_ps();  // lanes that saw 0 < |x| < 2^-98
    for (int64_t k = 0; k < K8; k += 8) {
      const __m256 v = _mm256_loadu_ps(x + k), av = _mm256_and_ps(v, abs_mask);
      bad = _mm256_or_ps(bad, _mm256_and_ps(_mm256_cmp_ps(av, tiny, _CMP_LT_OQ),
                                            _mm256_cmp_ps(av, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
      _mm256_storeu_ps(out + k, _mm256_mul_ps(v, scale));
    }
    if (_mm256_movemask_ps(bad)) return nullptr;
    for (int64_t k = K8; k < a.K; ++k) {
      if (x[k] != 0.0f && std::fabs(x[k]) < 0x1p-98f) return nullptr;
      out[k] = x[k] * 0x1p-28f;
    }
  }
  return xs;
}

using HalfFn = void (*)(const PackedW4LinearArgs&, const float*, int64_t, int64_t, int64_t);
template <int MR>
constexpr HalfFn kHalf[2] = {tile_half<MR, 0>, tile_half<MR, 1>};
constexpr const HalfFn* kHalves[kMR] = {kHalf<1>, kHalf<2>, kHalf<3>, kHalf<4>, kHalf<5>, kHalf<6>};

}  // namespace

void run_avx2(const PackedW4LinearArgs& a) {
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  if (dequantized_rows(a.M)) {
    slab_avx2::run<kWidenRows>(
        a.x, a.ldx, a.M, a.K, n_blocks, nt,
        [&](int64_t nb, int64_t k0, int64_t k1, float* p, int64_t m0, int rows, float* acc,
            bool first) { kWiden[rows](a, nb, k0, k1, p, m0, acc, first); },
        [&](int64_t nb, int64_t r0, int64_t r1, const float* acc) {
          slab_avx2::store_plus_bias(a.y, a.ldy, a.N, a.bias, nb, r0, r1, acc);
        });
    return;
  }
  // The chunk rules: 1-6 rows (1-15 where the machine has AVX-512 and this path is forced)
  const int64_t nks = (a.K + kChunk - 1) / kChunk;
  auto X = alloc_scratch<float>(a.M * nks);
  Scratch<float> xs = a.M <= kGemvRows ? scaled_rows(a) : nullptr;
  const int64_t ldxs = round_up(a.K, 8);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) chunk_sums(a.x + m * a.ldx, a.K, X.get() + m * nks);
    if (a.M <= kGemvRows) {
      for_each_tile(n_blocks, 2, 1, 1, [&](int64_t nb0, int nb, int64_t, int) {
        for (int64_t m = 0; m < a.M; ++m) {
          float* y = a.y + m * a.ldy;
          const float* Xm = X.get() + m * nks;
          if (xs)
            (nb == 2 ? gemv<2, true> : gemv<1, true>)(a, xs.get() + m * ldxs, Xm, nks, nb0, y);
          else
            (nb == 2 ? gemv<2, false> : gemv<1, false>)(a, a.x + m * a.ldx, Xm, nks, nb0, y);
        }
      });
    } else {
      for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
        for (int h = 0; h < 2; ++h) kHalves[mr - 1][h](a, X.get() + m0 * nks, nks, m0, nb);
      });
    }
  });
}

}  // namespace tersor::gemm_w4
