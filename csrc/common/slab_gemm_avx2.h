// fp32 GEMM over weight slabs widened once into L1 (AVX2 translation units only): the batch
// path of the AVX2 weight kernels (gemm_w8, spmm_24's dense form, and gemm_w4 where its
// dequantized rules apply). A register tile that widens its weights in
// registers pays the widening once per row tile and, at 4 rows x 16 columns, keeps 8 FMA
// chains where Zen 2's FMA (latency 5, two ports) needs 10. Here a slab of kSlabK k x 16
// columns is widened once per column block into an L1-resident float panel, and every row
// runs over it 6 rows x 16 columns at a time (12 chains); acc goes through memory between
// slabs, which rounds nothing, so each output gets the same FMAs in the same order as a
// one-chain reference.
//
//   panel[kSlabK][16] float: W[16 nb + c][k0 + i] at [i][c]      acc[M][16] float
//   for each pass of <= kSlabRows rows, each (column block, part of the rows) of this thread:
//     for each slab [k0, k1):  widen(nb, k0, k1, panel)
//                              for each tile of <= 6 rows:  acc[r] = fma-chain over the slab
//     store(nb, r0, r1, acc):  the kernel's epilogue (scale, bias, tail mask) into y
//
// Zen 2, 2 threads: 84-90 GMAC/s for W8 from 32 rows, where torch's fp32 GEMM reaches 61-68.
//
// kWidenRows > 0: the kernel's widen also runs the first kWidenRows rows of the part over the
// slab as it writes the panel (gemm_w4), and the tiles take the rest. A widening loop of its own
// is bound by its panel stores while the FMA ports idle; inside a row tile they overlap.
// Internal linkage throughout (common/parallel.h says why).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/parallel.h"
#include "common/simd.h"

namespace tersor {
namespace {
namespace slab_avx2 {

constexpr int kMR = 6;
constexpr int64_t kSlabK = 256;     // 16 KiB of panel: half of Zen 2's L1D
constexpr int64_t kSlabRows = 256;  // rows per pass over the weight: their x stays in the L3

// MR rows of x from m0 over the slab [k0, k1), its panel widened; acc rows m0.. (first: from 0).
template <int MR>
void tile(const float* x, int64_t ldx, int64_t m0, int64_t k0, int64_t k1, const float* panel,
          float* acc, bool first) {
  const float* xr = x + m0 * ldx;
  __m256 c[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h)
      c[r][h] = first ? _mm256_setzero_ps() : _mm256_load_ps(acc + (m0 + r) * 16 + 8 * h);
  for (int64_t k = k0; k < k1; ++k) {
    const __m256 w0 = _mm256_load_ps(panel + (k - k0) * 16);
    const __m256 w1 = _mm256_load_ps(panel + (k - k0) * 16 + 8);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 xb = _mm256_broadcast_ss(xr + r * ldx + k);
      c[r][0] = _mm256_fmadd_ps(xb, w0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(xb, w1, c[r][1]);
    }
  }
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) _mm256_store_ps(acc + (m0 + r) * 16 + 8 * h, c[r][h]);
}

using TileFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const float*, float*,
                        bool);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

// y = x W^T (x: M rows of stride ldx), n_blocks column blocks of 16, K deep, on nt threads:
//   widen(nb, k0, k1, panel)        k0 a multiple of kSlabK
//     kWidenRows > 0: widen(nb, k0, k1, panel, m0, rows, acc, first), rows <= kWidenRows of
//     x from m0 into acc as tile() would (first: from 0)
//   store(nb, r0, r1, acc)          the epilogue (scale, bias, tail mask) into y
template <int kWidenRows = 0, typename Widen, typename Store>
void run(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t n_blocks, int nt,
         Widen&& widen, Store&& store) {
  // Work items: (column block, part of a pass's rows); rows split only when the column blocks
  // are too few to share among the threads. Row tiles balanced (8 rows: 4 + 4, not 6 + 2).
  int64_t row_parts = 1;
  if (n_blocks < 2 * nt)
    row_parts = std::min<int64_t>(nt, (std::min(M, kSlabRows) + kMR - 1) / kMR);
  parallel_team(::tersor::team(nt), [&] {
    auto panel = alloc_scratch<float>(kSlabK * 16);
    auto acc = alloc_scratch<float>(M * 16);
    for (int64_t rb0 = 0; rb0 < M; rb0 += kSlabRows) {
      const int64_t rows = std::min(kSlabRows, M - rb0);
      const auto item = [&](int64_t i) {
        const int64_t nb = i / row_parts, p = i % row_parts;
        const int64_t r0 = rb0 + rows * p / row_parts, r1 = rb0 + rows * (p + 1) / row_parts;
        const int64_t f = std::min<int64_t>(kWidenRows, r1 - r0), rest = r1 - r0 - f;
        const int64_t ntiles = (rest + kMR - 1) / kMR;
        for (int64_t k0 = 0; k0 < K; k0 += kSlabK) {
          const int64_t k1 = std::min(k0 + kSlabK, K);
          if constexpr (kWidenRows > 0)
            widen(nb, k0, k1, panel.get(), r0, static_cast<int>(f), acc.get(), k0 == 0);
          else
            widen(nb, k0, k1, panel.get());
          for (int64_t t = 0; t < ntiles; ++t) {
            const int64_t m0 = r0 + f + rest * t / ntiles;
            const int64_t m1 = r0 + f + rest * (t + 1) / ntiles;
            kTiles[m1 - m0 - 1](x, ldx, m0, k0, k1, panel.get(), acc.get(), k0 == 0);
          }
        }
        store(nb, r0, r1, static_cast<const float*>(acc.get()));
      };
      // Many items (8 or more a thread): taken one at a time, so a thread whose vCPU is slowed
      // (a neighbour on the host) does fewer; with a fixed split the other waited at the end
      // (Zen 3, 2 threads, in-process A/B: W4 / W8 at 8-512 rows 1.01-1.10x faster; 2 threads
      // ran W4 at 128 rows 1.45x one thread's speed where onnxruntime's pool ran 1.62x).
      const int64_t items = n_blocks * row_parts;
      if (items >= 8 * nt) {
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t i = 0; i < items; ++i) item(i);
      } else {
        int64_t i0, i1;
        thread_range(items, &i0, &i1);
        for (int64_t i = i0; i < i1; ++i) item(i);
      }
    }
  });
}

// The epilogue y[r0, r1) of block nb = acc + bias (the store of the kernels whose rules end
// there: gemm_w4, spmm_24), the last block's tail columns masked.
static inline void store_plus_bias(float* y, int64_t ldy, int64_t N, const float* bias,
                                   int64_t nb, int64_t r0, int64_t r1, const float* acc) {
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n = nb * 16 + 8 * h;
    if (n >= N) break;
    const __m256i mask = tail_mask8(N - n);
    const __m256 b = bias8(bias, n, mask);
    for (int64_t m = r0; m < r1; ++m)
      maskstore8(y + m * ldy + n, mask, _mm256_add_ps(_mm256_load_ps(acc + m * 16 + 8 * h), b));
  }
}

}  // namespace slab_avx2
}  // namespace
}  // namespace tersor
