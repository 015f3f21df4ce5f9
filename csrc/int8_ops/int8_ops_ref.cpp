// Portable kernels of int8_ops.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "int8_ops/int8_ops.h"

namespace tersor::int8_ops {

namespace {

// Threads over the output rows (b, oh); body(b, oh, y_row).
template <typename Body>
void for_each_output_row(const PoolArgs& a, Body&& body) {
  const double work = double(a.B) * a.H * a.W * a.C;
  const int nt = threads_for_work(work, a.nthreads);
#pragma omp parallel for schedule(static) num_threads(::tersor::team(nt))
  for (int64_t r = 0; r < a.B * a.Ho; ++r) body(r / a.Ho, r % a.Ho, a.y + r * a.Wo * a.C);
}

inline int8_t requant(float v, float inv, float lo, float hi) {
  float t = v * inv;
  if (std::isnan(t)) t = 0.0f;
  return static_cast<int8_t>(std::nearbyint(std::fmin(std::fmax(t, lo), hi)));
}

}  // namespace

void max_pool(const PoolArgs& a) {
  for_each_output_row(a, [&](int64_t b, int64_t oh, int8_t* y) {
    for (int64_t ow = 0; ow < a.Wo; ++ow, y += a.C) {
      std::fill(y, y + a.C, int8_t(-128));
      for (int64_t h = a.h0[oh]; h < a.h1[oh]; ++h)
        for (int64_t w = a.w0[ow]; w < a.w1[ow]; ++w) {
          const int8_t* x = a.x + ((b * a.H + h) * a.W + w) * a.C;
          for (int64_t c = 0; c < a.C; ++c) y[c] = std::max(y[c], x[c]);
        }
    }
  });
}

void avg_pool(const PoolArgs& a) {
  for_each_output_row(a, [&](int64_t b, int64_t oh, int8_t* y) {
    std::vector<int32_t> sum(a.C);
    for (int64_t ow = 0; ow < a.Wo; ++ow, y += a.C) {
      std::fill(sum.begin(), sum.end(), 0);
      for (int64_t h = a.h0[oh]; h < a.h1[oh]; ++h)
        for (int64_t w = a.w0[ow]; w < a.w1[ow]; ++w) {
          const int8_t* x = a.x + ((b * a.H + h) * a.W + w) * a.C;
          for (int64_t c = 0; c < a.C; ++c) sum[c] += x[c];
        }
      // exact: |sum| < 2^31 / 2^8 windows, and a double holds every quotient's rounding input
      const double div = double(a.div_h[oh] * a.div_w[ow]);
      for (int64_t c = 0; c < a.C; ++c)
        y[c] = static_cast<int8_t>(std::nearbyint(double(sum[c]) / div));
    }
  });
}

void add(const int8_t* a, float sa, const int8_t* b, float sb, int64_t n, float inv_scale,
         float lo, float hi, int8_t* y, int nthreads) {
  const int nt = threads_for_work(double(n) * 4, nthreads);
#pragma omp parallel for schedule(static) num_threads(::tersor::team(nt))
  for (int64_t i = 0; i < n; ++i) {
    const float va = static_cast<float>(a[i]) * sa;
    y[i] = requant(b ? std::fma(static_cast<float>(b[i]), sb, va) : va, inv_scale, lo, hi);
  }
}

}  // namespace tersor::int8_ops
