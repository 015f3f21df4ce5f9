// The decode-attention algorithm of attention.h, written once over an 8-lane fp32 vector policy
// P (common/lanes.h) and compiled twice: attention_ref.cpp (Lanes8, the oracle) and
// attention_avx2.cpp (Avx2Lanes8): the same bits.
#pragma once
#include <cstring>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "common/lanes.h"
#include "common/parallel.h"
#include "half_io/half_io.h"

namespace tersor::attention {
namespace {

// x[i] cos[i] + rotate_half(x)[i] sin[i], as HF computes it (a product, a product, a sum: no
// fused multiply-add), scalar: D elements per head.
inline void rope(const float* x, const float* c, const float* s, int64_t D, float* y) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) y[i] = x[i] * c[i] + (-x[i + h]) * s[i];
  for (int64_t i = h; i < D; ++i) y[i] = x[i] * c[i] + x[i - h] * s[i];
}

inline size_t elem_size(int dtype) { return dtype == half_io::F32 ? 4 : 2; }

inline const void* at(const void* base, int64_t i, size_t es) {
  return static_cast<const char*>(base) + i * int64_t(es);
}
inline void* at(void* base, int64_t i, size_t es) {
  return static_cast<char*>(base) + i * int64_t(es);
}

// fp32 row -> dtype row (nearest even; a plain copy for fp32)
inline void narrow_row(const float* src, int64_t n, void* dst, int dtype) {
  if (dtype == half_io::F32)
    std::memcpy(dst, src, size_t(n) * 4);
  else
    half_io::narrow_ref({src, 1, n, n, dst, n, dtype});
}

constexpr int64_t kValueRows = 64;

// o[8 c0 .. 8 (c0 + NC)) += sum_{p0 <= p < p1} w[p] v[p][the same columns], in p order
template <class P, int NC>
inline void weigh_values(const float* w, const float* v, int64_t p0, int64_t p1, int64_t D,
                         int64_t c0, float* o) {
  typename P::vec r[NC];
TERSOR_UNROLL
  for (int i = 0; i < NC; ++i) r[i] = P::load(o + 8 * (c0 + i));
  for (int64_t p = p0; p < p1; ++p) {
    const auto wp = P::set1(w[p]);
TERSOR_UNROLL
    for (int i = 0; i < NC; ++i) r[i] = P::fma(wp, P::load(v + p * D + 8 * (c0 + i)), r[i]);
  }
TERSOR_UNROLL
  for (int i = 0; i < NC; ++i) P::store(o + 8 * (c0 + i), r[i]);
}

