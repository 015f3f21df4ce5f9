// fp32 GEMM over weight panels widened once into L1 (AVX-512 translation units only): the batch
// path of gemm_w4 where its dequantized rules apply (gemm_w4.h), and through run_slabs the
// driver of its vdpbf16ps kernel's slabs of bf16 pairs (gemm_w4_avx512bf16.cpp). The AVX-512
// register kernel turns codes into floats inside its tile, once per 4 rows, and closes every
// 32-k chunk of every output with two more FMAs: ~445 GFLOP/s from 32 rows on 2 Zen 5 cores,
// where pure FMA chains (gemm_w8's register tile) read ~560. Here a slab of kSlabK k x 64
// columns (4 column blocks) is widened once into an L1-resident panel, for all rows, and a
// 6-row x 64-column register tile (24 FMA chains) runs every row over it:
//
//   panel[kSlabK][64] float: W[16 (nb0 + j) + c][k0 + i] at [i][16 j + c]
//   acc[rows][64] float, in memory between slabs (which rounds nothing: each output is one FMA
//   chain in k order, as a one-chain reference computes it)
//
//   for each pass of <= kSlabRows rows, each (group of <= 4 column blocks, part of the rows):
//     for each slab [k0, k1):  widen(nb0, nb, k0, k1, panel)
//                              for each tile of <= 6 rows:  acc[r] = fma-chain over the slab
//     store(nb0, nb, r0, r1, acc):  the kernel's epilogue (bias, tail mask) into y
//
// Per k a tile loads 4 panel vectors and broadcasts 6 x values for 24 FMAs: two FMAs a cycle
// leave the load ports room. 510-540 GFLOP/s from 64 rows; 8 x 2, 4 x 4 tiles ran the same,
// 8 x 3 and 7 x 3 4-6% slower, 64- to 512-k slabs within 3%. (gemm_w8 keeps its register
// tile: its widening is cheap, and these slabs ran 0.70-0.97x it.)
// Internal linkage throughout (common/parallel.h says why).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/parallel.h"
#include "common/simd.h"

namespace tersor {
namespace {
namespace slab_avx512 {

constexpr int kMR = 6;
constexpr int kNB = 4;                   // column blocks of 16 per panel
constexpr int64_t kCols = 16 * kNB;      // panel row: 64 floats, 256 bytes
constexpr int64_t kSlabK = 128;          // 32 KiB of panel: within a 48 KiB L1D
constexpr int64_t kSlabRows = 256;       // rows per pass over the weight: their x stays in L2 / L3

// MR rows of x from m0 x NB column blocks over the slab [k0, k1); acc holds those rows at
// stride kCols (first: start from 0).
template <int MR, int NB>
void tile(const float* x, int64_t ldx, int64_t m0, int64_t k0, int64_t k1, const float* panel,
          float* acc, bool first) {
  const float* xr = x + m0 * ldx;
  __m512 c[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j)
      c[r][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc + r * kCols + 16 * j);
  for (int64_t k = k0; k < k1; ++k) {
    const float* p = panel + (k - k0) * kCols;
    __m512 w[NB];
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) w[j] = _mm512_load_ps(p + 16 * j);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512 xb = _mm512_set1_ps(xr[r * ldx + k]);
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) c[r][j] = _mm512_fmadd_ps(xb, w[j], c[r][j]);
    }
  }
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) _mm512_store_ps(acc + r * kCols + 16 * j, c[r][j]);
}

using TileFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const float*, float*,
                        bool);
template <int NB>
constexpr TileFn kRowTiles[kMR] = {tile<1, NB>, tile<2, NB>, tile<3, NB>,
                                   tile<4, NB>, tile<5, NB>, tile<6, NB>};
constexpr const TileFn* kTiles[kNB] = {kRowTiles<1>, kRowTiles<2>, kRowTiles<3>, kRowTiles<4>};

