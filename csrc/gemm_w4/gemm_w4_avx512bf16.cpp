// W4 weight-only GEMM on CPUs with AVX512-BF16 (Zen 4, Cooper Lake, Sapphire Rapids on): the
// bf16 dot-product path of gemm_w4.h, for batches of rows. vdpbf16ps does 32 multiply-adds per
// instruction where an fp32 FMA does 16, and the int4 weights are exact in bf16, so only the
// activations are rounded.
//
// Per call, the rows are rounded to bf16 once (A16[M][lda], zero past K). The weights become
// pairs (gemm_w4/bf16_pairs.h), 16 columns per vector:
//
//   pair[kk][16 lanes]  u32 = bf16(q[2kk] - 8) | bf16(q[2kk + 1] - 8) << 16
//
// and one 32-bit broadcast of A16 (the same two k of one row) against them is one vdpbf16ps.
// Up to 8 rows the pairs are made in registers (direct_tile); from 9, in slabs of L1 that
// every row then reads (slab_tile). Scales and zero points per group, as in gemm_w4.h. The
// scaled form (run_avx512bf16_scaled, from the rows ops/gemm_w4.py w4_tiles names) puts the
// scales into the slabs' pairs instead and runs one chain per output (scaled_tile).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/bf16_avx512.h"
#include "common/formats.h"
#include "common/half.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/slab_gemm_avx512.h"
#include "common/weight_stream.h"
#include "gemm_w4/bf16_pairs.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {
namespace {

struct Rows {
  const uint16_t* a16;  // the tile's first row, rows lda apart
  int64_t lda;
  const float* X;       // its group sums, rows ngroups apart (zero points only)
  int64_t m0;
};

// Closing group g of column block nb for a row: t = fma(8 - z, X, part); acc = fma(t, s, acc).
struct GroupClose {
  const PackedW4LinearArgs& a;
  int64_t g;
  __m512 s, zc;
  GroupClose(const PackedW4LinearArgs& args, int64_t nb, int64_t group) : a(args), g(group) {
    const int64_t meta = (nb * a.ngroups + g) * 16;
    s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
    zc = a.zero ? _mm512_cvtepi32_ps(_mm512_sub_epi32(
                      _mm512_set1_epi32(8), _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                reinterpret_cast<const __m128i*>(a.zero + meta)))))
                : _mm512_setzero_ps();
  }
  __m512 operator()(const Rows& rows, int r, __m512 part, __m512 acc) const {
    const __m512 X = _mm512_set1_ps(a.zero ? rows.X[r * a.ngroups + g] : 0.0f);
    return _mm512_fmadd_ps(_mm512_fmadd_ps(zc, X, part), s, acc);
  }
};

// Up to kDirectRows rows (a served batch of 8, a short prompt): the pairs are made in
// registers from the W4Tiles and used at once by every row, with no panel. Zen 5 (2 threads,
// 4096x4096 / 2048x8192 / 8192x2048 / 2048x2048, g32 and g128, 8 rows): 1.15-1.24x faster than
// writing the 8x larger bf16 panel and reading it back; at 12 and 16 rows (two passes over
// the weight) 0.95-1.07x, so the panel keeps them. The same vdpbf16ps in the same order per
// (row, column), so the same bits. MR rows x NB column blocks per tile, NB by the rows
// (blocks_side_by_side): one block alone leaves MR chains of dependent vdpbf16ps, so 1-3 rows
// take 4 blocks side by side, 4 rows 3, 5-6 rows 2 (the partial and total sums of MR x NB
// outputs take 2 MR NB of the 32 registers), 7-8 rows one. Every tile prefetches each block's
// stream kPrefetchTiles ahead with the hint common/weight_stream.h picks. Weights from DRAM
// (Zen 5, 2 threads, 4096x4096 / 2048x8192, g32 / g128): the prefetch made the one-block
// tiles 1.0-1.4x faster at 2-4 rows, 1.4-1.6x at 8; then the blocks side by side 1.15-1.9x at
// 2 rows, 1.3-2.0x at 3, 1.25-1.7x at 4, 1.0-1.2x at 6.
constexpr int64_t kDirectRows = 8;
// The scales and zero points of the group this many groups on, prefetched at each group's start:
// they are streams of their own beside the codes (g32: 3 bytes per column and group against 16
// of codes). From DRAM (Zen 5, 2 threads, 4096x4096 / 2048x8192, one row): g32 1.04-1.13x
// faster, g128 1.0-1.03x; 8 / 16 groups on less.
constexpr int64_t kMetaPrefetchGroups = 4;
constexpr int kRowBlocks = 4;
constexpr int64_t kPrefetchTiles = 32;
enum class Prefetch { kT0, kNta };

