// AMX-INT8 W4A8 GEMM for M >= kAmxMinRows (rules in gemm_w4a8.h; bit-identical results).
//
// Per pair of column blocks, the int4 codes are expanded once into an s8 B panel that holds
// (q - z) directly, in AMX's B-tile layout, which is the W4Tile nibble order unrolled:
//
//   W4Tile t, low nibbles  (k 8t .. 8t+3, 16 columns)  ->  B row 2t     (64 bytes)
//   W4Tile t, high nibbles (k 8t+4 .. 8t+7)             ->  B row 2t + 1
//
// so TDPBSSD yields t_g = sum (q - z) * xq of a group straight away (no zero-point term).
// Group scales stop the int32 tiles from running over all of K: after each group the 32 x 32
// int32 block goes through a buffer into an fp32 block, acc = fma(float(t_g), s_g, acc), the
// same order as every other path. Groups of 32 use 32-k tiles, larger groups 64-k tiles.
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "quant_act/quant_act.h"
#include "half_io/half_avx512.h"

namespace tersor::gemm_w4a8 {
namespace {

struct alignas(64) TileConfig {  // the LDTILECFG memory operand, palette 1
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads exactly 64 bytes");

// C tiles tmm0-3: 16 x 16 int32; A tiles tmm4-5: 16 rows x ks bytes; B tiles tmm6-7: ks/4 rows.
void configure_tiles(int ks) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 4; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  for (int t = 4; t < 6; ++t) cfg.rows[t] = 16, cfg.colsb[t] = static_cast<uint16_t>(ks);
  for (int t = 6; t < 8; ++t) cfg.rows[t] = static_cast<uint8_t>(ks / 4), cfg.colsb[t] = 64;
  // GCC 12 drops the stores to rows / colsb before the builtin (it does not see LDTILECFG
  // read them: the tiles then stay unconfigured and the first tile instruction is #UD, seen on
  // a Sapphire Rapids machine); the empty asm makes the whole struct live in memory.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Codes of column block nb -> s8 rows (q - z), 64 bytes per k4 row.
void expand_block(const PackedW4LinearArgs& a, int64_t nb, int8_t* out) {
  const int64_t G = a.group_size, k8n = a.ngroups * G / 8;
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const uint8_t* codes = a.w + nb * k8n * 64;
  for (int64_t g = 0; g < a.ngroups; ++g) {
    const int64_t meta = (nb * a.ngroups + g) * 16;
    // z of column c in all 4 bytes of lane c
    const __m512i z = a.zero ? _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                      reinterpret_cast<const __m128i*>(
                                                          a.zero + meta))),
                                                  _mm512_set1_epi32(0x01010101))
                             : _mm512_set1_epi8(8);
    for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
      const __m512i v = _mm512_loadu_si512(codes + t * 64);
      const __m512i lo = _mm512_and_si512(v, nibble);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      _mm512_store_si512(out + (2 * t) * 64, _mm512_sub_epi8(lo, z));
      _mm512_store_si512(out + (2 * t + 1) * 64, _mm512_sub_epi8(hi, z));
    }
  }
}

// acc = fma(float(t_g), scale, acc) for column block h of the C tiles' rows (all of them: rows
// past M hold zero activations), acc = fma(float(t_0), scale, 0) at the first group (no clear
// of acc per row block: a rep stos per block was ~6% of the kernel). ROWS is fixed at compile
// time so the loop unrolls (the per-row loop's own counter was ~15% of the kernel).
template <int ROWS>
inline void group_float_step(const int32_t (*cbuf)[32], float (*acc)[32], int h, __m512 sv,
                             bool first) {
  if (first) {
#pragma GCC unroll 32
    for (int r = 0; r < ROWS; ++r)
      _mm512_store_ps(&acc[r][16 * h],
                      _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(&cbuf[r][16 * h])), sv,
                                      _mm512_setzero_ps()));
  } else {
#pragma GCC unroll 32
    for (int r = 0; r < ROWS; ++r)
      _mm512_store_ps(&acc[r][16 * h],
                      _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(&cbuf[r][16 * h])), sv,
                                      _mm512_load_ps(&acc[r][16 * h])));
  }
}

}  // namespace

