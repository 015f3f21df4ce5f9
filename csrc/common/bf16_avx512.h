// Helpers of the bf16 kernels. Include only from *_avx512bf16.cpp and *_amx.cpp files (both
// compiled with AVX512-BF16; internal linkage: see common/parallel.h).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/parallel.h"
#include "common/simd.h"

namespace tersor {

// x[0, K) rounded to bf16 (nearest even, vcvtneps2bf16) into dst[0, lda), zero past K; lda a
// multiple of 16.
static inline void round_row_bf16(const float* x, int64_t K, int64_t lda, uint16_t* dst) {
  for (int64_t k = 0; k < lda; k += 16) {
    const __mmask16 mask = k < K ? tail_mask16(K - k) : 0;
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(v));
  }
}

// One pair step of an MR-row x NB-block register tile: the blocks' pair vectors (16 u32
// pairs each, block j at wp + j * block_stride) against each row's bf16 pair at ap (rows lda
// apart), into acc: one vdpbf16ps per (row, block).
template <int MR, int NB>
__attribute__((always_inline)) inline void pair_step(const uint32_t* wp, int64_t block_stride,
                                                     const uint16_t* ap, int64_t lda,
                                                     __m512 (&acc)[MR][NB]) {
  __m512bh w[NB];
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) w[j] = (__m512bh)_mm512_loadu_si512(wp + j * block_stride);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    int32_t pair;
    std::memcpy(&pair, ap + r * lda, 4);
    const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, w[j]);
  }
}

}  // namespace tersor
