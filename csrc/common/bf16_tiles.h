// The AMX-BF16 driver of the weight-only families (gemm_w4_amx.cpp, gemm_w8_amx.cpp): bf16 rows
// against bf16 weight panels on tdpbf16ps tiles. Include only from *_amx.cpp files (AMX-BF16
// and AVX512-BF16 flags; internal linkage: see common/parallel.h).
//
// Per call, the rows are rounded to bf16 once, in tile order (zero past K and past M; Kt a
// multiple of kStep), so that an A tile is 1 KiB in one piece rather than 16 rows 2 Kt bytes
// apart (at K = 4096 each in its own page; measured 0.90-0.97x the time of row-major rows):
//
//   A16[Mp / 16][Kt / 32][16 rows][32 k]  bf16
//
// Each thread takes pairs of 16-column blocks; per pair the family widens its two blocks once
// into a panel that every 32-row block then multiplies from L2:
//
//   panel[j][kk][16 columns]  u32 = w[2kk][n] | w[2kk + 1][n] << 16    (bf16; kk < Kt / 2)
//
//   A tile:           A16[rows / 16][s] (1 KiB, rows of 64 bytes)
//   B tile of step s: rows kk = 16 s .. 16 s + 15 of block j, 64 bytes each
//   C tiles 0..3:     rows 0-15 / 16-31 x blocks j0 / j1, fp32, over the whole K
//
// then the family's epilogue writes a block's rows < M and columns < N from the fp32 sums.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/bf16_avx512.h"
#include "common/parallel.h"
#include "gemm_w8a8/gemm_w8a8.h"  // amx_configure_tiles

namespace tersor::bf16_tiles {

constexpr int64_t kRows = 32;  // rows of a block (2 A tiles)
constexpr int64_t kStep = 32;  // k per tile step (16 bf16 pairs: 64 bytes a tile row)

// x[0, K) rounded to bf16 (nearest even) as one row of A16: k into tile k / 32 (512 bf16
// apart) at column k % 32 of the row `dst` points to; zero from K to Kt.
static inline void round_row_tiled(const float* x, int64_t K, int64_t Kt, uint16_t* dst) {
  for (int64_t k = 0; k < Kt; k += 16) {
    const __mmask16 mask = k < K ? tail_mask16(K - k) : 0;
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k / kStep * 16 * kStep + k % kStep),
                        (__m256i)_mm512_cvtneps_pbh(v));
  }
}

// acc = the 32 x 32 block (rows m0.., blocks j0 / j1 of the panel) summed over Kt.
// pf / pf_lines: the next pair's packed weights, prefetched into L2 a few lines per step while
// the tiles multiply, so that its widening reads L2 instead of waiting on memory (measured on
// a Sapphire Rapids class Xeon, weights from DRAM, bf16 rows: W4 g128 and W8 at 16-32 rows
// 0.80-0.93x the time without, 0.93-1.04x at 128 rows).
static inline void block(const uint16_t* a16, int64_t Kt, int64_t m0, const uint32_t* j0,
                         const uint32_t* j1, float (*acc)[32], const char* pf = nullptr,
                         int64_t pf_lines = 0) {
  const char* a0 = reinterpret_cast<const char*>(a16 + m0 * Kt);  // row blocks m0, m0 + 16
  const char* a1 = a0 + 16 * Kt * 2;
  const char* b0 = reinterpret_cast<const char*>(j0);
  const char* b1 = reinterpret_cast<const char*>(j1);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t steps = Kt / kStep, per_step = (pf_lines + steps - 1) / steps;
  int64_t line = 0;
  for (int64_t k = 0; k < Kt; k += kStep) {
    for (int64_t i = 0; i < per_step && line < pf_lines; ++i, ++line)
      _mm_prefetch(pf + line * 64, _MM_HINT_T1);
    _tile_loadd(4, a0 + k * 32, 64);  // tile k / 32 of the row block: 16 x 64 bytes
    _tile_loadd(5, a1 + k * 32, 64);
    _tile_loadd(6, b0 + k * 32, 64);  // 16 pair rows of 64 bytes: 32 k
    _tile_loadd(7, b1 + k * 32, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, &acc[0][0], 128);
  _tile_stored(1, &acc[0][16], 128);
  _tile_stored(2, &acc[16][0], 128);
  _tile_stored(3, &acc[16][16], 128);
}

// widen(nb0, nb, panel): blocks nb0 .. nb0 + nb (nb 1 or 2) into panel (Kt * 8 u32 a block);
// store(acc, m0, rows, nb0, nb): the block's epilogue; block_bytes: a block's packed weight
// bytes (the blocks of a family lie one after another).
template <class Widen, class Store>
static inline void run(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t N, int64_t Kt,
                       int nthreads, const void* w, int64_t block_bytes, Widen&& widen,
                       Store&& store) {
  const int64_t Mp = (M + kRows - 1) / kRows * kRows;
  const int64_t n_blocks = (N + 15) / 16, pairs = (n_blocks + 1) / 2;
  auto a16 = alloc_scratch<uint16_t>(Mp * Kt);
  const int nt = threads_for_work(double(M) * N * K, nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < Mp; ++m)  // rows past M: zero (K = 0)
      round_row_tiled(x + (m < M ? m : 0) * ldx, m < M ? K : 0, Kt,
                      a16.get() + m / 16 * 16 * Kt + m % 16 * kStep);
    // implicit barrier: every row is ready
    int64_t p0, p1;
    thread_range(pairs, &p0, &p1);
    if (p0 < p1) {
      auto panel = alloc_scratch<uint32_t>(2 * Kt * 8);
      alignas(64) float acc[kRows][32];
      gemm_w8a8::amx_configure_tiles(64);  // A, B and C tiles all 16 rows x 64 bytes
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nb0 = 2 * p;
        const int nb = static_cast<int>(std::min<int64_t>(2, n_blocks - nb0));
        widen(nb0, nb, panel.get());
        const uint32_t* j1 = panel.get() + (nb > 1 ? Kt * 8 : 0);  // a lone block: twice
        // this thread's next pair of blocks, prefetched while this one multiplies
        const int64_t pf_lines =
            p + 1 < p1 ? std::min<int64_t>(2, n_blocks - nb0 - 2) * block_bytes / 64 : 0;
        const char* pf = pf_lines ? static_cast<const char*>(w) + (nb0 + 2) * block_bytes
                                  : nullptr;
        for (int64_t m0 = 0; m0 < M; m0 += kRows) {
          block(a16.get(), Kt, m0, panel.get(), j1, acc, pf, m0 == 0 ? pf_lines : 0);
          store(acc, m0, std::min(kRows, M - m0), nb0, nb);
        }
      }
      _tile_release();
    }
  }
}

}  // namespace tersor::bf16_tiles
