// W4 weight-only GEMM on AMX-BF16 tiles (Sapphire Rapids on), for batches of rows: the tile
// path of gemm_w4.h's bf16 contract (run_bf16_tiles). vdpbf16ps does 32 multiply-adds per
// instruction; tdpbf16ps does 16 x 16 x 32 = 8192, so from a few dozen rows the work is
// widening the weights, not multiplying them. The group scales therefore go into the widened
// weights (a per-group epilogue over the tile accumulators would cost as much as the tiles):
//
//   w[k][n] = bf16((q - z) * s)      fp32 product, rounded to nearest even (relative 2^-9)
//
// Per call, the rows are rounded to bf16 once (A16[Mp][Kp], zero past K and past M). Each
// thread takes pairs of 16-column blocks; per pair it widens the two blocks once into a panel
// that every 32-row block then multiplies from L2:
//
//   panel[j][kk][16 columns]  u32 = w[2kk][n] | w[2kk + 1][n] << 16     (tdpbf16ps' B layout)
//
//   B tile of step s: rows kk = 16 s .. 16 s + 15 of block j (32 k), 64 bytes each
//   A tile:           16 rows of A16, k = 32 s .. 32 s + 31 (64 bytes)
//   C tiles 0..3:     rows 0-15 / 16-31 x blocks j0 / j1, fp32, over the whole K
//
// Then y = C + bias. The widening starts as gemm_w4_avx512bf16.cpp's (a nibble table gives
// bf16(q - 8) pairs), then takes each pair to fp32, applies fma(q - 8, s, (8 - z) s) and
// rounds back with vcvtne2ps2bf16.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/bf16_avx512.h"
#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "gemm_w4/gemm_w4.h"
#include "gemm_w8a8/gemm_w8a8.h"  // amx_configure_tiles

namespace tersor::gemm_w4 {
namespace {

constexpr int64_t kRows = 32;  // rows of a block (2 A tiles)
constexpr int64_t kStep = 32;  // k per tile step (16 bf16 pairs: 64 bytes a tile row)

// words i of the table: bf16(i % 16 - 8), the top half of the exact fp32 value
__m512i nibble_table() {
  alignas(64) uint16_t t[32];
  for (int i = 0; i < 32; ++i) {
    const float v = static_cast<float>(i % 16 - 8);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    t[i] = static_cast<uint16_t>(u >> 16);
  }
  return _mm512_load_si512(t);
}

// Column blocks nb0, nb0 + 1 (nb of them) of the weight as scaled bf16 pairs (the layout above).
void widen_scaled(const PackedW4LinearArgs& a, int64_t nb0, int nb, int64_t Kp, uint32_t* panel) {
  const __m512i lut = nibble_table();
  // per 32-bit lane: bytes (0, 1) -> words (0, 1); bytes (2, 3) -> words (0, 1)
  const __m512i spread01 = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1));
  const __m512i spread23 = _mm512_broadcast_i32x4(
      _mm_setr_epi8(2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15, -1));
  // vcvtne2ps2bf16 (hi, lo) gives lo's 16 values, then hi's: interleave them back into pairs
  alignas(64) int16_t pairs[32];
  for (int i = 0; i < 16; ++i) pairs[2 * i] = static_cast<int16_t>(i), pairs[2 * i + 1] = static_cast<int16_t>(16 + i);
  const __m512i interleave = _mm512_load_si512(pairs);
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const int64_t G = a.group_size;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* w = a.w + (nb0 + j) * Kp * 8;  // Kp / 8 W4Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * Kp * 8);
    for (int64_t g = 0; g < a.ngroups; ++g) {
      const int64_t meta = ((nb0 + j) * a.ngroups + g) * 16;
      const __m512 s = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
      const __m512 c = a.zero ? _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(
                                                  _mm512_set1_epi32(8),
                                                  _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                      reinterpret_cast<const __m128i*>(
                                                          a.zero + meta))))),
                                              s)
                              : _mm512_setzero_ps();
      const auto scaled = [&](__m512i q8) {  // bf16(q - 8) pairs -> bf16((q - z) s) pairs
        const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(q8, 16));
        const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(q8, high));
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, s, c),
                                                          _mm512_fmadd_ps(lo, s, c));
        return _mm512_permutexvar_epi16(interleave, both);
      };
      for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
        const __m512i v = _mm512_loadu_si512(w + t * 64);
        const __m512i b01 = _mm512_shuffle_epi8(v, spread01), b23 = _mm512_shuffle_epi8(v, spread23);
        _mm512_storeu_si512(out + 4 * t + 0, scaled(_mm512_permutexvar_epi16(b01, lut)));  // k 0, 1
        _mm512_storeu_si512(out + 4 * t + 1, scaled(_mm512_permutexvar_epi16(b23, lut)));  // k 2, 3
        _mm512_storeu_si512(out + 4 * t + 2,
                            scaled(_mm512_permutexvar_epi16(_mm512_srli_epi16(b01, 4), lut)));
        _mm512_storeu_si512(out + 4 * t + 3,
                            scaled(_mm512_permutexvar_epi16(_mm512_srli_epi16(b23, 4), lut)));
      }
    }
  }
}