template <int MR, int NB, Prefetch PF>
void direct_tile(const PackedW4LinearArgs& a, int64_t Kp, const Rows& rows, int64_t nb0) {
  const W4Pairs pairs;
  const int64_t G = a.group_size;
  const uint8_t* w[NB];
  __m512 acc[MR][NB];
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    w[j] = a.w + (nb0 + j) * Kp * 8;
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < a.ngroups; ++g) {
    for (int j = 0; j < NB; ++j) {  // past the block's last group: harmless (never faults)
      const int64_t meta = ((nb0 + j) * a.ngroups + g + kMetaPrefetchGroups) * 16;
      _mm_prefetch(reinterpret_cast<const char*>(a.scale + meta), _MM_HINT_T0);
      if (a.zero) _mm_prefetch(reinterpret_cast<const char*>(a.zero + meta), _MM_HINT_T0);
    }
    __m512 part[MR][NB];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) part[r][j] = _mm512_setzero_ps();
    for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
      const uint16_t* ap = rows.a16 + 8 * t;
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) {
        // past the block's end: the next block's start, or nothing (a prefetch never faults)
        const char* ahead = reinterpret_cast<const char*>(w[j] + (t + kPrefetchTiles) * 64);
        if constexpr (PF == Prefetch::kT0) _mm_prefetch(ahead, _MM_HINT_T0);
        if constexpr (PF == Prefetch::kNta) _mm_prefetch(ahead, _MM_HINT_NTA);
        __m512i p[4];
        pairs(w[j] + t * 64, p);
TERSOR_UNROLL
        for (int i = 0; i < 4; ++i) {
TERSOR_UNROLL
          for (int r = 0; r < MR; ++r) {
            int32_t pair;
            std::memcpy(&pair, ap + r * rows.lda + 2 * i, 4);
            part[r][j] =
                _mm512_dpbf16_ps(part[r][j], (__m512bh)_mm512_set1_epi32(pair), (__m512bh)p[i]);
          }
        }
      }
    }
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      const GroupClose close(a, nb0 + j, g);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) acc[r][j] = close(rows, r, part[r][j], acc[r][j]);
    }
  }
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (nb0 + j) * 16;
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (rows.m0 + r) * a.ldy + n, mask, _mm512_add_ps(acc[r][j], b));
  }
}

// MR rows: blocks b0 .. b1 - 1, blocks_side_by_side(MR) at a time (the last tile may hold fewer).
constexpr int blocks_side_by_side(int mr) {
  return mr <= 3 ? kRowBlocks : mr == 4 ? 3 : mr <= 6 ? 2 : 1;
}
template <int MR, Prefetch PF>
void row_tiles(const PackedW4LinearArgs& a, int64_t Kp, const Rows& rows, int64_t b0,
               int64_t b1) {
  constexpr int NB = blocks_side_by_side(MR);
  int64_t nb = b0;
  for (; nb + NB <= b1; nb += NB) direct_tile<MR, NB, PF>(a, Kp, rows, nb);
  // the last, shorter tile (only narrower tiles than NB are instantiated)
  const int64_t left = b1 - nb;
  if constexpr (NB > 3) if (left == 3) return direct_tile<MR, 3, PF>(a, Kp, rows, nb);
  if constexpr (NB > 2) if (left == 2) return direct_tile<MR, 2, PF>(a, Kp, rows, nb);
  if constexpr (NB > 1) if (left == 1) return direct_tile<MR, 1, PF>(a, Kp, rows, nb);
}

