// silu_mul of act.h, written once over an 8-lane fp32 vector policy P (common/lanes.h) and
// compiled twice: act_ref.cpp (Lanes8, the oracle) and act_avx2.cpp (Avx2Lanes8).
#pragma once
#include <cmath>
#include <vector>

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
void silu_mul_impl(const SwigluArgs& a) {
  const int64_t N = a.N, N8 = N / 8 * 8;
  const bool f32 = a.dtype == half_io::F32;
  const int64_t es = f32 ? 4 : 2;
  const int nt = a.M * N >= (int64_t(1) << 16) ? team(a.nthreads) : 1;
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> buf(f32 ? 0 : size_t(3 * N + 8));
    float* gf = buf.data();
    float* uf = gf + N;
    float* yf = uf + N;
    int64_t m0, m1;
    thread_range(a.M, &m0, &m1);
    for (int64_t m = m0; m < m1; ++m) {
      const void* grow = static_cast<const char*>(a.g) + m * a.ldg * es;
      const void* urow = static_cast<const char*>(a.u) + m * a.ldu * es;
      void* yrow = static_cast<char*>(a.y) + m * a.ldy * es;
      const float* g = f32 ? static_cast<const float*>(grow) : gf;
      const float* u = f32 ? static_cast<const float*>(urow) : uf;
      float* y = f32 ? static_cast<float*>(yrow) : yf;
      if (!f32) {
        P::widen(grow, N, gf, a.dtype);
        P::widen(urow, N, uf, a.dtype);
      }
      for (int64_t i = 0; i < N8; i += 8)
        P::store(y + i, silu_mul8<P>(P::load(g + i), P::load(u + i)));
      if (N8 < N) {  // the tail through the same lanes (padded with zeros)
        float gt[8] = {}, ut[8] = {}, yt[8];
        for (int64_t i = N8; i < N; ++i) gt[i - N8] = g[i], ut[i - N8] = u[i];
        P::store(yt, silu_mul8<P>(P::load(gt), P::load(ut)));
        for (int64_t i = N8; i < N; ++i) y[i] = yt[i - N8];
      }
      if (!f32) P::narrow(yf, N, yrow, a.dtype);
    }
  }
}

}  // namespace
}  // namespace tersor::act
