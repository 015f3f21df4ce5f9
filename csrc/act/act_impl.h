// silu_mul of act.h, written once over an 8-lane fp32 vector policy P (common/lanes.h) and
// compiled twice: act_ref.cpp (Lanes8, the oracle) and act_avx2.cpp (Avx2Lanes8).
#pragma once
#include <cmath>
#include <cstring>

#include "act/act.h"
#include "common/lanes.h"
#include "common/parallel.h"
#include "half_io/half_io.h"

namespace tersor::act {
namespace {

template <class P>
inline typename P::vec silu_mul8(typename P::vec g, typename P::vec u) {
  const auto one = P::set1(1.0f);
  const auto e = exp_nonpositive<P>(P::sub(P::zero(), P::abs(g)));
  const auto sig = P::div(P::select_neg(g, e, one), P::add(one, e));
  return P::mul(P::mul(g, sig), u);
}

template <class P>
void silu_mul_lanes(const float* g, const float* u, float* y, int64_t n) {  // n % 8 == 0
  for (int64_t i = 0; i < n; i += 8) P::store(y + i, silu_mul8<P>(P::load(g + i), P::load(u + i)));
}

template <class P>
void silu_mul_impl(const SwigluArgs& a) {
  const int64_t N = a.N;
  const int dt = a.dtype;
  const int64_t es = dt == half_io::F32 ? 4 : 2;
  const int nt = a.M * N >= (int64_t(1) << 16) ? team(a.nthreads) : 1;
  // Half rows go through fp32 chunks of kChunk in L1, padded with zeros to whole 8-lane steps
  // (converting in the loop itself, 8 lanes at a time, ran 1.1x slower: the conversions
  // lengthen the exp / divide chain that consecutive steps overlap); fp32 rows are read in
  // place, their last partial step through the same padded chunk.
  constexpr int64_t kChunk = 512;
  const half_io::Converters cv = half_io::converters();
  parallel_team(nt, [&] {
    alignas(32) float gf[kChunk], uf[kChunk], yf[kChunk];
    int64_t m0, m1;
    thread_range(a.M, &m0, &m1);
    for (int64_t m = m0; m < m1; ++m) {
      const char* g = static_cast<const char*>(a.g) + m * a.ldg * es;
      const char* u = static_cast<const char*>(a.u) + m * a.ldu * es;
      char* y = static_cast<char*>(a.y) + m * a.ldy * es;
      int64_t i = 0;
      if (dt == half_io::F32) {
        i = N / 8 * 8;
        silu_mul_lanes<P>(reinterpret_cast<const float*>(g), reinterpret_cast<const float*>(u),
                          reinterpret_cast<float*>(y), i);
      }
      for (; i < N; i += kChunk) {
        const int64_t n = N - i < kChunk ? N - i : kChunk, n8 = (n + 7) / 8 * 8;
        for (int64_t j = n; j < n8; ++j) gf[j] = uf[j] = 0.0f;
        cv.widen(g + i * es, n, gf, dt);
        cv.widen(u + i * es, n, uf, dt);
        silu_mul_lanes<P>(gf, uf, yf, n8);
        cv.narrow(yf, n, y + i * es, dt);
      }
    }
  });
}

}  // namespace
}  // namespace tersor::act