using RowTilesFn = void (*)(const PackedW4LinearArgs&, int64_t, const Rows&, int64_t, int64_t);
template <Prefetch PF>  // 1 .. kDirectRows rows
constexpr RowTilesFn kRowTiles[kDirectRows] = {
    row_tiles<1, PF>, row_tiles<2, PF>, row_tiles<3, PF>, row_tiles<4, PF>,
    row_tiles<5, PF>, row_tiles<6, PF>, row_tiles<7, PF>, row_tiles<8, PF>};

// ---- From 9 rows: slabs of pairs in L1 (common/slab_gemm_avx512.h) --------------------------
//
// Slabs of kSlabK k x 64 columns (32 KiB) stay in L1, and a 6-row x 4-block tile keeps only
// the partial sums in registers; totals live in scratch beside them (scratch row: part[64]
// then acc[64] floats), updated once per group:
//
//   slab[(k - k0) / 2][64 lanes] u32: the pairs above, 4 column blocks side by side
//
// Against the panel of all of K for 3 blocks with a 4 x 3 tile that it replaced (1.5 MiB at
// K = 8192: past L2), Zen 5, 2 threads, 2048x512 .. 8192x2048: g128 1.04-1.12x faster at 12-16
// rows, 0.98-1.07x at 32-128 (700-960 GFLOP/s); g32 at 32-128 rows 0.97-1.03x (its totals
// go through scratch every 16 pairs, where the 4 x 3 tile kept them in registers). Same
// vdpbf16ps in the same order per output, the same group closes: the same bits.
constexpr int64_t kSlabK = 256;
constexpr int64_t kScratch = 2 * slab_avx512::kCols;

void widen_pairs(const PackedW4LinearArgs& a, const W4Pairs& pairs, int64_t Kp, int64_t nb0,
                 int nb, int64_t k0, int64_t k1, uint32_t* panel) {
  for (int j = 0; j < nb; ++j) {
    const uint8_t* w = a.w + (nb0 + j) * Kp * 8;
    for (int64_t t = k0 / 8; t < k1 / 8; ++t) {
      __m512i p[4];
      pairs(w + t * 64, p);
      prefetch_next_slab(w + t * 64, kSlabK / 8);
      uint32_t* out = panel + (8 * t - k0) / 2 * slab_avx512::kCols + 16 * j;
TERSOR_UNROLL
      for (int i = 0; i < 4; ++i)
        _mm512_store_si512(out + i * slab_avx512::kCols, p[i]);
    }
  }
}

// MR rows x NB blocks over the slab [k0, k1) (k0, k1 multiples of 8; Kp ends the last group).
template <int MR, int NB>
void slab_tile(const PackedW4LinearArgs& a, const Rows& rows, int64_t nb0, int64_t k0,
               int64_t k1, const uint32_t* panel, float* scratch) {
  constexpr int64_t C = slab_avx512::kCols;
  const int64_t pg = a.group_size / 2;  // pairs per group
  __m512 part[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      part[r][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(scratch + r * kScratch + 16 * j);
      if (k0 == 0) _mm512_store_ps(scratch + r * kScratch + C + 16 * j, _mm512_setzero_ps());
    }
  int64_t kk = k0 / 2;
  const int64_t kk1 = k1 / 2;
  while (kk < kk1) {
    const int64_t kend = std::min(kk1, (kk / pg + 1) * pg);  // the slab's end or the group's
    const uint32_t* wp = panel + (kk - k0 / 2) * C;
    const uint16_t* ap = rows.a16 + 2 * kk;
    for (; kk < kend; ++kk, wp += C, ap += 2) pair_step<MR, NB>(wp, 16, ap, rows.lda, part);
    if (kend % pg == 0) {  // group kend / pg - 1 ends here
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) {
        const GroupClose close(a, nb0 + j, kend / pg - 1);
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          float* acc = scratch + r * kScratch + C + 16 * j;
          _mm512_store_ps(acc, close(rows, r, part[r][j], _mm512_load_ps(acc)));
          part[r][j] = _mm512_setzero_ps();
        }
      }
    }
  }
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) _mm512_store_ps(scratch + r * kScratch + 16 * j, part[r][j]);
}

using SlabFn = void (*)(const PackedW4LinearArgs&, const Rows&, int64_t, int64_t, int64_t,
                        const uint32_t*, float*);
