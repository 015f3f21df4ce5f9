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
  const int64_t G = a.H / a.Hkv, D = a.D, C = D / 8, T = a.T;
  const int64_t Lall = a.pos + T, Lmax = (Lall + 7) / 8 * 8;  // cache rows after this call
  const size_t es = elem_size(a.dtype);
  const bool f32 = a.dtype == half_io::F32;
  const bool rot = a.cos != nullptr;
  const int64_t items = a.B * a.Hkv;
  const int nt = static_cast<int>(std::min<int64_t>(items, team(a.nthreads)));
  const half_io::Converters cv = half_io::converters();
  parallel_team(nt, [&] {
    // roped queries, scores / weights, outputs, staging rows, and (halves) the head's cache
    // in fp32
    std::vector<float> buf(size_t(2 * G * D + G * Lmax + 4 * D + (f32 ? 0 : 2 * Lall * D)));
    float* qr = buf.data();
    float* sc = qr + G * D;
    float* acc = sc + G * Lmax;
    float* cs = acc + G * D;  // cos, sin
    float* sn = cs + D;
    float* x = sn + D;  // a widened row
    float* y = x + D;   // a roped row
    float* kf = y + D;  // [Lall][D] (halves)
    float* vf = kf + Lall * D;
    // a row in fp32: in place for fp32 tensors (a prefill reads ~14k rows per call: copying
    // them was a third of its time), else widened into tmp
    auto f32_row = [&](const void* src, float* tmp) -> const float* {
      if (f32) return static_cast<const float*>(src);
      cv.widen(src, D, tmp, a.dtype);
      return tmp;
    };
    const float *c_row = nullptr, *s_row = nullptr;  // the angles of the current new row
    auto rope_row = [&](int64_t b, int64_t t) {
      c_row = f32_row(at(a.cos, b * a.ldcs + t * a.ldcs_t, es), cs);
      s_row = f32_row(at(a.sin, b * a.ldcs + t * a.ldcs_t, es), sn);
    };
    int64_t i0, i1;
    thread_range(items, &i0, &i1);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / a.Hkv, j = it % a.Hkv;
      const int64_t p_lo = a.start ? a.start[b] : 0;  // rows before it are padding
      const int64_t crow = (b * a.Hkv + j) * a.cap;  // this head's cache row 0
      // the new keys (roped) and values into cache rows pos .. pos + T - 1
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t, cr = crow + a.pos + t;
        const float* kr = f32_row(at(a.k, r * a.ldk + j * D, es), x);
        void* kdst = at(a.kcache, cr * D, es);
        if (rot) {
          rope_row(b, t);
          rope(kr, c_row, s_row, D, f32 ? static_cast<float*>(kdst) : y);
          if (!f32) cv.narrow(y, D, kdst, a.dtype);
        } else {
          cv.narrow(kr, D, kdst, a.dtype);
        }
        std::memcpy(at(a.vcache, cr * D, es), at(a.v, r * a.ldv + j * D, es), size_t(D) * es);
      }
      if (f32) {
        kf = static_cast<float*>(at(a.kcache, crow * D, es));
        vf = static_cast<float*>(at(a.vcache, crow * D, es));
      } else {  // widened once here, read G T times below
        cv.widen(at(a.kcache, crow * D, es), Lall * D, kf, a.dtype);
        cv.widen(at(a.vcache, crow * D, es), Lall * D, vf, a.dtype);
      }
      // new row t (position pos + t) sees cache rows p_lo .. pos + t
      for (int64_t t = 0; t < T; ++t) {
        const int64_t L = a.pos + t + 1, Lp = (L + 7) / 8 * 8, r = b * T + t;
        // the group's queries, roped, in fp32. HF ropes in the model's dtype; a half model's
        // keys are rounded to it once (the cache), its queries never.
        if (rot) rope_row(b, t);
        for (int64_t g = 0; g < G; ++g) {
          const void* src = at(a.q, r * a.ldq + (j * G + g) * D, es);
          if (rot)
            rope(f32_row(src, x), c_row, s_row, D, qr + g * D);
          else
            cv.widen(src, D, qr + g * D, a.dtype);
        }
        // scores, 8 positions at a time (8 independent accumulators, one 8-way reduction);
        // the block's 8 key rows (2 KiB at D = 64) are read from L2 once and from L1 by the G
        // queries: the head's keys do not fit L1, and re-reading them per query was what
        // bound this loop (L2 bandwidth)
        const vec scale = P::set1(a.scaling);
        int64_t p = 0;
        for (; p + 8 <= L; p += 8) {
          for (int64_t g = 0; g < G; ++g) {
            const float* qg = qr + g * D;
            vec acc8[8];
TERSOR_UNROLL
            for (int i = 0; i < 8; ++i) acc8[i] = P::zero();
            for (int64_t c = 0; c < C; ++c) {
              const vec qv = P::load(qg + 8 * c);
TERSOR_UNROLL
              for (int i = 0; i < 8; ++i)
                acc8[i] = P::fma(qv, P::load(kf + (p + i) * D + 8 * c), acc8[i]);
            }
            P::store(sc + g * Lp + p, P::mul(P::hsum8(acc8), scale));
          }
        }
        for (; p < L; ++p) {
          for (int64_t g = 0; g < G; ++g) {
            vec s1 = P::zero();
            for (int64_t c = 0; c < C; ++c)
              s1 = P::fma(P::load(qr + g * D + 8 * c), P::load(kf + p * D + 8 * c), s1);
            sc[g * Lp + p] = P::hsum(s1) * a.scaling;
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
          void* dst = at(a.out, r * a.ldo + (j * G + g) * D, es);
          float* y8 = f32 ? static_cast<float*>(dst) : o;  // fp32: straight into out
          const vec inv = P::set1(inv_sum[g]);
          for (int64_t c = 0; c < C; ++c) P::store(y8 + 8 * c, P::mul(P::load(o + 8 * c), inv));
          if (!f32) cv.narrow(o, D, dst, a.dtype);
        }
      }
    }
  });
}

}  // namespace
}  // namespace tersor::attention
