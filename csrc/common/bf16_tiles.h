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
// Each thread takes pairs of 16-column blocks; per pair the family widens its two blocks into
// a panel that every 32-row block then multiplies from L2 (or, for one row block, into
// L1-sized pieces just before their steps: Pieces):
//
//   panel[j][kk][16 columns]  u32 = w[2kk][n] | w[2kk + 1][n] << 16   (bf16; kk < Kt / 2)
//
//   A tile:           A16[part][rows / 16][s] (1 KiB, rows of 64 bytes)
//   B tile of step s: rows kk = 16 s .. 16 s + 15 of block j, 64 bytes each
//   C tiles 0..3:     rows 0-15 / 16-31 x blocks j0 / j1, fp32, over the whole K (or one
//                     group: block_groups) and every row part
//
// then the family's epilogue writes a block's rows < M and columns < N from the fp32 sums.
//
// Parts (the fp32 form): fp32 rows split into three bf16 parts, x = hi + mid + lo exactly
// (split_row_tiled), against weights exact in bf16 (W8's codes, W4's integers q - z), so that
// every product is exact in fp32 and the tiles add them in fp32: the products of an fp32 GEMM,
// summed in the tile unit's order (as cuBLAS's BF16x9 emulation of fp32 does with three parts
// of each side); the scales close the sums in fp32 (W8 in the epilogue, W4 per group). W8's
// three tdpbf16ps a step run 1.7-3.2x the fp32 FMA kernel from 32 rows, W4's 1.4-1.9x at 32
// (ops/gemm_w4.py FP32_TILES_MIN_ROWS). One part: the bf16 form (rows rounded once).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// x[0, K) as three bf16 parts in A16 order (or, with step_stride kStep, in one plain row), part
// p at dst + p * part_stride (elements):
// hi = bf16(x), mid = bf16(x - hi), lo = x - hi - mid, each difference exact in fp32 (it is a
// multiple of x's last bit below half an ulp of the part before), so x = hi + mid + lo for
// every finite x whose low parts stay normal (|x| >= 2^-110; the tile unit flushes bf16
// denormals). A non-finite hi (inf, NaN, or an x that rounds past the bf16 range) keeps mid =
// lo = 0: inf - inf would make a NaN of an infinite input.
static inline void split_row_tiled(const float* x, int64_t K, int64_t Kt, uint16_t* dst,
                                   int64_t part_stride, int64_t step_stride = 16 * kStep) {
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
    uint16_t* at = dst + k / kStep * step_stride + k % kStep;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + part_stride), mid);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 2 * part_stride), lo);
  }
}

// The packed weights the thread widens next (the next work item: a pair's blocks over a k
// chunk): two ranges of `lines` 64-byte lines (at[1] null for a lone block), prefetched into L2
// a few lines per tile step while the tiles multiply, so that the widening reads L2 instead of
// waiting on memory (measured on a Sapphire Rapids class Xeon, weights from DRAM, bf16 rows:
// W4 g128 and W8 at 16-32 rows 0.80-0.93x the time without, 0.93-1.04x at 128 rows; with the
// k chunks of the fp32 form, W4 g128 at 32 rows of 8192x3072 0.91x).
struct NextWeights {
  const char* at[2] = {nullptr, nullptr};
  int64_t lines = 0;

  void start(int64_t steps) {
    per_step_ = (lines + steps - 1) / steps;
    done_ = 0;
  }
  void step() {
    for (int64_t i = 0; i < per_step_ && done_ < lines; ++i, ++done_) {
      _mm_prefetch(at[0] + done_ * 64, _MM_HINT_T1);
      if (at[1]) _mm_prefetch(at[1] + done_ * 64, _MM_HINT_T1);
    }
  }

 private:
  int64_t per_step_ = 0, done_ = 0;
};

// Where the B tiles of step k come from: at(k, b0, b1) sets the bases that b0 + 32 k, b1 + 32 k
// address (the 16 pair rows of blocks j0 / j1 at step k).
// - ChunkPanel: the work item's panel, widened once before the first row block and read by
//   every row block from L2.
// - Pieces: a lone row block (M <= 32) uses each B tile once, so there its weights are widened
//   kPieceK at a time into one of two L1-sized buffers just before their steps: the tiles then
//   read B from L1, and the next piece's widening overlaps the tile unit's work on this one
//   (W4 g128, 32 rows, 2 threads: 8192x3072 bf16 rows 0.89x the time of the L2 panel, fp32
//   rows 0.82x; 18176x4544 bf16 rows 0.85x; 256-k pieces were 1.04x slower than 128).
struct ChunkPanel {
  const char *b0, *b1;
  void at(int64_t, const char*& x0, const char*& x1) const {
    x0 = b0;
    x1 = b1;
  }
};

