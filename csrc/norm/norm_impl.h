// The RMSNorm of norm.h, written once over an 8-lane fp32 vector policy P (common/lanes.h)
// and compiled twice: norm_ref.cpp (Lanes8, the oracle) and norm_avx2.cpp (Avx2Lanes8).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "half_io/half_io.h"
#include "norm/norm.h"

namespace tersor::norm {
namespace {

template <class P>
void rms_norm_impl(const RmsArgs& a) {
  using vec = typename P::vec;
  const int64_t N = a.N, C = N / 8;
  const bool f32 = a.dtype == half_io::F32;
  const size_t es = f32 ? 4 : 2;
  // a row is ~N / 8 fmas: below a few rows of 2048 the thread team costs more than it saves
  const int nt = a.M * N >= (int64_t(1) << 14) ? team(a.nthreads) : 1;
  const half_io::Converters cv = half_io::converters();
  parallel_team(nt, [&] {
    std::vector<float> buf(f32 ? 0 : size_t(2 * N));  // w and a row (halves)
    float* wf = buf.data();
    float* xf = wf + N;
    if (f32)
      wf = static_cast<float*>(const_cast<void*>(a.w));
    else
      cv.widen(a.w, N, wf, a.dtype);
    int64_t m0, m1;
    thread_range(a.M, &m0, &m1);
    for (int64_t m = m0; m < m1; ++m) {
      const void* xrow = static_cast<const char*>(a.x) + m * a.ldx * int64_t(es);
      void* yrow = static_cast<char*>(a.y) + m * a.ldy * int64_t(es);
      const float* x = f32 ? static_cast<const float*>(xrow) : xf;
      if (!f32) cv.widen(xrow, N, xf, a.dtype);
      vec s = P::zero();
      for (int64_t c = 0; c < C; ++c) {
        const vec v = P::load(x + 8 * c);
        s = P::fma(v, v, s);
      }
      float sum = P::hsum(s);
      for (int64_t i = 8 * C; i < N; ++i) sum = std::fma(x[i], x[i], sum);
      const float r = 1.0f / std::sqrt(sum / float(N) + a.eps);
      if (f32) {  // y = w * (x * r)
        float* y = static_cast<float*>(yrow);
        const vec rv = P::set1(r);
        for (int64_t c = 0; c < C; ++c)
          P::store(y + 8 * c, P::mul(P::load(wf + 8 * c), P::mul(P::load(x + 8 * c), rv)));
        for (int64_t i = 8 * C; i < N; ++i) y[i] = wf[i] * (x[i] * r);
      } else {  // t = half(x * r), y = half(w * t): HF's two ops in the model's dtype
        const vec rv = P::set1(r);
        uint16_t t[8];
        auto lanes = [&](const float* xc, const float* wc) {  // 8 outputs, in registers
          P::store_half(t, P::mul(P::load(xc), rv), a.dtype);
          return P::mul(P::load(wc), P::load_half(t, a.dtype));
        };
        for (int64_t c = 0; c < C; ++c)
          P::store_half(static_cast<uint16_t*>(yrow) + 8 * c, lanes(x + 8 * c, wf + 8 * c),
                        a.dtype);
        if (8 * C < N) {  // the tail through the same lanes (padded with zeros)
          float xt[8] = {}, wt[8] = {}, yt[8];
          std::copy(x + 8 * C, x + N, xt);
          std::copy(wf + 8 * C, wf + N, wt);
          P::store(yt, lanes(xt, wt));
          cv.narrow(yt, N - 8 * C, static_cast<uint16_t*>(yrow) + 8 * C, a.dtype);
        }
      }
    }
  });
}

}  // namespace
}  // namespace tersor::norm
