// AVX2 W8A8 GEMM (CPUs without VNNI): rows are quantized into a buffer of s8 rows (Kp codes
// each, zero past K; from kSplitMinRows rows, signed ones split in place into |a| and sign
// masks, 2 Kp bytes), then the micro-kernel of tile_avx2.h runs over it, 4 rows x 16 columns at
// a time, with one pointer per row.
#include <immintrin.h>

#include <algorithm>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/weight_stream.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "gemm_w8a8/tile_avx2.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w8a8 {
namespace {

using avx2::kMR;
using avx2::Signs;

// Few rows (5-32), k chunks: each column block goes in chunks of kChunkGroups 4-k groups (4 KiB
// of weights, in L1), every row tile over a chunk before the next one, the tiles' accumulators
// parked in memory between chunks; the first tile prefetches kChunkPrefetchLines ahead. One
// tile after another over the whole 16-column block streamed it from memory in the first tile,
// with little compute to overlap, then left memory idle while the others re-read it from L2.
// Zen 3, weights from DRAM, GMAC/s per core, interleaved in one process (best of 7): one
// thread, 7-bit weights, 4096x4096 at 8 / 16 rows 61-71 / 66-80 -> 77-83 / 78-87; two threads
// 1.0-1.25x at 5-32 rows on 4096x4096, 4096x11008 and 11008x4096, exact 8-bit weights (the
// sign trick) 1.0-1.15x; cache-resident layers unchanged. At 64 rows it lost (0.9x): the
// tiles' accumulator traffic and a single prefetching tile.
constexpr int64_t kChunkGroups = 64, kChunkPrefetchLines = 32, kChunkMaxTiles = 8;

// Signed rows of exact 8-bit weights are split for kXorA (tile_avx2.h) from this many rows; 1-4
// rows take the sign trick, with nothing to prepare. kXorA's time against the tiles it replaced
// (Zen 3, 2 threads, interleaved rounds, medians; 4096x4096, 1536x8960, 8960x1536, 2560x2560,
// 3072x8192, 2048x512, 384x1536): the sign trick at 5-16 rows 0.95-1.11x faster (most
// 1.02-1.06x), the XOR tile over staged weights at 32 rows 1.03-1.14x, at 64-512 rows
// 0.96-1.09x (most 1.01-1.07x); at 3-4 rows 0.94-1.05x, hence 5.
constexpr int64_t kSplitMinRows = 5;

// One row tile's pass over groups [g0, g0 + groups) of a column block, its accumulators in
// acc_mem [MR][2].
template <int MR, Signs kSigns>
void chunk_pass(__m256i* acc_mem, const uint8_t* const* rows, int64_t g0, int64_t groups,
                const int8_t* wblock, int prefetch) {
  __m256i acc[MR][2];
  const uint8_t* ap[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm256_load_si256(acc_mem + 2 * r);
    acc[r][1] = _mm256_load_si256(acc_mem + 2 * r + 1);
    ap[r] = rows[r] + (kSigns == Signs::kXorA ? 8 : 4) * g0;
  }
  avx2::dot_groups<MR, kSigns>(acc, ap, wblock + 64 * g0, groups, prefetch, kChunkPrefetchLines);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    _mm256_store_si256(acc_mem + 2 * r, acc[r][0]);
    _mm256_store_si256(acc_mem + 2 * r + 1, acc[r][1]);
  }
}

template <int MR, Signs kSigns>
void chunk_start(__m256i* acc_mem, const PackedW8LinearArgs& a, int64_t n0,
                 const int32_t* neg_sum) {
  __m256i acc[MR][2];
  avx2::start_acc<MR, kSigns>(acc, a, n0, nullptr, neg_sum);
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) _mm256_store_si256(acc_mem + 2 * r + h, acc[r][h]);
}

template <int MR>
void chunk_finish(const __m256i* acc_mem, const float* sx, const PackedW8LinearArgs& a,
                  float* y, int64_t n0) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_load_si256(acc_mem + 2 * r + h);
  store_int8_tile<MR>(acc, sx, a.w_scale, a.bias, a.N, y, a.ldy, n0);
}

// The tile variants the k-chunk driver takes, by row tile: non-negative codes, signed codes
// (the sign trick), narrow weights' a + 128, signed rows split (kXorA)
using PassFn = void (*)(__m256i*, const uint8_t* const*, int64_t, int64_t, const int8_t*, int);
using StartFn = void (*)(__m256i*, const PackedW8LinearArgs&, int64_t, const int32_t*);
using FinishFn = void (*)(const __m256i*, const float*, const PackedW8LinearArgs&, float*,
                          int64_t);
