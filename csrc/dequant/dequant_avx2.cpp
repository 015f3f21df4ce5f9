// AVX2 int8 -> fp32 dequantize: 8 bytes of a W8Tile = 2 columns x 4 k -> one ymm.
#include <immintrin.h>

#include "common/parallel.h"
#include "common/formats.h"
#include "common/simd.h"
#include "dequant/dequant.h"

namespace tersor::dequant {

void w8_avx2(const W8Args& a) {
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int8_t* wb = a.w + blk * Kp * 16;
      for (int c = 0; c < 8; ++c) {
        const int64_t n0 = blk * 16 + 2 * c;
        if (n0 >= a.N) break;
        const __m256 s =
            _mm256_setr_m128(_mm_set1_ps(a.w_scale[n0]), _mm_set1_ps(a.w_scale[n0 + 1]));
        for (int64_t k4 = 0; k4 < k4n; ++k4) {
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wb + k4 * 64 + 8 * c));
          const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s);
          const int64_t kleft = a.K - 4 * k4;
          const __m128i km = _mm_cmpgt_epi32(_mm_set1_epi32(kleft >= 4 ? 4 : (int)kleft),
                                             _mm_setr_epi32(0, 1, 2, 3));
          float* out = a.out + n0 * a.K + 4 * k4;
          if (kleft >= 4) {  // masked stores are microcoded on AMD Zen: only the K tail
            _mm_storeu_ps(out, _mm256_castps256_ps128(f));
            if (n0 + 1 < a.N) _mm_storeu_ps(out + a.K, _mm256_extractf128_ps(f, 1));
          } else {
            _mm_maskstore_ps(out, km, _mm256_castps256_ps128(f));
            if (n0 + 1 < a.N) _mm_maskstore_ps(out + a.K, km, _mm256_extractf128_ps(f, 1));
          }
        }
      }
    }
  });
}

void w4t_avx2(const W4TArgs& a) {
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const __m256i nibble = _mm256_set1_epi32(0x0f);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
      const int halves = a.N - nb * 16 > 8 ? 2 : 1;
      const __m256i mask[2] = {tail_mask8(a.N - nb * 16), tail_mask8(a.N - nb * 16 - 8)};
      for (int64_t g = 0; g < a.ngroups; ++g) {
        __m256 s[2], nzs[2];
        for (int h = 0; h < 2; ++h) {
          const int64_t meta = (nb * a.ngroups + g) * 16 + 8 * h;
          s[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.scale + meta)));
          const __m256 z = a.zero ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                        reinterpret_cast<const __m128i*>(a.zero + meta))))
                                  : _mm256_set1_ps(8.0f);
          nzs[h] = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, s[h]));
        }
        // Both 8-column halves of a row k in turn: each 64-byte output line is written whole
        // (half-lines written in two passes over K cost a second RFO: measured 3x slower).
        for (int64_t k = g * G; k < (g + 1) * G && k < a.K; ++k) {
          const int i = static_cast<int>(k % 8);
          const __m128i shift = _mm_cvtsi32_si128(i < 4 ? 8 * i : 8 * (i - 4) + 4);
          float* out = a.out + k * a.ldo + nb * 16;
          for (int h = 0; h < halves; ++h) {
            const __m256i v = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(a.w + nb * Kp * 8 + (k / 8) * 64 + 32 * h));
            const __m256i q = _mm256_and_si256(_mm256_srl_epi32(v, shift), nibble);
            maskstore8(out + 8 * h, mask[h], _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), s[h], nzs[h]));
          }
        }
      }
    }
  });
}

}  // namespace tersor::dequant
