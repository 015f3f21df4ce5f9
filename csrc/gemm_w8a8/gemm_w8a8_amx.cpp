// AMX-INT8 W8A8 GEMM for M >= kAmxMinRows; fewer rows go to the AVX-512 VNNI kernel. From a
// few rows on, the tile multiply is so cheap that the weights stream at memory speed, and for
// large M it runs ~2x the VNNI kernel (see the closing notes of the foundation issue).
//
// TDPBSSD multiplies signed by signed bytes, so activations stay s8 (no +128 offset, no
// column-sum compensation). The packed weight is already in AMX's B-tile layout: one W8Tile is
// one 64-byte B row (16 columns x 4 k), and the Kp/4 tiles of a column block are contiguous, so
// a B tile (16 rows = 64 k) is a plain 1 KiB load with stride 64:
//
//   A tile  (tmm4, tmm5): 16 rows of x_q x 64 k        from the s8 buffer aq[M32][lda]
//   B tile  (tmm6, tmm7): 16 k4-rows x (16 cols x 4 k) straight from the packed weight
//   C tiles (tmm0..3)   : 2 x 2 tiles of 16 x 16 int32 = a 32-row x 32-column register block
//
// Threads split pairs of column blocks; each walks all 32-row panels with its 2-block W panel
// (2 * Kp * 16 bytes, 128 KiB at K = 4096) resident in L2. The int32 block goes through a small
// buffer into the same fma epilogue as every other path (bit-identical results).
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"
#include "half_io/half_avx512.h"

namespace tersor::gemm_w8a8 {
namespace {

struct alignas(64) TileConfig {  // the LDTILECFG memory operand, palette 1
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of tmm0..15
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads exactly 64 bytes");

}  // namespace

void amx_configure_tiles(int64_t k_bytes) {
  uint8_t rows[8];
  uint16_t colsb[8];
  for (int t = 0; t < 8; ++t) {  // 16 rows x 64 bytes; A (4, 5) and B (6, 7) k_bytes deep
    rows[t] = t >= 6 ? static_cast<uint8_t>(k_bytes / 4) : 16;
    colsb[t] = t == 4 || t == 5 ? static_cast<uint16_t>(k_bytes) : 64;
  }
  amx_configure_tile_shapes(rows, colsb);
}

void amx_configure_tile_shapes(const uint8_t rows[8], const uint16_t colsb[8]) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = rows[t];
    cfg.colsb[t] = colsb[t];
  }
  // GCC 12 drops the stores to rows / colsb before the builtin (it does not see LDTILECFG
  // read them: the tiles then stay unconfigured and the first tile instruction is #UD, seen on
  // a Sapphire Rapids machine); the empty asm makes the whole struct live in memory.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

namespace {

constexpr int kRows = 32;  // rows of a register block (2 A tiles)

// Epilogue of one 32 x 32 int32 block: y = fma(float(acc), sx[m] * sw[n], b[n]).
void store_block(const int32_t (*acc)[32], const PackedW8LinearArgs& a, const float* sx,
                 int64_t m0, int64_t n0, int nblocks) {
  for (int h = 0; h < nblocks; ++h) {
    const int64_t n = n0 + 16 * h;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512 sw = _mm512_loadu_ps(a.w_scale + n);
    const __m512 b = bias16(a.bias, n, mask);
    const int rows = static_cast<int>(a.M - m0 < kRows ? a.M - m0 : kRows);
    for (int r = 0; r < rows; ++r) {
      const __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(&acc[r][16 * h]));
      const __m512 s = _mm512_mul_ps(_mm512_set1_ps(sx[m0 + r]), sw);
      half_io::store_y16(a, m0 + r, n, mask, _mm512_fmadd_ps(v, s, b));
    }
  }
}

// B tiles this many k steps ahead are prefetched in a pair's first row panel, where they come
// from L3 or DRAM (later panels find them in L2); the L2 streamer alone left the tile loads
// waiting. In-process A/B, 2 threads, 24 rotated copies (Sapphire Rapids class): 4096x4096,
// 2048x8192, 8192x2048 at 8-64 rows 1.04-1.31x faster, 128 rows 1.04-1.10x, 512 rows level
// (the first panel a sixteenth of the work). In every panel it was 0.96-1.0x at 512 rows
// (tile loop microbench, quiet host), so only the first.
constexpr int64_t kPrefetchSteps = 4;

// The B tiles of k step `k` (a multiple of 64) of both blocks, into L1.
static inline void prefetch_b(const int8_t* b0, const int8_t* b1, int64_t k) {
  for (int line = 0; line < 16; ++line) {
    _mm_prefetch(reinterpret_cast<const char*>(b0 + k * 16 + 64 * line), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b1 + k * 16 + 64 * line), _MM_HINT_T0);
  }
}

