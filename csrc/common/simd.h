// Small SIMD helpers for the ISA files: the masks and bias loads of a partial column block.
// Internal linkage (static) on purpose: each ISA file compiles its own copy with its own flags,
// so no AVX-512 copy can be merged into the AVX2 path (see common/parallel.h).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "common/parallel.h"  // TERSOR_UNROLL

namespace tersor {

// Called once per 64-byte tile of packed codes while a slab is widened: the tile one slab
// further on (slab_tiles tiles: the next slab's, or past a block's end the next block's start;
// a prefetch never faults) is fetched while this slab's rows multiply, so the next widening
// reads L1 / L2 instead of waiting on memory. Weights from DRAM (rotated copies, Zen 5, 2
// threads, 4096x4096 / 2048x8192): W4 slabs (slab_gemm_avx512.h) fp32 1.13-1.19x faster at 16
// rows, 1.05-1.10x at 32; bf16 1.25-1.41x at 16, 1.13-1.20x at 32, 1.05-1.11x at 128; the AVX2
// slabs (slab_gemm_avx2.h) W4 1.05-1.10x at 16 rows, W8 1.2x at 16, 1.1x at 32.
static inline void prefetch_next_slab(const void* tile, int64_t slab_tiles) {
  _mm_prefetch(static_cast<const char*>(tile) + slab_tiles * 64, _MM_HINT_T0);
}

#if defined(__AVX2__)
// Lanes [0, min(left, 8)) of an 8-float block (left > 0), as a vmaskmov mask.
static inline __m256i tail_mask8(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : static_cast<int>(left)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// A store of 8 floats under a tail_mask8 mask. vmaskmovps stores are microcoded on AMD Zen
// (measured 9 ns against 1.4 ns for vmovups on Zen 3, the whole cost of a small-K GEMM's
// epilogue), so only a partial block takes the masked store.
static inline void maskstore8(float* p, __m256i mask, __m256 v) {
  if (_mm256_movemask_ps(_mm256_castsi256_ps(mask)) == 0xff) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, mask, v);
  }
}
// bias[n .. n+8) under the block's mask, zeros without a bias.
static inline __m256 bias8(const float* bias, int64_t n, __m256i mask) {
  return bias ? _mm256_maskload_ps(bias + n, mask) : _mm256_setzero_ps();
}
// The epilogue of every AVX2 int8 kernel, one register tile of MR rows x 16 columns (acc[r][h]:
// row r, columns n0 + 8h ..): y[r][n] = fma(float(acc), sx[r] * w_scale[n], bias[n]), the
// formula that keeps every ISA path bit-identical to the ref; columns from N on are not stored.
template <int MR>
static inline void store_int8_tile(const __m256i (&acc)[MR][2], const float* sx,
                                   const float* w_scale, const float* bias, int64_t N, float* y,
                                   int64_t ldy, int64_t n0) {
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n = n0 + 8 * h;
    if (n >= N) break;
    const __m256i mask = tail_mask8(N - n);
    const __m256 sw = _mm256_loadu_ps(w_scale + n);
    const __m256 b = bias8(bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 v = _mm256_cvtepi32_ps(acc[r][h]);
      const __m256 s = _mm256_mul_ps(_mm256_set1_ps(sx[r]), sw);
      maskstore8(y + r * ldy + n, mask, _mm256_fmadd_ps(v, s, b));
    }
  }
}
#endif

#if defined(__AVX512F__)
// Lanes [0, min(left, 16)) of a 16-float block (left > 0).
static inline __mmask16 tail_mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}
static inline __m512 bias16(const float* bias, int64_t n, __mmask16 mask) {
  return bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
}
#endif

}  // namespace tersor
