// W8 weight-only GEMM on AMX-BF16 tiles (Sapphire Rapids on), for batches of rows: the tile
// path of gemm_w8.h's bf16 contract (run_bf16_tiles). The int8 codes are exact in bf16 and the
// scale is per output channel, so the weights enter the tiles exactly and the scale stays in
// the epilogue, as in the vdpbf16ps kernel; only the order of the fp32 additions is the tile
// unit's:
//
//   acc = sum_k bf16(x[k]) w[k]   (fp32),     y = fma(acc, scale_w[n], bias[n])
//
// The tiles, the rows and the threads: common/bf16_tiles.h; the panel is the vdpbf16ps
// kernel's (gemm_w8_avx512bf16.cpp), zero from the packed weight's Kp up to the tile K.
#include <immintrin.h>

#include <cstring>

#include "common/bf16_tiles.h"
#include "common/formats.h"
#include "common/simd.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {
namespace {

// int16 pairs (one per 32-bit lane) -> bf16 pairs, exactly (|v| <= 127)
__m512i bf16_pairs(__m512i v) {
  const __m512 even = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16));
  const __m512 odd = _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 16));
  return _mm512_mask_blend_epi16(0xAAAAAAAA, _mm512_srli_epi32(_mm512_castps_si512(even), 16),
                                 _mm512_castps_si512(odd));
}

// Blocks nb0 .. nb0 + nb as bf16 pairs, Kp / 2 pair rows from the W8Tiles, zero up to Kt / 2.
void widen(const PackedW8LinearArgs& a, int64_t nb0, int nb, int64_t Kp, int64_t Kt,
           uint32_t* panel) {
  // per 32-bit lane: bytes (0, 1) / (2, 3) -> the high bytes of words (0, 1)
  const __m512i hi01 = _mm512_broadcast_i32x4(
      _mm_setr_epi8(-1, 0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13));
  const __m512i hi23 = _mm512_broadcast_i32x4(
      _mm_setr_epi8(-1, 2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15));
  for (int j = 0; j < nb; ++j) {
    const int8_t* w = a.w + (nb0 + j) * Kp * 16;  // Kp / 4 W8Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * Kt * 8);
    for (int64_t t = 0; t < Kp / 4; ++t) {
      const __m512i v = _mm512_loadu_si512(w + t * 64);
      _mm512_storeu_si512(out + 2 * t,  // k 0, 1
                          bf16_pairs(_mm512_srai_epi16(_mm512_shuffle_epi8(v, hi01), 8)));
      _mm512_storeu_si512(out + 2 * t + 1,  // k 2, 3
                          bf16_pairs(_mm512_srai_epi16(_mm512_shuffle_epi8(v, hi23), 8)));
    }
    std::memset(out + Kp / 2, 0, (Kt - Kp) / 2 * 64);
  }
}

}  // namespace

void run_amx_bf16(const PackedW8LinearArgs& a) {
  const int64_t Kp = round_up(a.K, 4), Kt = round_up(a.K, bf16_tiles::kStep);
  bf16_tiles::run(
      a.x, a.M, a.K, a.ldx, a.N, Kt, a.nthreads,
      [&](int64_t nb0, int nb, uint32_t* panel) { widen(a, nb0, nb, Kp, Kt, panel); },
      [&](const float (*acc)[32], int64_t m0, int64_t rows, int64_t nb0, int nb) {
        for (int h = 0; h < nb; ++h) {  // y = fma(acc, scale_w, bias)
          const int64_t n = (nb0 + h) * 16;
          const __mmask16 mask = tail_mask16(a.N - n);
          const __m512 s = _mm512_loadu_ps(a.w_scale + n);  // [Np]
          const __m512 bias = bias16(a.bias, n, mask);
          for (int64_t r = 0; r < rows; ++r)
            _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask,
                                  _mm512_fmadd_ps(_mm512_loadu_ps(&acc[r][16 * h]), s, bias));
        }
      });
}

}  // namespace tersor::gemm_w8
