// 8-lane fp32 vector policies for kernels written once and compiled portable and with AVX2
// (attention/, norm/): Lanes8 is a plain array (the oracle), Avx2Lanes8 one __m256 (only in
// TUs built with -mavx2). Each member is one IEEE operation per lane, or a fixed tree:
//
//   hsum:  ((v0+v1) + (v2+v3)) + ((v4+v5) + (v6+v7))     (what two vhaddps give)
//   hsum8: 8 vectors -> the vector of their 8 hsums (the same tree)
//   hmax:  v0..v7 -> (max(v0,v4) .. max(v3,v7)) -> (max(a0,a2), max(a1,a3)) -> max(b0,b1)
//   max(a, b) = a > b ? a : b (maxps: b when unordered, so a NaN in b propagates)
//   round: nearest even;  pow2n: 2^n for integral n in [-126, 127]
//   abs: the sign bit cleared;  select_neg(x, a, b): a where x's sign bit is set, else b
//   load_half / store_half: 8 lanes of bf16 / fp16 at p -> fp32 (exact) and back (nearest
//   even, NaN -> 0x7fc0 for bf16), as half_io's rows (whole rows: half_io::converters())
//
// so the two builds of such a kernel return the same bits. Internal linkage on purpose (see
// common/parallel.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "half_io/half_io.h"

namespace tersor {
namespace {

struct Lanes8 {
  struct vec {
    float v[8];
  };
  template <typename F>
  static vec map(F f) {
    vec r;
    for (int i = 0; i < 8; ++i) r.v[i] = f(i);
    return r;
  }
  static vec zero() { return set1(0.0f); }
  static vec set1(float x) { return map([&](int) { return x; }); }
  static vec load(const float* p) { return map([&](int i) { return p[i]; }); }
  static void store(float* p, vec a) { std::memcpy(p, a.v, sizeof a.v); }
  static vec fma(vec a, vec b, vec c) {
    return map([&](int i) { return std::fma(a.v[i], b.v[i], c.v[i]); });
  }
  static vec mul(vec a, vec b) { return map([&](int i) { return a.v[i] * b.v[i]; }); }
  static vec add(vec a, vec b) { return map([&](int i) { return a.v[i] + b.v[i]; }); }
  static vec sub(vec a, vec b) { return map([&](int i) { return a.v[i] - b.v[i]; }); }
  static vec div(vec a, vec b) { return map([&](int i) { return a.v[i] / b.v[i]; }); }
  static vec abs(vec a) { return map([&](int i) { return std::fabs(a.v[i]); }); }
  static vec select_neg(vec x, vec a, vec b) {
    return map([&](int i) { return std::signbit(x.v[i]) ? a.v[i] : b.v[i]; });
  }
  static float max1(float a, float b) { return a > b ? a : b; }  // maxps: b when unordered
  static vec max(vec a, vec b) { return map([&](int i) { return max1(a.v[i], b.v[i]); }); }
  static vec round(vec a) { return map([&](int i) { return std::nearbyint(a.v[i]); }); }
  static vec pow2n(vec n) {
    return map([&](int i) {
      // vcvtps2dq turns NaN into INT32_MIN; the product with a NaN polynomial is NaN anyway
      const uint32_t k = std::isnan(n.v[i]) ? 0x80000000u : uint32_t(int32_t(n.v[i]));
      const uint32_t bits = (k + 127u) << 23;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    });
  }
  static float hsum(vec a) {
    return ((a.v[0] + a.v[1]) + (a.v[2] + a.v[3])) + ((a.v[4] + a.v[5]) + (a.v[6] + a.v[7]));
  }
  static vec hsum8(const vec (&a)[8]) { return map([&](int i) { return hsum(a[i]); }); }
  static float hmax(vec a) {
    const float b0 = max1(max1(a.v[0], a.v[4]), max1(a.v[2], a.v[6]));
    const float b1 = max1(max1(a.v[1], a.v[5]), max1(a.v[3], a.v[7]));
    return max1(b0, b1);
  }
  static vec load_half(const void* p, int dtype) {
    vec r;
    half_io::widen_ref({p, 1, 8, 8, r.v, 8, dtype});
    return r;
  }
  static void store_half(void* p, vec a, int dtype) {
    half_io::narrow_ref({a.v, 1, 8, 8, p, 8, dtype});
  }
};


#if defined(__AVX2__)
struct Avx2Lanes8 {
  using vec = __m256;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float x) { return _mm256_set1_ps(x); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec a) { _mm256_storeu_ps(p, a); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  static vec abs(vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static vec select_neg(vec x, vec a, vec b) { return _mm256_blendv_ps(b, a, x); }
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
  static vec load_half(const void* p, int dtype) {
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return dtype == half_io::BF16
               ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
               : _mm256_cvtph_ps(h);
  }
  // bf16 nearest even: u + 0x7fff + ((u >> 16) & 1), high half; NaN lanes -> 0x7fc0 (torch's)
  static __m128i to_bf16(vec v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // pack 8 x u32 (< 2^16) to 8 x u16: packus works per 128-bit lane
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  static void store_half(void* p, vec a, int dtype) {
    const __m128i h =
        dtype == half_io::BF16 ? to_bf16(a) : _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(static_cast<__m128i*>(p), h);
  }
};

#endif

// e^x for x <= 0 (softmax arguments, a sigmoid's exp(-|x|)) on either policy, Cephes' expf:
// n = round(x log2 e), r = x - n ln 2 in two parts, e^r by a degree-7 polynomial, times 2^n.
// Below -87 the result is clamped at ~2^-126 (values that small are noise in an fp32 sum).
// Relative error < 2e-7.
template <class P>
inline typename P::vec exp_nonpositive(typename P::vec x) {
  x = P::max(P::set1(-87.0f), x);  // x second: a NaN argument stays NaN
  const auto n = P::round(P::mul(x, P::set1(1.44269504088896341f)));
  auto r = P::fma(n, P::set1(-0.693359375f), x);
  r = P::fma(n, P::set1(2.12194440e-4f), r);
  auto p = P::set1(1.9875691500e-4f);
  p = P::fma(p, r, P::set1(1.3981999507e-3f));
  p = P::fma(p, r, P::set1(8.3334519073e-3f));
  p = P::fma(p, r, P::set1(4.1665795894e-2f));
  p = P::fma(p, r, P::set1(1.6666665459e-1f));
  p = P::fma(p, r, P::set1(5.0000001201e-1f));
  const auto y = P::add(P::fma(p, P::mul(r, r), r), P::set1(1.0f));
  return P::mul(y, P::pow2n(n));
}

}  // namespace
}  // namespace tersor