template <int NB>
constexpr SlabFn kSlabRowTiles[slab_avx512::kMR] = {
    slab_tile<1, NB>, slab_tile<2, NB>, slab_tile<3, NB>,
    slab_tile<4, NB>, slab_tile<5, NB>, slab_tile<6, NB>};
constexpr const SlabFn* kSlabTiles[slab_avx512::kNB] = {kSlabRowTiles<1>, kSlabRowTiles<2>,
                                                        kSlabRowTiles<3>, kSlabRowTiles<4>};

// ---- The scaled form (gemm_w4.h, run_bf16_tiles on CPUs without AMX) ----------------------
//
// The same slabs with the scales in the pairs, w = bf16((q - z) s) (bf16_pairs.h's
// ScaledW4Pairs), so a 6-row x 4-block tile runs one vdpbf16ps chain per output over all of K
// and no group close interrupts it; its 24 accumulators live in scratch between slabs:
//
//   slab[(k - k0) / 2][64 lanes] u32 = w[k][n] | w[k + 1][n] << 16, 4 column blocks side by side
//
// Zen 5, 2 threads: ops/gemm_w4.py (TILES_MIN_ROWS) says where it beats the group form.
void widen_scaled_pairs(const PackedW4LinearArgs& a, const W4Pairs& pairs,
                        const ScaledW4Pairs& scaled, int64_t Kp, int64_t nb0, int nb, int64_t k0,
                        int64_t k1, uint32_t* panel) {
  for (int j = 0; j < nb; ++j) {
    const uint8_t* w = a.w + (nb0 + j) * Kp * 8;
    int64_t g_loaded = -1;
    __m512 s = _mm512_setzero_ps(), c = s;
    for (int64_t t = k0 / 8; t < k1 / 8; ++t) {
      if (const int64_t g = 8 * t / a.group_size; g != g_loaded) {
        const int64_t meta = ((nb0 + j) * a.ngroups + g) * 16;
        ScaledW4Pairs::group(a.scale + meta, a.zero ? a.zero + meta : nullptr, &s, &c);
        g_loaded = g;
      }
      __m512i p[4];
      pairs(w + t * 64, p);
      prefetch_next_slab(w + t * 64, kSlabK / 8);
      uint32_t* out = panel + (8 * t - k0) / 2 * slab_avx512::kCols + 16 * j;
TERSOR_UNROLL
      for (int i = 0; i < 4; ++i)
        _mm512_store_si512(out + i * slab_avx512::kCols, scaled(p[i], s, c));
    }
  }
}

// MR rows x NB blocks over the slab [k0, k1): acc (rows kCols apart) += the slab's pairs.
template <int MR, int NB>
void scaled_tile(const Rows& rows, int64_t k0, int64_t k1, const uint32_t* panel, float* acc) {
  constexpr int64_t C = slab_avx512::kCols;
  __m512 c[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j)
      c[r][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(acc + r * C + 16 * j);
  const uint16_t* ap = rows.a16 + k0;
  for (int64_t kk = 0; kk < (k1 - k0) / 2; ++kk, ap += 2)
    pair_step<MR, NB>(panel + kk * C, 16, ap, rows.lda, c);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) _mm512_store_ps(acc + r * C + 16 * j, c[r][j]);
}

using ScaledFn = void (*)(const Rows&, int64_t, int64_t, const uint32_t*, float*);
template <int NB>
constexpr ScaledFn kScaledRowTiles[slab_avx512::kMR] = {
    scaled_tile<1, NB>, scaled_tile<2, NB>, scaled_tile<3, NB>,
    scaled_tile<4, NB>, scaled_tile<5, NB>, scaled_tile<6, NB>};
constexpr const ScaledFn* kScaledTiles[slab_avx512::kNB] = {
    kScaledRowTiles<1>, kScaledRowTiles<2>, kScaledRowTiles<3>, kScaledRowTiles<4>};

// Row m of x rounded to bf16 (round to nearest even) into a16 [lda], zero past K; with zero
// points, X[g] = the sum of group g's rounded values, fp32 adds in k order.
void round_row(const PackedW4LinearArgs& a, int64_t m, int64_t lda, uint16_t* a16, float* X) {
  round_row_bf16(a.x + m * a.ldx, a.K, lda, a16);
  if (X) group_sums_bf16(a16, a.ngroups, a.group_size, X);
}

}  // namespace

