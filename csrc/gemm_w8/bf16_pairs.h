// One W8Tile as bf16 pairs, for the bf16 kernels (gemm_w8_avx512bf16.cpp, gemm_w8_amx.cpp;
// include only from files compiled with AVX-512 BW). Codes in [-127, 127] are exact in bf16. A
// W8Tile lane holds k 0-3 of one column as 4 bytes (formats.h); per lane, vpshufb moves bytes
// (0, 1) and (2, 3) into the high halves of two words, an arithmetic shift sign-extends them,
// and the int16 pair goes through fp32 (exact) to its top 16 bits, the bf16:
//
//   pair[p] lane n = bf16(w[2p][n]) | bf16(w[2p + 1][n]) << 16      p = 0, 1 (k 0-3)
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace tersor::gemm_w8 {

struct W8Pairs {
  // per 32-bit lane: bytes (0, 1) / (2, 3) -> the high bytes of words (0, 1)
  __m512i hi01 = _mm512_broadcast_i32x4(
      _mm_setr_epi8(-1, 0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13));
  __m512i hi23 = _mm512_broadcast_i32x4(
      _mm_setr_epi8(-1, 2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15));

  // int16 pairs (one per 32-bit lane) -> bf16 pairs, exactly (|v| <= 127)
  static __m512i bf16(__m512i v) {
    const __m512 even = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16));
    const __m512 odd = _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 16));
    return _mm512_mask_blend_epi16(0xAAAAAAAA, _mm512_srli_epi32(_mm512_castps_si512(even), 16),
                                   _mm512_castps_si512(odd));
  }
  // the two pair vectors of the W8Tile at `tile` (64 bytes)
  void operator()(const int8_t* tile, __m512i pair[2]) const {
    const __m512i v = _mm512_loadu_si512(tile);
    pair[0] = bf16(_mm512_srai_epi16(_mm512_shuffle_epi8(v, hi01), 8));  // k 0, 1
    pair[1] = bf16(_mm512_srai_epi16(_mm512_shuffle_epi8(v, hi23), 8));  // k 2, 3
  }
};

}  // namespace tersor::gemm_w8
