// The AMX-BF16 driver of the weight-only families (gemm_w4_amx.cpp, gemm_w8_amx.cpp): bf16 rows
// against bf16 weight panels on tdpbf16ps tiles. Include only from *_amx.cpp files (AMX-BF16
// and AVX512-BF16 flags; internal linkage: see common/parallel.h).
//
// Per call, the rows are rounded to bf16 once, in tile order (zero past K and past M; Kt a
// multiple of kStep), so that an A tile is 1 KiB in one piece rather than 16 rows 2 Kt bytes
// apart (at K = 4096 each in its own page; measured 0.90-0.97x the time of row-major rows):
//
//   A16[part][Mp / 16][Kt / 32][16 rows][32 k]  bf16
//
// Each thread takes pairs of 16-column blocks; per pair the family widens its two blocks once
// into a panel that every 32-row block then multiplies from L2:
//
//   panel[wpart][j][kk][16 columns]  u32 = w[2kk][n] | w[2kk + 1][n] << 16   (bf16; kk < Kt / 2)
//
//   A tile:           A16[part][rows / 16][s] (1 KiB, rows of 64 bytes)
//   B tile of step s: rows kk = 16 s .. 16 s + 15 of block j, 64 bytes each
//   C tiles 0..3:     rows 0-15 / 16-31 x blocks j0 / j1, fp32, over the whole K and every
//                     pair of parts
//
// then the family's epilogue writes a block's rows < M and columns < N from the fp32 sums.
//
// Parts (the fp32 form): fp32 rows split into three bf16 parts, x = hi + mid + lo exactly
// (split_row_tiled), and weights that are not exact in bf16 into two (the family's widening), so
// that every product of parts is exact in fp32 and the tiles add them in fp32: the products of
// an fp32 GEMM, summed in the tile unit's order (as cuBLAS's BF16x9 emulation of fp32 does with
// three parts of each side). W8's three tdpbf16ps a step run 1.7-3.2x the fp32 FMA kernel
// from 32 rows, W4's six 1.2-2x from 64 (ops/gemm_w4.py FP32_TILES_MIN_ROWS). One part of each:
// the bf16 form (rows rounded once).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/bf16_avx512.h"
#include "common/formats.h"
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

// x[0, K) as three bf16 parts in A16 order, part p at dst + p * part_stride (elements):
// hi = bf16(x), mid = bf16(x - hi), lo = x - hi - mid, each difference exact in fp32 (it is a
// multiple of x's last bit below half an ulp of the part before), so x = hi + mid + lo for
// every finite x whose low parts stay normal (|x| >= 2^-110; the tile unit flushes bf16
// denormals). A non-finite hi (inf, NaN, or an x that rounds past the bf16 range) keeps mid =
// lo = 0: inf - inf would make a NaN of an infinite input.
static inline void split_row_tiled(const float* x, int64_t K, int64_t Kt, uint16_t* dst,
                                   int64_t part_stride) {
  const __m512 inf = _mm512_set1_ps(__builtin_inff());
  for (int64_t k = 0; k < Kt; k += 16) {
    const __mmask16 mask = k < K ? tail_mask16(K - k) : 0;
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + k);
    const __m256i hi = (__m256i)_mm512_cvtneps_pbh(v);
    const __m512 hi_f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(hi_f), inf, _CMP_LT_OQ);
    const __m512 r = _mm512_maskz_sub_ps(finite, v, hi_f);
    const __m256i mid = (__m256i)_mm512_cvtneps_pbh(r);
    const __m512 mid_f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(mid), 16));
    const __m256i lo = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(r, mid_f));
    uint16_t* at = dst + k / kStep * 16 * kStep + k % kStep;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + part_stride), mid);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 2 * part_stride), lo);
  }
}

