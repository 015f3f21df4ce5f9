// Portable build of attention_impl.h (the oracle: 8 fp32 lanes as a plain array), and the
// per-call dispatch.
#include <cmath>
#include <cstring>

#include "attention/attention_impl.h"
#include "common/cpu_features.h"

namespace tersor::attention {
namespace {

struct Lanes {
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
  static void widen(const void* src, int64_t n, float* dst, int dtype) {
    if (dtype == half_io::F32)
      std::memcpy(dst, src, size_t(n) * 4);
    else
      half_io::widen_ref({src, 1, n, n, dst, n, dtype});
  }
};

}  // namespace

void decode_ref(const DecodeArgs& a) { decode_impl<Lanes>(a); }

void decode(const DecodeArgs& a) {
  dispatch_isa(a, decode_ref, TERSOR_X86_FN(decode_avx2), nullptr);
}

}  // namespace tersor::attention