void run_avx512bf16(const PackedW4LinearArgs& a) {
  const int64_t Kp = a.ngroups * a.group_size, lda = (Kp + 15) / 16 * 16;
  const int64_t n_blocks = (a.N + 15) / 16;
  auto a16 = alloc_scratch<uint16_t>(a.M * lda);
  auto X = alloc_scratch<float>(a.zero ? a.M * a.ngroups : 1);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  auto rows_at = [&](int64_t m0) {
    return Rows{a16.get() + m0 * lda, lda, a.zero ? X.get() + m0 * a.ngroups : nullptr, m0};
  };
  if (a.M <= kDirectRows) {
    const bool nta = weight_stream_nta(a.w, n_blocks * Kp * 8);
    parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < a.M; ++m)
        round_row(a, m, lda, a16.get() + m * lda, a.zero ? X.get() + m * a.ngroups : nullptr);
      // implicit barrier: every row is ready
      int64_t b0, b1;
      thread_range(n_blocks, &b0, &b1);
      const RowTilesFn run = (nta ? kRowTiles<Prefetch::kNta> : kRowTiles<Prefetch::kT0>)[a.M - 1];
      run(a, Kp, rows_at(0), b0, b1);
    });
    return;
  }
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m)
      round_row(a, m, lda, a16.get() + m * lda, a.zero ? X.get() + m * a.ngroups : nullptr);
  });
  const W4Pairs pairs;
  slab_avx512::run_slabs<uint16_t>(  // a slab of bf16 values: kSlabK / 2 rows of 64 pairs
      a.M, Kp, kSlabK, n_blocks, nt, kScratch,
      [&](int64_t nb0, int nb, int64_t k0, int64_t k1, uint16_t* p) {
        widen_pairs(a, pairs, Kp, nb0, nb, k0, k1, reinterpret_cast<uint32_t*>(p));
      },
      [&](int64_t nb0, int nb, int64_t m0, int mr, int64_t k0, int64_t k1, const uint16_t* p,
          float* scratch) {
        kSlabTiles[nb - 1][mr - 1](a, rows_at(m0), nb0, k0, k1,
                                   reinterpret_cast<const uint32_t*>(p), scratch);
      },
      [&](int64_t nb0, int nb, int64_t r0, int64_t r1, const float* scratch) {
        slab_avx512::store_plus_bias(a.y, a.ldy, a.N, a.bias, nb0, nb, r0, r1,
                                     scratch + slab_avx512::kCols, kScratch);
      });
}

void run_avx512bf16_scaled(const PackedW4LinearArgs& a) {
  const int64_t Kp = a.ngroups * a.group_size, lda = (Kp + 15) / 16 * 16;
  const int64_t n_blocks = (a.N + 15) / 16;
  auto a16 = alloc_scratch<uint16_t>(a.M * lda);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m)
      round_row_bf16(a.x + m * a.ldx, a.K, lda, a16.get() + m * lda);
  });
  const W4Pairs pairs;
  const ScaledW4Pairs scaled;
  slab_avx512::run_slabs<uint16_t>(
      a.M, Kp, kSlabK, n_blocks, nt, slab_avx512::kCols,
      [&](int64_t nb0, int nb, int64_t k0, int64_t k1, uint16_t* p) {
        widen_scaled_pairs(a, pairs, scaled, Kp, nb0, nb, k0, k1, reinterpret_cast<uint32_t*>(p));
      },
      [&](int64_t, int nb, int64_t m0, int mr, int64_t k0, int64_t k1, const uint16_t* p,
          float* acc) {
        kScaledTiles[nb - 1][mr - 1](Rows{a16.get() + m0 * lda, lda, nullptr, m0}, k0, k1,
                                     reinterpret_cast<const uint32_t*>(p), acc);
      },
      [&](int64_t nb0, int nb, int64_t r0, int64_t r1, const float* acc) {
        slab_avx512::store_plus_bias(a.y, a.ldy, a.N, a.bias, nb0, nb, r0, r1, acc);
      });
}

}  // namespace tersor::gemm_w4