// acc (+)= the 32 x 32 block (rows m0.., blocks j0 / j1 of the chunk's panel) summed over k in
// [k0, k1) and over the XP row parts (a_part elements apart) times the WP weight parts
// (w_part u32 apart); acc's sums so far are loaded first unless `first`.
// pf / pf_lines: the next pair's packed weights, prefetched into L2 a few lines per step while
// the tiles multiply, so that its widening reads L2 instead of waiting on memory (measured on
// a Sapphire Rapids class Xeon, weights from DRAM, bf16 rows: W4 g128 and W8 at 16-32 rows
// 0.80-0.93x the time without, 0.93-1.04x at 128 rows).
template <int XP, int WP>
static inline void block(const uint16_t* a16, int64_t a_part, int64_t Kt, int64_t m0, int64_t k0,
                         int64_t k1, const uint32_t* j0, const uint32_t* j1, int64_t w_part,
                         bool first, float (*acc)[32], const char* pf = nullptr,
                         int64_t pf_lines = 0) {
  const char* a0 = reinterpret_cast<const char*>(a16 + m0 * Kt);  // row blocks m0, m0 + 16
  const char* a1 = a0 + 16 * Kt * 2;
  const char* b0 = reinterpret_cast<const char*>(j0) - k0 * 32;  // the panel starts at k0
  const char* b1 = reinterpret_cast<const char*>(j1) - k0 * 32;
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, &acc[0][0], 128);
    _tile_loadd(1, &acc[0][16], 128);
    _tile_loadd(2, &acc[16][0], 128);
    _tile_loadd(3, &acc[16][16], 128);
  }
  const int64_t steps = (k1 - k0) / kStep, per_step = (pf_lines + steps - 1) / steps;
  int64_t line = 0;
  for (int64_t k = k0; k < k1; k += kStep) {
    for (int64_t i = 0; i < per_step && line < pf_lines; ++i, ++line)
      _mm_prefetch(pf + line * 64, _MM_HINT_T1);
    for (int wp = 0; wp < WP; ++wp) {
      _tile_loadd(6, b0 + (wp * w_part + k * 8) * 4, 64);  // 16 pair rows of 64 bytes: 32 k
      _tile_loadd(7, b1 + (wp * w_part + k * 8) * 4, 64);
      for (int xp = 0; xp < XP; ++xp) {
        _tile_loadd(4, a0 + (xp * a_part + k * 16) * 2, 64);  // tile k / 32: 16 x 64 bytes
        _tile_loadd(5, a1 + (xp * a_part + k * 16) * 2, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  _tile_stored(0, &acc[0][0], 128);
  _tile_stored(1, &acc[0][16], 128);
  _tile_stored(2, &acc[16][0], 128);
  _tile_stored(3, &acc[16][16], 128);
}

// The k chunk: all rows' parts of one chunk stay in L2 while every pair of column blocks
// multiplies them. One chunk of all of Kt where they fit; past that (the fp32 form from 64
// rows at K = 4096) the rows re-read from L3 per pair bound the tiles: W8 at 128 rows ran at
// 0.33x the tile rate with the 3 MiB of parts in one chunk.
constexpr int64_t kChunkBytes = 1 << 20;

static inline int64_t chunk_k(int64_t parts_bytes_per_k, int64_t Kt, int64_t k_align) {
  const int64_t kc = kChunkBytes / parts_bytes_per_k / k_align * k_align;
  return kc >= Kt ? Kt : std::max(kc, k_align);
}

// widen(nb0, nb, k0, k1, panel): blocks nb0 .. nb0 + nb (nb 1 or 2), k in [k0, k1), into panel
// as the layout above, (k1 - k0) / 2 pair rows a block: panel[wpart][j] at (2 wpart + j) (k1 -
// k0) * 8 u32;
// store(acc, m0, rows, nb0, nb): the block's epilogue, once its sums are whole.
// block_bytes: a block's packed weight bytes (the blocks of a family lie one after another; the
// next pair's are prefetched where K is one chunk). k_align: the chunks' k multiple (kStep,
// or the group size).
// XP: 1 (rows rounded to bf16) or 3 (fp32 rows in three parts); WP: the weight parts widen
// writes (1 or 2). One pass over M <= kPassRows rows (run, below, makes the passes), its rows'
// parts written to a16 (XP * Mp * Kt).
template <int XP, int WP, class Widen, class Store>
static inline void run_pass(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t N,
                            int64_t Kt, int nthreads, const void* w, int64_t block_bytes,
                            int64_t k_align, uint16_t* a16, Widen& widen, Store& store) {
  static_assert(XP == 1 || XP == 3, "rows: rounded (1) or split in three (3)");
  const int64_t Mp = (M + kRows - 1) / kRows * kRows, m_blocks = Mp / kRows;
  const int64_t n_blocks = (N + 15) / 16, pairs = (n_blocks + 1) / 2;
  const int64_t Kc = chunk_k(XP * Mp * 2, Kt, k_align);
  const int nt = threads_for_work(double(M) * N * K * XP * WP, nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < Mp; ++m) {  // rows past M: zero (K = 0)
      const float* row = x + (m < M ? m : 0) * ldx;
      uint16_t* dst = a16 + m / 16 * 16 * Kt + m % 16 * kStep;
      if (XP == 1)
        round_row_tiled(row, m < M ? K : 0, Kt, dst);
      else
        split_row_tiled(row, m < M ? K : 0, Kt, dst, Mp * Kt);
    }
    // implicit barrier: every row is ready
    int64_t p0, p1;
    thread_range(pairs, &p0, &p1);
    if (p0 < p1) {
      auto panel = alloc_scratch<uint32_t>(WP * 2 * Kc * 8);
      // the sums of every (pair, row block) between chunks; one block's when K is one chunk
      const bool chunked = Kc < Kt;
      auto sums = alloc_scratch<float>((chunked ? (p1 - p0) * m_blocks : 1) * kRows * 32);
      gemm_w8a8::amx_configure_tiles(64);  // A, B and C tiles all 16 rows x 64 bytes
      for (int64_t k0 = 0; k0 < Kt; k0 += Kc) {
        const int64_t k1 = std::min(Kt, k0 + Kc);
        const int64_t w_part = 2 * (k1 - k0) * 8;  // u32 from one weight part to the next
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t nb0 = 2 * p;
          const int nb = static_cast<int>(std::min<int64_t>(2, n_blocks - nb0));
          widen(nb0, nb, k0, k1, panel.get());
          const uint32_t* j1 = panel.get() + (nb > 1 ? (k1 - k0) * 8 : 0);  // lone block: twice
          // this thread's next pair of blocks, prefetched while this one multiplies
          const int64_t pf_lines = p + 1 < p1 && !chunked
                                       ? std::min<int64_t>(2, n_blocks - nb0 - 2) * block_bytes / 64
                                       : 0;
          const char* pf = pf_lines ? static_cast<const char*>(w) + (nb0 + 2) * block_bytes
                                    : nullptr;
          for (int64_t mb = 0; mb < m_blocks; ++mb) {
            auto* acc = reinterpret_cast<float(*)[32]>(
                sums.get() + (chunked ? (p - p0) * m_blocks + mb : 0) * kRows * 32);
            block<XP, WP>(a16, Mp * Kt, Kt, mb * kRows, k0, k1, panel.get(), j1, w_part,
                          k0 == 0, acc, pf, mb == 0 ? pf_lines : 0);
            if (k1 == Kt) store(acc, mb * kRows, std::min(kRows, M - mb * kRows), nb0, nb);
          }
        }
      }
      _tile_release();
    }
  }
}

// Rows in passes of at most kPassRows, each as above: the rows' parts of a pass, and the sums
// a thread keeps between k chunks (its pairs x the pass's row blocks x 4 KiB), stay within L2
// sizes (a 4096-row prefill at K = 4096 would hold 100 MiB of parts in one pass), at the cost
// of widening the weights once a pass. 4096x4096, fp32 rows, 2048 rows: W8 passes of 256 /
// 1024 / all rows 72.5 / 86.9 / 121 ms, W4 g128 122 / 163 / -; bf16 rows W4 g128 36.7 / 39.2
// ms; 128-row passes were level with 256.
constexpr int64_t kPassRows = 256;

template <int XP = 1, int WP = 1, class Widen, class Store>
static inline void run(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t N, int64_t Kt,
                       int nthreads, const void* w, int64_t block_bytes, int64_t k_align,
                       Widen&& widen, Store&& store) {
  // the rows' parts of one pass (A16 above), for every pass
  auto a16 = alloc_scratch<uint16_t>(XP * round_up(std::min(M, kPassRows), kRows) * Kt);
  for (int64_t r0 = 0; r0 < M; r0 += kPassRows) {
    auto store_rows = [&](const float (*acc)[32], int64_t m0, int64_t rows, int64_t nb0,
                          int nb) { store(acc, r0 + m0, rows, nb0, nb); };
    run_pass<XP, WP>(x + r0 * ldx, std::min(kPassRows, M - r0), K, ldx, N, Kt, nthreads, w,
                     block_bytes, k_align, a16.get(), widen, store_rows);
  }
}

}  // namespace tersor::bf16_tiles