constexpr PassFn kPass[4][kMR] = {
    {chunk_pass<1, Signs::kNonNegative>, chunk_pass<2, Signs::kNonNegative>,
     chunk_pass<3, Signs::kNonNegative>, chunk_pass<4, Signs::kNonNegative>},
    {chunk_pass<1, Signs::kSignA>, chunk_pass<2, Signs::kSignA>, chunk_pass<3, Signs::kSignA>,
     chunk_pass<4, Signs::kSignA>},
    {chunk_pass<1, Signs::kNarrowBiased>, chunk_pass<2, Signs::kNarrowBiased>,
     chunk_pass<3, Signs::kNarrowBiased>, chunk_pass<4, Signs::kNarrowBiased>},
    {chunk_pass<1, Signs::kXorA>, chunk_pass<2, Signs::kXorA>, chunk_pass<3, Signs::kXorA>,
     chunk_pass<4, Signs::kXorA>}};
constexpr StartFn kStart[4][kMR] = {
    {chunk_start<1, Signs::kNonNegative>, chunk_start<2, Signs::kNonNegative>,
     chunk_start<3, Signs::kNonNegative>, chunk_start<4, Signs::kNonNegative>},
    {chunk_start<1, Signs::kSignA>, chunk_start<2, Signs::kSignA>,
     chunk_start<3, Signs::kSignA>, chunk_start<4, Signs::kSignA>},
    {chunk_start<1, Signs::kNarrowBiased>, chunk_start<2, Signs::kNarrowBiased>,
     chunk_start<3, Signs::kNarrowBiased>, chunk_start<4, Signs::kNarrowBiased>},
    {chunk_start<1, Signs::kXorA>, chunk_start<2, Signs::kXorA>,
     chunk_start<3, Signs::kXorA>, chunk_start<4, Signs::kXorA>}};
constexpr FinishFn kFinish[kMR] = {chunk_finish<1>, chunk_finish<2>, chunk_finish<3>,
                                   chunk_finish<4>};

// Inside the parallel region: the few-rows GEMM over `tiles` row tiles of quantized rows
// (whole tiles, `stride` bytes apart; split: signed tiles split for kXorA, their sums in
// neg_sum), threads splitting the column blocks, in k chunks.
void run_k_chunks(const PackedW8LinearArgs& a, int64_t tiles, const uint8_t* rows,
                  int64_t stride, const float* sx, const bool* non_negative, bool biased,
                  bool split, const int32_t* neg_sum) {
  const int64_t Kp = round_up(a.K, 4), groups = Kp / 4, n_blocks = round_up(a.N, 16) / 16;
  __m256i acc[kChunkMaxTiles * kMR * 2];  // tiles <= kChunkMaxTiles: no allocation per call
  const uint8_t* ptrs[kChunkMaxTiles * kMR];
  for (int64_t i = 0; i < tiles * kMR; ++i) ptrs[i] = rows + i * stride;
  const auto variant = [&](int64_t t) {
    return biased ? 2 : non_negative[t] ? 0 : split ? 3 : 1;
  };
  const auto rows_of = [&](int64_t t) { return int(std::min<int64_t>(kMR, a.M - t * kMR)); };
  int64_t b0, b1;
  thread_range(n_blocks, &b0, &b1);
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int8_t* wb = a.w + blk * Kp * 16;
    for (int64_t t = 0; t < tiles; ++t)
      kStart[variant(t)][rows_of(t) - 1](acc + t * 2 * kMR, a, blk * 16,
                                         split ? neg_sum + t * kMR : nullptr);
    for (int64_t g0 = 0; g0 < groups; g0 += kChunkGroups)
      for (int64_t t = 0; t < tiles; ++t)
        kPass[variant(t)][rows_of(t) - 1](acc + t * 2 * kMR, ptrs + t * kMR, g0,
                                          std::min(kChunkGroups, groups - g0), wb, t == 0);
    for (int64_t t = 0; t < tiles; ++t)
      kFinish[rows_of(t) - 1](acc + t * 2 * kMR, sx + t * kMR, a, a.y + t * kMR * a.ldy,
                              blk * 16);
  }
}

}  // namespace

