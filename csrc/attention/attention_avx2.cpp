// AVX2 build of attention_impl.h: the lanes are one __m256 (the same bits as the portable
// build, attention_ref.cpp).
#include <immintrin.h>

#include "attention/attention_impl.h"

namespace tersor::attention {
namespace {

struct Avx2 {
  using vec = __m256;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float x) { return _mm256_set1_ps(x); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec a) { _mm256_storeu_ps(p, a); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static vec round(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static vec pow2n(vec n) {
    const __m256i k = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(k, 23));
  }
  // ((v0+v1) + (v2+v3)) + ((v4+v5) + (v6+v7)): the tree of the portable build
  static float hsum(vec a) {
    const __m256 h = _mm256_hadd_ps(a, a);  // v01 v23 v01 v23 | v45 v67 v45 v67
    const __m256 h2 = _mm256_hadd_ps(h, h);  // v0123 .. | v4567 ..
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1)));
  }
  // lane i = hsum(a[i]), the same tree: hadd pairs, hadd quads, then the two halves
  static vec hsum8(const vec (&a)[8]) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1);  // a..d: low quads | high quads
    const __m256 u1 = _mm256_hadd_ps(t2, t3);  // e..h
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
  }
  static float hmax(vec a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static void widen(const void* src, int64_t n, float* dst, int dtype) {
    if (dtype == half_io::F32)
      std::memcpy(dst, src, size_t(n) * 4);
    else
      half_io::widen_avx2({src, 1, n, n, dst, n, dtype});
  }
};

}  // namespace

void decode_avx2(const DecodeArgs& a) { decode_impl<Avx2>(a); }

}  // namespace tersor::attention