template <class P>
void decode_impl(const DecodeArgs& a) {
  using vec = typename P::vec;
  const int64_t G = a.H / a.Hkv, D = a.D, C = D / 8, L = a.pos + 1, Lp = (L + 7) / 8 * 8;
  const size_t es = elem_size(a.dtype);
  const bool f32 = a.dtype == half_io::F32;
  const int64_t items = a.B * a.Hkv;
  const int nt = static_cast<int>(std::min<int64_t>(items, team(a.nthreads)));
#pragma omp parallel num_threads(nt > 1 ? nt : 1)
  {
    // roped queries, scores / weights, outputs, staging rows, and (halves) the head's cache
    // in fp32
    std::vector<float> buf(size_t(2 * G * D + G * Lp + 4 * D + (f32 ? 0 : 2 * L * D)));
    float* qr = buf.data();
    float* sc = qr + G * D;
    float* acc = sc + G * Lp;
    float* cs = acc + G * D;  // cos, sin
    float* sn = cs + D;
    float* x = sn + D;  // a widened row
    float* y = x + D;   // a roped row
    float* kf = y + D;  // [L][D] (halves)
    float* vf = kf + L * D;
    int64_t i0, i1;
    thread_range(items, &i0, &i1);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / a.Hkv, j = it % a.Hkv;
      const int64_t p_lo = a.start ? a.start[b] : 0;  // rows before it are padding
      const bool rot = a.cos != nullptr;
      if (rot) {
        P::widen(at(a.cos, b * a.ldcs, es), D, cs, a.dtype);
        P::widen(at(a.sin, b * a.ldcs, es), D, sn, a.dtype);
      }
      const int64_t crow = (b * a.Hkv + j) * a.cap;  // this head's cache row 0
      // the new key (roped) and value into cache row pos
      P::widen(at(a.k, b * a.ldk + j * D, es), D, x, a.dtype);
      if (rot) rope(x, cs, sn, D, y);
      narrow_row(rot ? y : x, D, at(a.kcache, (crow + a.pos) * D, es), a.dtype);
      std::memcpy(at(a.vcache, (crow + a.pos) * D, es), at(a.v, b * a.ldv + j * D, es),
                  size_t(D) * es);
      if (f32) {
        kf = static_cast<float*>(at(a.kcache, crow * D, es));
        vf = static_cast<float*>(at(a.vcache, crow * D, es));
      } else {  // widened once here, read G times below
        P::widen(at(a.kcache, crow * D, es), L * D, kf, a.dtype);
        P::widen(at(a.vcache, crow * D, es), L * D, vf, a.dtype);
      }
      // the group's queries, roped, in fp32. HF ropes in the model's dtype; a half model's
      // keys are rounded to it once (the cache), its queries never.
      for (int64_t g = 0; g < G; ++g) {
        P::widen(at(a.q, b * a.ldq + (j * G + g) * D, es), D, rot ? x : qr + g * D, a.dtype);
        if (rot) rope(x, cs, sn, D, qr + g * D);
      }
      // scores, 8 positions at a time (8 independent accumulators, one 8-way reduction); the
      // block's 8 key rows (2 KiB at D = 64) are read from L2 once and from L1 by the G
      // queries: the head's keys do not fit L1, and re-reading them per query was what bound
      // this loop (L2 bandwidth)
      const vec scale = P::set1(a.scaling);
      int64_t p = 0;
      for (; p + 8 <= L; p += 8) {
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qr + g * D;
          vec acc[8];
TERSOR_UNROLL
          for (int i = 0; i < 8; ++i) acc[i] = P::zero();
          for (int64_t c = 0; c < C; ++c) {
            const vec qv = P::load(qg + 8 * c);
TERSOR_UNROLL
            for (int i = 0; i < 8; ++i) acc[i] = P::fma(qv, P::load(kf + (p + i) * D + 8 * c), acc[i]);
          }
          P::store(sc + g * Lp + p, P::mul(P::hsum8(acc), scale));
        }
      }
      for (; p < L; ++p) {
        for (int64_t g = 0; g < G; ++g) {
          vec acc = P::zero();
          for (int64_t c = 0; c < C; ++c) acc = P::fma(P::load(qr + g * D + 8 * c), P::load(kf + p * D + 8 * c), acc);
          sc[g * Lp + p] = P::hsum(acc) * a.scaling;
        }
      }
      // softmax weights, unnormalized (the padding lanes and rows exactly 0), and 1 / their
      // sums
      float inv_sum[64];  // G <= 64 (checked by the op)
      for (int64_t g = 0; g < G; ++g) {
        float* s = sc + g * Lp;
        for (int64_t q = L; q < Lp; ++q) s[q] = -std::numeric_limits<float>::infinity();
        for (int64_t q = 0; q < p_lo; ++q) s[q] = -std::numeric_limits<float>::infinity();
        vec m = P::load(s);
        for (int64_t c = 1; c < Lp / 8; ++c) m = P::max(m, P::load(s + 8 * c));
        const vec mx = P::set1(P::hmax(m));
        vec sum = P::zero();
        for (int64_t c = 0; c < Lp / 8; ++c) {
          P::store(s + 8 * c, exp_nonpositive<P>(P::sub(P::load(s + 8 * c), mx)));
          if (c == Lp / 8 - 1)
            for (int64_t q = L; q < Lp; ++q) s[q] = 0.0f;
          for (int64_t q = 8 * c; q < p_lo && q < 8 * c + 8; ++q) s[q] = 0.0f;
          sum = P::add(sum, P::load(s + 8 * c));
        }
        inv_sum[g] = 1.0f / P::hsum(sum);
      }
      // weighted values, over blocks of kValueRows positions (16 KiB of values at D = 64, in
      // L1 for all G queries), 8 chunks of a head's output (64 floats) in registers while a
      // block streams by. Each output element is fma'd in position order, however the
      // positions and chunks are blocked.
      std::fill(acc, acc + G * D, 0.0f);
      for (int64_t p0 = p_lo; p0 < L; p0 += kValueRows) {
        const int64_t p1 = std::min(L, p0 + kValueRows);
        for (int64_t g = 0; g < G; ++g) {
          const float* w = sc + g * Lp;
          float* o = acc + g * D;
          int64_t c0 = 0;
          for (; c0 + 8 <= C; c0 += 8) weigh_values<P, 8>(w, vf, p0, p1, D, c0, o);
          for (; c0 + 4 <= C; c0 += 4) weigh_values<P, 4>(w, vf, p0, p1, D, c0, o);
          for (; c0 < C; ++c0) weigh_values<P, 1>(w, vf, p0, p1, D, c0, o);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* o = acc + g * D;
        const vec inv = P::set1(inv_sum[g]);
        for (int64_t c = 0; c < C; ++c) P::store(o + 8 * c, P::mul(P::load(o + 8 * c), inv));
        narrow_row(o, D, at(a.out, b * a.ldo + (j * G + g) * D, es), a.dtype);
      }
    }
  }
}

}  // namespace
}  // namespace tersor::attention