// One 32-row x 32-column block over the whole K, then y = acc + bias for rows < M, columns < N.
void block(const PackedW4LinearArgs& a, int64_t Kp, const uint16_t* a16, int64_t m0,
           const uint32_t* panel, int64_t nb0, int nb) {
  const char* b0 = reinterpret_cast<const char*>(panel);
  const char* b1 = nb > 1 ? b0 + Kp * 32 : b0;  // a lone last block: computed twice
  const char* a0 = reinterpret_cast<const char*>(a16 + m0 * Kp);
  const char* a1 = a0 + 16 * Kp * 2;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < Kp; k += kStep) {
    _tile_loadd(4, a0 + k * 2, Kp * 2);
    _tile_loadd(5, a1 + k * 2, Kp * 2);
    _tile_loadd(6, b0 + k * 32, 64);  // 16 pair rows of 64 bytes: 32 k
    _tile_loadd(7, b1 + k * 32, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float acc[kRows][32];
  _tile_stored(0, &acc[0][0], 128);
  _tile_stored(1, &acc[0][16], 128);
  _tile_stored(2, &acc[16][0], 128);
  _tile_stored(3, &acc[16][16], 128);
  const int64_t rows = std::min(kRows, a.M - m0);
  for (int h = 0; h < nb; ++h) {
    const int64_t n = (nb0 + h) * 16;
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512 bias = bias16(a.bias, n, mask);
    for (int64_t r = 0; r < rows; ++r)
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask,
                            _mm512_add_ps(_mm512_loadu_ps(&acc[r][16 * h]), bias));
  }
}

}  // namespace

void run_amx_bf16(const PackedW4LinearArgs& a) {
  const int64_t Kp = a.ngroups * a.group_size;  // a multiple of kStep (group_size % 32 == 0)
  const int64_t Mp = (a.M + kRows - 1) / kRows * kRows;
  const int64_t n_blocks = (a.N + 15) / 16, pairs = (n_blocks + 1) / 2;
  auto a16 = alloc_scratch<uint16_t>(Mp * Kp);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < Mp; ++m) {
      if (m < a.M) {
        round_row_bf16(a.x + m * a.ldx, a.K, Kp, a16.get() + m * Kp);
      } else {
        std::memset(a16.get() + m * Kp, 0, Kp * 2);
      }
    }
    // implicit barrier: every row is ready
    int64_t p0, p1;
    thread_range(pairs, &p0, &p1);
    if (p0 < p1) {
      auto panel = alloc_scratch<uint32_t>(2 * Kp * 8);
      gemm_w8a8::amx_configure_tiles(64);  // A, B and C tiles all 16 rows x 64 bytes
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nb0 = 2 * p;
        const int nb = static_cast<int>(std::min<int64_t>(2, n_blocks - nb0));
        widen_scaled(a, nb0, nb, Kp, panel.get());
        for (int64_t m0 = 0; m0 < a.M; m0 += kRows) block(a, Kp, a16.get(), m0, panel.get(), nb0, nb);
      }
      _tile_release();
    }
  }
}

}  // namespace tersor::gemm_w4