// The passes, work items, slabs and row tiles of the comment above, on nt threads, for any
// panel element (fp32 here, bf16 pairs in gemm_w4_avx512bf16.cpp): n_blocks column blocks of
// 16, K deep (a multiple of 8 past the real K is fine: the widened codes there are zeros),
// acc_floats per row of scratch for the tiles' accumulators:
//   widen(nb0, nb, k0, k1, panel)       blocks nb0 .. nb0 + nb - 1 (nb <= kNB), k0 a multiple
//                                       of slab_k; may write the rows up to k0 + round_up(k1 - k0, 8)
//   rows(nb0, nb, m0, mr, k0, k1, panel, acc)
//                                       mr (<= kMR) rows from m0 over the slab; acc: row m0's
//                                       scratch (rows acc_floats apart), whose contents the
//                                       tile keeps between slabs (k0 == 0: start afresh)
//   store(nb0, nb, r0, r1, acc)         the epilogue into y; acc: row r0's scratch
template <typename Panel, typename Widen, typename Rows, typename Store>
void run_slabs(int64_t M, int64_t K, int64_t slab_k, int64_t n_blocks, int nt,
               int64_t acc_floats, Widen&& widen, Rows&& rows_fn, Store&& store) {
  const int64_t n_groups = (n_blocks + kNB - 1) / kNB;
  // Work items: (group of column blocks, part of a pass's rows); rows split only when the
  // groups are too few to share among the threads. Row tiles balanced (8 rows: 4 + 4).
  int64_t row_parts = 1;
  if (n_groups < 2 * nt)
    row_parts = std::min<int64_t>(nt, (std::min(M, kSlabRows) + kMR - 1) / kMR);
  parallel_team(::tersor::team(nt), [&] {
    auto panel = alloc_scratch<Panel>(slab_k * kCols);
    auto acc = alloc_scratch<float>(std::min(M, kSlabRows) * acc_floats);
    for (int64_t rb0 = 0; rb0 < M; rb0 += kSlabRows) {
      const int64_t rows = std::min(kSlabRows, M - rb0);
      int64_t i0, i1;
      thread_range(n_groups * row_parts, &i0, &i1);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t nb0 = i / row_parts * kNB, p = i % row_parts;
        const int nb = static_cast<int>(std::min<int64_t>(kNB, n_blocks - nb0));
        const int64_t r0 = rb0 + rows * p / row_parts, r1 = rb0 + rows * (p + 1) / row_parts;
        const int64_t ntiles = (r1 - r0 + kMR - 1) / kMR;
        for (int64_t k0 = 0; k0 < K; k0 += slab_k) {
          const int64_t k1 = std::min(k0 + slab_k, K);
          widen(nb0, nb, k0, k1, panel.get());
          for (int64_t t = 0; t < ntiles; ++t) {
            const int64_t m0 = r0 + (r1 - r0) * t / ntiles;
            const int64_t m1 = r0 + (r1 - r0) * (t + 1) / ntiles;
            rows_fn(nb0, nb, m0, static_cast<int>(m1 - m0), k0, k1,
                    static_cast<const Panel*>(panel.get()), acc.get() + (m0 - r0) * acc_floats);
          }
        }
        store(nb0, nb, r0, r1, static_cast<const float*>(acc.get()));
      }
    }
  });
}

// y = x W^T over fp32 panels (x: M rows of stride ldx): run_slabs with the tiles above.
template <typename Widen, typename Store>
void run(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t n_blocks, int nt,
         Widen&& widen, Store&& store) {
  run_slabs<float>(
      M, K, kSlabK, n_blocks, nt, kCols, widen,
      [&](int64_t, int nb, int64_t m0, int mr, int64_t k0, int64_t k1, const float* panel,
          float* acc) { kTiles[nb - 1][mr - 1](x, ldx, m0, k0, k1, panel, acc, k0 == 0); },
      store);
}

// The epilogue y[r0, r1) of blocks nb0 .. nb0 + nb - 1 = acc + bias, the last block's tail
// columns masked; acc: row r0's accumulators, rows acc_floats apart.
static inline void store_plus_bias(float* y, int64_t ldy, int64_t N, const float* bias,
                                   int64_t nb0, int nb, int64_t r0, int64_t r1, const float* acc,
                                   int64_t acc_floats = kCols) {
  for (int j = 0; j < nb; ++j) {
    const int64_t n = (nb0 + j) * 16;
    if (n >= N) break;
    const __mmask16 mask = tail_mask16(N - n);
    const __m512 b = bias16(bias, n, mask);
    for (int64_t m = r0; m < r1; ++m)
      _mm512_mask_storeu_ps(y + m * ldy + n, mask,
                            _mm512_add_ps(_mm512_load_ps(acc + (m - r0) * acc_floats + 16 * j), b));
  }
}

}  // namespace slab_avx512
}  // namespace
}  // namespace tersor
