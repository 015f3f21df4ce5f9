// One W4Tile as bf16 pairs, for the bf16 kernels (gemm_w4_avx512bf16.cpp, gemm_w4_amx.cpp;
// include only from files compiled with AVX-512 BW). A W4Tile lane holds k = 8t + i at nibble i
// of bytes 0-3 (low nibbles k 0-3, high k 4-7, formats.h); vpshufb spreads bytes (0, 1) and
// (2, 3) of every lane into words, and vpermw looks the nibble up in a 32-word table of
// bf16(i % 16 - 8) (it reads index bits 0-4, so the high nibble sitting in bits 4-7 of a word
// selects the same value; shifted down 4 it is the index itself): 8 instructions per 128
// weights, each 32-bit lane of the results
//
//   pair[p] lane n = bf16(q[2p][n] - 8) | bf16(q[2p + 1][n] - 8) << 16      p = 0..3 (k 0-7)
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace tersor::gemm_w4 {

struct W4Pairs {
  __m512i lut, spread01, spread23;
  W4Pairs() {
    alignas(64) uint16_t t[32];  // words i: bf16(i % 16 - 8), the top half of the exact fp32
    for (int i = 0; i < 32; ++i) {
      const float v = static_cast<float>(i % 16 - 8);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      t[i] = static_cast<uint16_t>(u >> 16);
    }
    lut = _mm512_load_si512(t);
    // per 32-bit lane: bytes (0, 1) -> words (0, 1); bytes (2, 3) -> words (0, 1)
    spread01 = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1));
    spread23 = _mm512_broadcast_i32x4(
        _mm_setr_epi8(2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15, -1));
  }
  // the four pair vectors of the W4Tile at `tile` (64 bytes)
  void operator()(const uint8_t* tile, __m512i pair[4]) const {
    const __m512i v = _mm512_loadu_si512(tile);
    const __m512i b01 = _mm512_shuffle_epi8(v, spread01), b23 = _mm512_shuffle_epi8(v, spread23);
    pair[0] = _mm512_permutexvar_epi16(b01, lut);                         // k 0, 1
    pair[1] = _mm512_permutexvar_epi16(b23, lut);                         // k 2, 3
    pair[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(b01, 4), lut);  // k 4, 5
    pair[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(b23, 4), lut);  // k 6, 7
  }
};

}  // namespace tersor::gemm_w4
