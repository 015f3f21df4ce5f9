// AVX-512 int8 -> fp32 dequantize. A 16-byte quarter of a W8Tile is 4 columns x 4 k: widen it
// to one zmm, scale by [s_c x4, s_c+1 x4, ...], and store each 128-bit lane into its row.
#include <immintrin.h>

#include "common/parallel.h"
#include "common/formats.h"
#include "common/simd.h"
#include "dequant/dequant.h"

namespace tersor::dequant {

void w8_avx512(const W8Args& a) {
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const __m512i rep4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int8_t* wb = a.w + blk * Kp * 16;
      for (int c = 0; c < 4; ++c) {
        const int64_t n0 = blk * 16 + 4 * c;
        if (n0 >= a.N) break;
        const __m512 s =
            _mm512_permutexvar_ps(rep4, _mm512_castps128_ps512(_mm_loadu_ps(a.w_scale + n0)));
        for (int64_t k4 = 0; k4 < k4n; ++k4) {
          const __m128i q =
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + k4 * 64 + 16 * c));
          const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), s);
          const int64_t kleft = a.K - 4 * k4;
          const __mmask8 km = static_cast<__mmask8>(kleft >= 4 ? 0xf : (1u << kleft) - 1);
          float* out = a.out + n0 * a.K + 4 * k4;
          for (int i = 0; i < 4 && n0 + i < a.N; ++i) {
            __m128 lanev;
            switch (i) {
              case 0: lanev = _mm512_extractf32x4_ps(f, 0); break;
              case 1: lanev = _mm512_extractf32x4_ps(f, 1); break;
              case 2: lanev = _mm512_extractf32x4_ps(f, 2); break;
              default: lanev = _mm512_extractf32x4_ps(f, 3); break;
            }
            _mm_mask_storeu_ps(out + i * a.K, km, lanev);
          }
        }
      }
    }
  });
}

void w4t_avx512(const W4TArgs& a) {
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const __m512i nibble = _mm512_set1_epi32(0x0f);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
      const int64_t left = a.N - nb * 16;
      const __mmask16 mask = tail_mask16(left);
      for (int64_t g = 0; g < a.ngroups; ++g) {
        const int64_t meta = (nb * a.ngroups + g) * 16;
        const __m512 s =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
        const __m512 z = a.zero ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                      reinterpret_cast<const __m128i*>(a.zero + meta))))
                                : _mm512_set1_ps(8.0f);
        const __m512 nzs = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, s));
        for (int64_t k = g * G; k < (g + 1) * G && k < a.K; ++k) {
          const __m512i v = _mm512_loadu_si512(a.w + nb * Kp * 8 + (k / 8) * 64);
          const int i = static_cast<int>(k % 8);
          const __m512i q = _mm512_and_si512(
              _mm512_srl_epi32(v, _mm_cvtsi32_si128(i < 4 ? 8 * i : 8 * (i - 4) + 4)), nibble);
          _mm512_mask_storeu_ps(a.out + k * a.ldo + nb * 16, mask,
                                _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), s, nzs));
        }
      }
    }
  });
}

}  // namespace tersor::dequant