void run_amx(const PackedW4LinearArgs& a) {
  if (a.M < kAmxMinRows) return run_avx512(a);
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  // One group (per channel): any K; tile steps of 64 over K rounded up, one epilogue.
  const bool one_group = a.ngroups == 1;
  const int ks = (one_group || G % 64 == 0) ? 64 : 32;
  const int64_t Kq = one_group ? round_up(Kp, 64) : Kp;
  const int64_t steps = (one_group ? Kq : G) / ks;  // tile steps per group
  const int64_t lda = Kq + 64;  // off a power of two: see gemm_w8a8_amx.cpp
  const int64_t M32 = round_up(a.M, 32);
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t n_pairs = (n_blocks + 1) / 2;

  auto aq = alloc_scratch<int8_t>(M32 * lda);
  auto sx = alloc_scratch<float>(M32);

  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    quant_act::fill_rows_amx(a.M, a.K, M32, lda, aq.get(), sx.get(), [&](int64_t m, uint8_t* row) {
      return quant_act::a8_plane_codes(a, m, quant_act::quantize_row_avx512,
                                       quant_act::quantize_row_lo_avx2, row, 4);
    });

    int64_t p0, p1;
    thread_range(n_pairs, &p0, &p1);
    if (p0 < p1) {
      configure_tiles(ks);
      auto bexp = alloc_scratch<int8_t>(2 * Kq * 16);  // two expanded blocks, Kq/4 rows of 64 B
      std::memset(bexp.get(), 0, 2 * Kq * 16);   // rows past Kp stay zero
      int8_t* bx[2] = {bexp.get(), bexp.get() + Kq * 16};
      alignas(64) int32_t cbuf[32][32];
      alignas(64) float acc[32][32];
      const int64_t block_bytes = Kp / 2 * 16;  // one column block's codes
      for (int64_t pair = p0; pair < p1; ++pair) {
        const int64_t nb0 = 2 * pair;
        const int nblocks = static_cast<int>(n_blocks - nb0 < 2 ? n_blocks - nb0 : 2);
        expand_block(a, nb0, bx[0]);
        if (nblocks == 2) expand_block(a, nb0 + 1, bx[1]);
        // this thread's next pair of blocks, prefetched into L2 a few lines per group while this
        // pair's first row block multiplies, so that expand_block reads L2, not memory
        const int64_t pf_lines =
            pair + 1 < p1 ? (n_blocks - nb0 - 2 < 2 ? n_blocks - nb0 - 2 : 2) * block_bytes / 64
                          : 0;
        const char* pf = reinterpret_cast<const char*>(a.w) + (nb0 + 2) * block_bytes;
        const int64_t pf_per_group = (pf_lines + a.ngroups - 1) / a.ngroups;
        int64_t line = 0;
        for (int64_t m0 = 0; m0 < a.M; m0 += 32) {
          const bool two = a.M - m0 > 16;  // 32 rows (4 C tiles) or 16 (2)
          const int rows = static_cast<int>(a.M - m0 < 32 ? a.M - m0 : 32);
          const int8_t* a0 = aq.get() + m0 * lda;
          const int8_t* a1 = a0 + 16 * lda;
          for (int64_t g = 0; g < a.ngroups; ++g) {
            for (int64_t i = 0; i < pf_per_group && line < pf_lines; ++i, ++line)
              _mm_prefetch(pf + line * 64, _MM_HINT_T1);
            _tile_zero(0);
            _tile_zero(1);
            if (two) {
              _tile_zero(2);
              _tile_zero(3);
            }
            for (int64_t s = 0; s < steps; ++s) {
              const int64_t k = (g * steps + s) * ks;
              _tile_loadd(4, a0 + k, lda);
              _tile_loadd(6, bx[0] + k * 16, 64);
              _tile_loadd(7, bx[1] + k * 16, 64);
              _tile_dpbssd(0, 4, 6);
              _tile_dpbssd(1, 4, 7);
              if (two) {
                _tile_loadd(5, a1 + k, lda);
                _tile_dpbssd(2, 5, 6);
                _tile_dpbssd(3, 5, 7);
              }
            }
            _tile_stored(0, &cbuf[0][0], 128);
            _tile_stored(1, &cbuf[0][16], 128);
            if (two) {
              _tile_stored(2, &cbuf[16][0], 128);
              _tile_stored(3, &cbuf[16][16], 128);
            }
            for (int h = 0; h < nblocks; ++h) {
              const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                  a.scale + ((nb0 + h) * a.ngroups + g) * 16)));
              if (two)
                group_float_step<32>(cbuf, acc, h, sv, g == 0);
              else
                group_float_step<16>(cbuf, acc, h, sv, g == 0);
            }
          }
          for (int h = 0; h < nblocks; ++h) {
            const int64_t n = (nb0 + h) * 16;
            if (n >= a.N) break;
            const int64_t left = a.N - n;
            const __mmask16 mask = tail_mask16(left);
            const __m512 b = bias16(a.bias, n, mask);
            for (int r = 0; r < rows; ++r)
              half_io::store_y16(a, m0 + r, n, mask,
                                 _mm512_fmadd_ps(_mm512_load_ps(&acc[r][16 * h]),
                                                 _mm512_set1_ps(sx.get()[m0 + r]), b));
          }
        }
      }
      _tile_release();
    }
  });
}

}  // namespace tersor::gemm_w4a8