void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill) {
  using avx2::kMR;
  const int64_t Kp = round_up(a.K, 4);
  static const int64_t kOneRun = 0;
  // Rows [m0, m1) quantized to rows + (m - m0) * stride, their scales to sx; returns whether
  // every code is >= 0 (the tile variant to take). Narrow weights: the codes are written as
  // u8 a + 128 (tile_avx2.h), whatever their signs. With split (stride 2 Kp), signed rows are
  // split for kXorA (tile_avx2.h split_signs), their sums to neg_sum.
  const bool biased = a.narrow_w;
  auto quantize = [&](int64_t m0, int64_t m1, uint8_t* rows, int64_t stride, float* sx,
                      bool split, int32_t* neg_sum) {
    bool non_negative = !biased;
    for (int64_t m = m0; m < m1; ++m) {
      uint8_t* row = rows + (m - m0) * stride;
      sx[m - m0] = fill(m, row, 4, biased ? 0x80 : 0);
      non_negative = non_negative && avx2::all_non_negative(row, Kp);
    }
    if (split && !non_negative)
      for (int64_t m = m0; m < m1; ++m)
        neg_sum[m - m0] = avx2::split_signs(rows + (m - m0) * stride, Kp);
    return non_negative;
  };
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);

  if (a.M >= kRowsPerBlock * nt) {  // every thread gets whole row blocks
    parallel_team(::tersor::team(nt), [&] {
      const bool split = !biased;
      const int64_t stride = split ? 2 * Kp : Kp;
      auto rows = alloc_scratch<uint8_t>(kRowsPerBlock * stride);
      avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1, avx2::RowBlock& block) {
        for (int64_t m = m0; m < m1; m += kMR)
          block.non_negative[(m - m0) / kMR] =
              quantize(m, std::min(m + kMR, m1), rows.get() + (m - m0) * stride, stride,
                       block.sx + (m - m0), split, block.neg_sum + (m - m0));
        for (int64_t i = 0; i < kRowsPerBlock; ++i) block.row[i] = rows.get() + i * stride;
        block.runs = RowRuns{&kOneRun, 1, Kp / 4};
        block.biased = biased;
        block.split = split;
      });
    });
    return;
  }

  // Few rows: quantize them all, then threads split the column blocks. One tile (a decode
  // step): every thread quantizes it into a copy of its own instead of waiting at a barrier
  // for one thread's (~1 us on Zen 3, 2 threads, against ~0.1-1 us to quantize up to 4 rows).
  const int64_t n_blocks = round_up(a.N, 16) / 16, tiles = (a.M + kMR - 1) / kMR;
  const bool split = !biased && a.M >= kSplitMinRows;
  const int64_t stride = split ? 2 * Kp : Kp;
  const int team_size = ::tersor::team(nt);
  const bool own_copy = tiles == 1 && team_size > 1;
  const int64_t copies = own_copy ? team_size : 1, rows_bytes = tiles * kMR * stride;
  auto rows = alloc_scratch<uint8_t>(copies * rows_bytes);  // whole tiles: row pointers valid
  auto sx_all = alloc_scratch<float>(copies * kMR * tiles);
  // split only (no allocation on a decode step's call), never with own copies
  static_assert(kSplitMinRows > kMR, "split rows span more than one tile");
  Scratch<int32_t> neg_sum;
  if (split) neg_sum = alloc_scratch<int32_t>(tiles * kMR);
  auto non_negative_all = alloc_scratch<bool>(copies * tiles);
  const int prefetch = a.M > kMR ? 0 : weight_stream_nta(a.w, n_blocks * Kp * 16) ? 2 : 1;
  const bool k_chunks = tiles > 1 && tiles <= kChunkMaxTiles;
  parallel_team(team_size, [&] {
    const int64_t copy = own_copy ? thread_index() : 0;
    uint8_t* const my_rows = rows.get() + copy * rows_bytes;
    float* const sx = sx_all.get() + copy * kMR * tiles;
    bool* const non_negative = non_negative_all.get() + copy * tiles;
    const auto sums_at = [&](int64_t m) { return split ? neg_sum.get() + m : nullptr; };
    if (own_copy) {
      non_negative[0] = quantize(0, a.M, my_rows, stride, sx, split, sums_at(0));
    } else {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles; ++t)
        non_negative[t] =
            quantize(t * kMR, std::min(a.M, t * kMR + kMR), my_rows + t * kMR * stride, stride,
                     sx + t * kMR, split, sums_at(t * kMR));
    }
    if (k_chunks) {
      run_k_chunks(a, tiles, my_rows, stride, sx, non_negative, biased, split, sums_at(0));
    } else {
      for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t blk, int, int64_t m0, int mr) {
        const uint8_t* r = my_rows + m0 * stride;
        const avx2::ARows src{{r, r + stride, r + 2 * stride, r + 3 * stride},
                              RowRuns{&kOneRun, 1, Kp / 4},
                              prefetch,
                              biased,
                              split,
                              sums_at(m0)};
        avx2::run_tile(mr, non_negative[m0 / kMR], src, a.w + blk * Kp * 16, sx + m0, a,
                       avx2::TileOut{a.y + m0 * a.ldy, a.ldy, nullptr, m0}, blk * 16, nullptr);
      });
    }
  });
}
void run_avx2(const PackedW8LinearArgs& a) {
  run_rows_avx2(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx2(quant_act::a8_row(a, m), a.K, dst, gs, xm,
                                          quant_act::amax_floor(a.row_amax, m));
  });
}

}  // namespace tersor::gemm_w8a8
