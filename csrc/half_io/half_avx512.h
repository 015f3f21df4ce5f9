// 16-lane bf16 / fp16 <-> fp32 conversions for AVX-512 translation units (internal linkage: each
// ISA file compiles its own copy with its own flags, see common/parallel.h), with the bits of
// half_io_ref.cpp: exact widening; nearest-even narrowing, NaN -> 0x7fc0 for bf16 (torch's).
//
// Not vcvtneps2bf16 (AVX512-BF16): it flushes denormal inputs to zero, torch's .to() does not.
#pragma once
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <cstdint>

#include "half_io/half_io.h"

namespace tersor::half_io {

static inline __m512 widen16(__m256i h, int dtype) {
  return dtype == BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                       : _mm512_cvtph_ps(h);
}

static inline __m256i narrow16(__m512 v, int dtype) {
  if (dtype != BF16) return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512i u = _mm512_castps_si512(v);  // u + 0x7fff + ((u >> 16) & 1), the high half
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

// A GEMM epilogue's store (Args: common/linear_args.h): 16 outputs of row m from column n under
// mask, fp32, or rounded to half when the call writes half rows (a.y_io, half_io::run_staged).
template <typename Args>
static inline void store_y16(const Args& a, int64_t m, int64_t n, __mmask16 mask, __m512 v) {
  if (a.y_io == F32)
    _mm512_mask_storeu_ps(a.y + m * a.ldy + n, mask, v);
  else
    _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(a.y) + m * a.ldy + n, mask,
                             narrow16(v, a.y_io));
}

}  // namespace tersor::half_io
#endif
