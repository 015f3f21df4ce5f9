// One W4Tile as bf16 pairs, for the bf16 kernels (gemm_w4_avx512bf16.cpp, gemm_w4_amx.cpp;
// include only from files compiled with AVX-512 BW and AVX512-BF16). A W4Tile lane holds
// k = 8t + i at nibble i of bytes 0-3 (low nibbles k 0-3, high k 4-7, formats.h); vpshufb
// spreads bytes (0, 1) and (2, 3) of every lane into words, and vpermw looks the nibble up in a
// 32-word table of bf16(i % 16 - 8) (it reads index bits 0-4, so the high nibble sitting in
// bits 4-7 of a word selects the same value; shifted down 4 it is the index itself): 8
// instructions per 128 weights, each 32-bit lane of the results
//
//   pair[p] lane n = bf16(q[2p][n] - 8) | bf16(q[2p + 1][n] - 8) << 16      p = 0..3 (k 0-7)
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/half.h"

namespace tersor::gemm_w4 {

// X[g] = the sum of group g's bf16 values (a16[g G .. g G + G)), fp32 adds in k order: the
// zero points' term of the bf16 group form (gemm_w4.h).
inline void group_sums_bf16(const uint16_t* a16, int64_t ngroups, int64_t G, float* X) {
  for (int64_t g = 0; g < ngroups; ++g) {
    float sum = 0.0f;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) sum += bf16_to_float(a16[k]);
    X[g] = sum;
  }
}

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

// The same pairs with their group's scale and zero point, w = bf16((q - z) s) (gemm_w4.h's
// scaled rule): each pair to fp32, fma(q - 8, s, (8 - z) s) (the exact (q - z) s: at most 15
// significant bits), rounded to nearest even by vcvtne2ps2bf16, which writes the 16 even-k
// values and then the 16 odd-k ones, so one vpermw interleaves them back into pairs.
struct ScaledW4Pairs {
  __m512i interleave, high;
  ScaledW4Pairs() {
    alignas(64) int16_t order[32];
    for (int i = 0; i < 16; ++i) {
      order[2 * i] = static_cast<int16_t>(i);
      order[2 * i + 1] = static_cast<int16_t>(16 + i);
    }
    interleave = _mm512_load_si512(order);
    high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  }
  // s, c = (8 - z) s of one group's 16 columns (fp16 scales, or none: s = 1; u8 zero points
  // or none)
  static void group(const uint16_t* scale16, const uint8_t* zero16, __m512* s, __m512* c) {
    *s = scale16
             ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale16)))
             : _mm512_set1_ps(1.0f);
    *c = zero16 ? _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(
                                    _mm512_set1_epi32(8),
                                    _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                        reinterpret_cast<const __m128i*>(zero16))))),
                                *s)
                : _mm512_setzero_ps();
  }
  // bf16(q - 8) pairs -> bf16((q - z) s) pairs
  __m512i operator()(__m512i q8, __m512 s, __m512 c) const {
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(q8, 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(q8, high));
    const __m512i both =
        (__m512i)_mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, s, c), _mm512_fmadd_ps(lo, s, c));
    return _mm512_permutexvar_epi16(interleave, both);
  }
};

}  // namespace tersor::gemm_w4