constexpr int64_t kPieceK = 128;  // k a piece: two blocks x 128 k x 32 bytes = 8 KiB

template <class Widen>
struct Pieces {
  Widen& widen;
  int64_t nb0, k1, piece_k;  // piece_k: kPieceK rounded up to the widening's k multiple
  int nb;
  uint32_t* bufs;  // two buffers of 2 piece_k * 8 u32
  int64_t until = -1;
  int flip = 0;
  const char *b0 = nullptr, *b1 = nullptr;

  void at(int64_t k, const char*& x0, const char*& x1) {
    if (k >= until) {
      until = std::min(k1, k + piece_k);
      uint32_t* buf = bufs + (flip ^= 1) * 2 * piece_k * 8;
      widen(nb0, nb, k, until, buf);
      b0 = reinterpret_cast<const char*>(buf) - k * 32;
      b1 = reinterpret_cast<const char*>(buf + (nb > 1 ? (until - k) * 8 : 0)) - k * 32;
    }
    x0 = b0;
    x1 = b1;
  }
};

// The four tile products of step k: C tiles 0-3 += the row blocks (A tiles 4, 5; each of the
// XP row parts, a_part elements apart) x blocks j0 / j1 (B tiles 6, 7). upper_rows: whether
// rows 16-31 hold any row; if not, their two products are skipped (C tiles 2, 3 keep their
// zeros): at 8-16 rows 1.06-1.17x faster (W4 g128 bf16 rows, 384x1536 .. 4096x4096).
template <int XP>
static inline void step(const char* a0, const char* a1, int64_t a_part, const char* b0,
                        const char* b1, int64_t k, bool upper_rows) {
  _tile_loadd(6, b0 + k * 32, 64);  // 16 pair rows of 64 bytes: 32 k
  _tile_loadd(7, b1 + k * 32, 64);
  for (int xp = 0; xp < XP; ++xp) {
    _tile_loadd(4, a0 + (xp * a_part + k * 16) * 2, 64);  // tile k / 32: 16 x 64 bytes
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (upper_rows) {
      _tile_loadd(5, a1 + (xp * a_part + k * 16) * 2, 64);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
}

static inline void store_c(float (*c)[32]) {
  _tile_stored(0, &c[0][0], 128);
  _tile_stored(1, &c[0][16], 128);
  _tile_stored(2, &c[16][0], 128);
  _tile_stored(3, &c[16][16], 128);
}

static inline void zero_c() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// acc (+)= the 32 x 32 block (rows m0.., blocks j0 / j1 of `panel`) summed over k in [k0, k1)
// and over the XP row parts; acc's sums so far are loaded first unless `first`.
template <int XP, class Panel>
static inline void block(const uint16_t* a16, int64_t a_part, int64_t Kt, int64_t m0, int64_t k0,
                         int64_t k1, Panel& panel, bool first, float (*acc)[32],
                         NextWeights next, bool upper_rows) {
  const char* a0 = reinterpret_cast<const char*>(a16 + m0 * Kt);  // row blocks m0, m0 + 16
  const char* a1 = a0 + 16 * Kt * 2;
  if (first) {
    zero_c();
  } else {
    _tile_loadd(0, &acc[0][0], 128);
    _tile_loadd(1, &acc[0][16], 128);
    _tile_loadd(2, &acc[16][0], 128);
    _tile_loadd(3, &acc[16][16], 128);
  }
  next.start((k1 - k0) / kStep);
  const char *b0, *b1;
  for (int64_t k = k0; k < k1; k += kStep) {
    next.step();
    panel.at(k, b0, b1);
    step<XP>(a0, a1, a_part, b0, b1, k, upper_rows);
  }
  store_c(acc);
}

// The grouped form (W4's fp32 rows): the weights enter the tiles as exact integers (q - z), and
// each group's sums are closed in fp32 by the group's scales, in k order:
//
//   C_g[r][n] = sum_{k in g} sum_xp x_xp[r][k] (q - z)[k][n]      the tiles, zeroed per group
//   acc[r][n] = fma(C_g[r][n], s_g[n], acc[r][n])                    (the first group: C_g s_g)
//
// scales(k, s): the scales of the group that starts at k, s[0] block j0's 16 columns, s[1]
// j1's. A group's C tiles go to `part` once its steps are issued, and are folded into acc
// only after the next group's steps are issued, so that the AVX-512 FMAs run while the tile
// unit multiplies.
static inline void fold_group(const float (*part)[32], const __m512 s[2], bool init,
                              float (*acc)[32]) {
  for (int r = 0; r < 32; ++r)
    for (int h = 0; h < 2; ++h) {
      const __m512 c = _mm512_load_ps(&part[r][16 * h]);
      __m512* to = reinterpret_cast<__m512*>(&acc[r][16 * h]);
      *to = init ? _mm512_mul_ps(c, s[h]) : _mm512_fmadd_ps(c, s[h], *to);
    }
}

template <int XP, class Panel, class Scales>
static inline void block_groups(const uint16_t* a16, int64_t a_part, int64_t Kt, int64_t m0,
                                int64_t k0, int64_t k1, int64_t G, Panel& panel, bool first,
                                float (*acc)[32], Scales& scales, NextWeights next,
                                bool upper_rows) {
  const char* a0 = reinterpret_cast<const char*>(a16 + m0 * Kt);
  const char* a1 = a0 + 16 * Kt * 2;
  alignas(64) float part[32][32];
  __m512 s[2];
  next.start((k1 - k0) / kStep);
  const char *b0, *b1;
  for (int64_t g = k0; g < k1; g += G) {
    zero_c();
    for (int64_t k = g; k < g + G; k += kStep) {
      next.step();
      panel.at(k, b0, b1);
      step<XP>(a0, a1, a_part, b0, b1, k, upper_rows);
    }
    if (g > k0) fold_group(part, s, first && g - G == k0, acc);  // the group before
    store_c(part);
    scales(g, s);
  }
  fold_group(part, s, first && k1 - G == k0, acc);
}

// No group scales: the sums run over the whole K (block above).
struct NoGroups {};

// A work item of a thread: its pair p over the k chunk [k0, k1).
struct Item {
  int64_t k0, k1, p;
};

// The k chunk: all rows' parts of one chunk and the pair's panel stay in L2 while every pair of
// column blocks multiplies them. One chunk of all of Kt where they fit; past that (the fp32
// form from 64 rows at K = 4096) the rows re-read from L3 per pair bound the tiles: W8 at 128
// rows ran at 0.33x the tile rate with the 3 MiB of parts in one chunk; W4 g128 bf16 rows, 32
// rows of 18176x4544: 1 MiB of parts and 1 MiB of panel in one chunk 1.20x the time of half.
constexpr int64_t kChunkBytes = 1 << 20;

static inline int64_t chunk_k(int64_t bytes_per_k, int64_t Kt, int64_t k_align) {
  const int64_t kc = kChunkBytes / bytes_per_k / k_align * k_align;
  return kc >= Kt ? Kt : std::max(kc, k_align);
}

// widen(nb0, nb, k0, k1, panel): blocks nb0 .. nb0 + nb (nb 1 or 2), k in [k0, k1) (multiples
// of k_align), into panel as the layout above, (k1 - k0) / 2 pair rows a block, block j at
// j (k1 - k0) * 8 u32;
// store(acc, m0, rows, nb0, nb): the block's epilogue, once its sums are whole.
// block_bytes: a block's packed weight bytes (the blocks of a family lie one after another),
// k_bytes: a block's bytes a k (NextWeights). k_align: the chunks' k multiple (kStep, or the
// group size).
// XP: 1 (rows rounded to bf16) or 3 (fp32 rows in three parts). scales(nb0, nb, k, s):
// NoGroups, or the grouped form's scales (block_groups; then k_align is the group size). One
// pass over M <= kPassRows rows (run, below, makes the passes), its rows' parts written to a16
// (XP * Mp * Kt).
template <int XP, class Widen, class Store, class Scales>
static inline void run_pass(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t N,
                            int64_t Kt, int nthreads, const void* w, int64_t block_bytes,
                            int64_t k_bytes, int64_t k_align, uint16_t* a16, Widen& widen,
                            Store& store, Scales& scales) {
  static_assert(XP == 1 || XP == 3, "rows: rounded (1) or split in three (3)");
  const int64_t Mp = (M + kRows - 1) / kRows * kRows, m_blocks = Mp / kRows;
  const int64_t n_blocks = (N + 15) / 16, pairs = (n_blocks + 1) / 2;
  const int64_t Kc = chunk_k(XP * Mp * 2 + (m_blocks > 1 ? 64 : 0), Kt, k_align);
  const int nt = threads_for_work(double(M) * N * K * XP, nthreads);
  const int64_t piece_k = round_up(kPieceK, k_align);
  // an item's packed weights: k_bytes a k from each block's start, up to its end
  auto next_weights = [&](const Item& it) {
    NextWeights next;
    const int64_t begin = it.k0 * k_bytes, end = std::min(it.k1 * k_bytes, block_bytes);
    if (end <= begin) return next;
    const char* at = static_cast<const char*>(w) + 2 * it.p * block_bytes + begin;
    next.at[0] = at;
    next.at[1] = 2 * it.p + 1 < n_blocks ? at + block_bytes : nullptr;
    next.lines = (end - begin + 63) / 64;
    return next;
  };
  parallel_team(::tersor::team(nt), [&] {
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
      // Work items in order: every k chunk, and in it this thread's pairs.
      const int64_t n_pairs = p1 - p0, items = (Kt + Kc - 1) / Kc * n_pairs;
      auto item = [&](int64_t i) {
        const int64_t k0 = i / n_pairs * Kc;
        return Item{k0, std::min(Kt, k0 + Kc), p0 + i % n_pairs};
      };
      auto buffer = alloc_scratch<uint32_t>(m_blocks > 1 ? 2 * Kc * 8 : 2 * 2 * piece_k * 8);
      // the sums of every (pair, row block) between chunks; one block's when K is one chunk
      const bool chunked = Kc < Kt;
      auto sums = alloc_scratch<float>((chunked ? n_pairs * m_blocks : 1) * kRows * 32);
      gemm_w8a8::amx_configure_tiles(64);  // A, B and C tiles all 16 rows x 64 bytes
      for (int64_t i = 0; i < items; ++i) {
        const Item it = item(i);
        const int64_t k0 = it.k0, k1 = it.k1, nb0 = 2 * it.p;
        const int nb = static_cast<int>(std::min<int64_t>(2, n_blocks - nb0));
        // the next item's weights, prefetched while this one multiplies (by the first row block)
        const NextWeights next = i + 1 < items ? next_weights(item(i + 1)) : NextWeights{};
        auto run_block = [&](auto& panel, int64_t mb) {
          auto* acc = reinterpret_cast<float(*)[32]>(
              sums.get() + (chunked ? (it.p - p0) * m_blocks + mb : 0) * kRows * 32);
          const NextWeights pf = mb == 0 ? next : NextWeights{};
          const bool upper_rows = M - mb * kRows > 16;
          if constexpr (std::is_same_v<Scales, NoGroups>)
            block<XP>(a16, Mp * Kt, Kt, mb * kRows, k0, k1, panel, k0 == 0, acc, pf, upper_rows);
          else {
            auto pair_scales = [&](int64_t k, __m512 s[2]) { scales(nb0, nb, k, s); };
            block_groups<XP>(a16, Mp * Kt, Kt, mb * kRows, k0, k1, k_align, panel, k0 == 0, acc,
                             pair_scales, pf, upper_rows);
          }
          if (k1 == Kt) store(acc, mb * kRows, std::min(kRows, M - mb * kRows), nb0, nb);
        };
        if (m_blocks == 1) {
          Pieces<Widen> pieces{widen, nb0, k1, piece_k, nb, buffer.get()};
          run_block(pieces, 0);
        } else {
          widen(nb0, nb, k0, k1, buffer.get());
          const char* j0 = reinterpret_cast<const char*>(buffer.get());
          const char* j1 = reinterpret_cast<const char*>(
              buffer.get() + (nb > 1 ? (k1 - k0) * 8 : 0));  // lone block: twice
          ChunkPanel panel{j0 - k0 * 32, j1 - k0 * 32};  // the panel starts at k0
          for (int64_t mb = 0; mb < m_blocks; ++mb) run_block(panel, mb);
        }
      }
      _tile_release();
    }
  });
}

// Rows in passes of at most kPassRows, each as above: the rows' parts of a pass, and the sums
// a thread keeps between k chunks (its pairs x the pass's row blocks x 4 KiB), stay within L2
// sizes (a 4096-row prefill at K = 4096 would hold 100 MiB of parts in one pass), at the cost
// of widening the weights once a pass. 4096x4096, fp32 rows, 2048 rows: W8 passes of 256 /
// 1024 / all rows 72.5 / 86.9 / 121 ms, W4 g128 122 / 163 / -; bf16 rows W4 g128 36.7 / 39.2
// ms; 128-row passes were level with 256.
constexpr int64_t kPassRows = 256;

template <int XP = 1, class Widen, class Store, class Scales = NoGroups>
static inline void run(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t N, int64_t Kt,
                       int nthreads, const void* w, int64_t block_bytes, int64_t k_bytes,
                       int64_t k_align, Widen&& widen, Store&& store, Scales scales = {}) {
  // the rows' parts of one pass (A16 above), for every pass
  auto a16 = alloc_scratch<uint16_t>(XP * round_up(std::min(M, kPassRows), kRows) * Kt);
  for (int64_t r0 = 0; r0 < M; r0 += kPassRows) {
    auto store_rows = [&](const float (*acc)[32], int64_t m0, int64_t rows, int64_t nb0,
                          int nb) { store(acc, r0 + m0, rows, nb0, nb); };
    run_pass<XP>(x + r0 * ldx, std::min(kPassRows, M - r0), K, ldx, N, Kt, nthreads, w,
                     block_bytes, k_bytes, k_align, a16.get(), widen, store_rows, scales);
  }
}

}  // namespace tersor::bf16_tiles