// One 32 x 32 block: A tiles tmm4, tmm5 (rows 0-15, 16-31), B tiles tmm6, tmm7, C tmm0..3.
// kPrefetch: the pair's first panel (kPrefetchSteps above).
template <bool kPrefetch>
void block_32(const int8_t* a0, const int8_t* b0, const int8_t* b1, const int8_t (*b_tail)[1024],
              int64_t lda, int64_t k_full, int64_t tail_bytes, int32_t (*acc)[32]) {
  const int8_t* a1 = a0 + 16 * lda;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < k_full; k += 64) {
    if (kPrefetch && k + 64 * kPrefetchSteps < k_full) prefetch_b(b0, b1, k + 64 * kPrefetchSteps);
    _tile_loadd(4, a0 + k, lda);
    _tile_loadd(5, a1 + k, lda);
    _tile_loadd(6, b0 + k * 16, 64);
    _tile_loadd(7, b1 + k * 16, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  if (tail_bytes) {
    _tile_loadd(4, a0 + k_full, lda);
    _tile_loadd(5, a1 + k_full, lda);
    _tile_loadd(6, b_tail[0], 64);
    _tile_loadd(7, b_tail[1], 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, &acc[0][0], 128);
  _tile_stored(1, &acc[0][16], 128);
  _tile_stored(2, &acc[16][0], 128);
  _tile_stored(3, &acc[16][16], 128);
}

// The last (or only) block of at most 16 rows: half the tile work, same weight stream. This
// is what makes AMX pay from a few rows on: the weights stream once at memory speed and the
// multiply costs next to nothing.
template <bool kPrefetch>
void block_16(const int8_t* a0, const int8_t* b0, const int8_t* b1, const int8_t (*b_tail)[1024],
              int64_t lda, int64_t k_full, int64_t tail_bytes, int32_t (*acc)[32]) {
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t k = 0; k < k_full; k += 64) {
    if (kPrefetch && k + 64 * kPrefetchSteps < k_full) prefetch_b(b0, b1, k + 64 * kPrefetchSteps);
    _tile_loadd(4, a0 + k, lda);
    _tile_loadd(6, b0 + k * 16, 64);
    _tile_loadd(7, b1 + k * 16, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
  }
  if (tail_bytes) {
    _tile_loadd(4, a0 + k_full, lda);
    _tile_loadd(6, b_tail[0], 64);
    _tile_loadd(7, b_tail[1], 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
  }
  _tile_stored(0, &acc[0][0], 128);
  _tile_stored(1, &acc[0][16], 128);
}

}  // namespace

void amx_gemm_quantized(const PackedW8LinearArgs& a, const int8_t* aq, int64_t lda,
                        const float* sx) {
  const int64_t Kp = round_up(a.K, 4);  // the packed weight's K
  const int64_t M32 = round_up(a.M, kRows);
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t n_pairs = (n_blocks + 1) / 2;
  const int64_t block_bytes = Kp * 16;
  int64_t p0, p1;
  thread_range(n_pairs, &p0, &p1);
  if (p0 >= p1) return;
  amx_configure_tiles();
  alignas(64) int32_t acc[kRows][32];
  // The last k step of a K that is not a multiple of 64 would read B rows past the block: it
  // reads zero-padded copies instead (A is zero there, but memory past the weight's end need
  // not be mapped).
  alignas(64) int8_t b_tail[2][1024];
  std::memset(b_tail, 0, sizeof(b_tail));
  const int64_t k_full = Kp / 64 * 64;
  const int64_t tail_bytes = (Kp - k_full) * 16;
  for (int64_t pair = p0; pair < p1; ++pair) {
    const int64_t nb0 = 2 * pair;
    const int nblocks = static_cast<int>(n_blocks - nb0 < 2 ? n_blocks - nb0 : 2);
    const int8_t* b0 = a.w + nb0 * block_bytes;
    const int8_t* b1 = nblocks == 2 ? b0 + block_bytes : b0;  // odd tail: computed twice
    if (tail_bytes) {
      std::memcpy(b_tail[0], b0 + k_full * 16, tail_bytes);
      std::memcpy(b_tail[1], b1 + k_full * 16, tail_bytes);
    }
    for (int64_t m0 = 0; m0 < M32; m0 += kRows) {
      const int8_t* a0 = aq + m0 * lda;
      const bool first = m0 == 0;  // B from memory: prefetched (kPrefetchSteps)
      if (a.M - m0 <= 16) {
        (first ? block_16<true> : block_16<false>)(a0, b0, b1, b_tail, lda, k_full, tail_bytes,
                                                   acc);
      } else {
        (first ? block_32<true> : block_32<false>)(a0, b0, b1, b_tail, lda, k_full, tail_bytes,
                                                   acc);
      }
      if (m0 < a.M) store_block(acc, a, sx, m0, nb0 * 16, nblocks);
    }
  }
  _tile_release();
}

void run_rows_amx(const PackedW8LinearArgs& a, const RowFill& fill) {
  if (a.M < kAmxMinRows) return run_rows_avx512(a, fill);
  const int64_t M32 = round_up(a.M, kRows);
  const int64_t lda = amx_lda(a.K);
  auto aq = alloc_scratch<int8_t>(M32 * lda);
  auto sx = alloc_scratch<float>(M32);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    quant_act::fill_rows_amx(a.M, a.K, M32, lda, aq.get(), sx.get(),
                             [&](int64_t m, uint8_t* row) { return fill(m, row, 4, 0); });
    amx_gemm_quantized(a, aq.get(), lda, sx.get());
  });
}

void run_amx(const PackedW8LinearArgs& a) {
  run_rows_amx(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx512(quant_act::a8_row(a, m), a.K, dst, gs, xm,
                                          quant_act::amax_floor(a.row_amax, m));
  });
}

}  // namespace tersor::gemm_w8a8
