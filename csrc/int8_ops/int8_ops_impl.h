// The bodies of int8_ops.h, compiled twice: by int8_ops_ref.cpp with the portable flags and by
// int8_ops_avx2.cpp with AVX2 (where the compiler vectorizes the channel loops 32 codes wide).
// Include only from those two files; everything here has internal linkage.
#pragma once
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
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < a.B * a.Ho; ++r) body(r / a.Ho, r % a.Ho, a.y + r * a.Wo * a.C);
  });
}

inline int8_t requant(float v, float inv, float lo, float hi) {
  float t = v * inv;
  if (std::isnan(t)) t = 0.0f;
  return static_cast<int8_t>(std::nearbyint(std::fmin(std::fmax(t, lo), hi)));
}

// The loops read sizes from locals and write through __restrict pointers: an int8_t store may
// alias anything (a char type), and without them the compiler reloads a.C after every store
// and vectorizes nothing (measured 13 ms -> under 1 ms for ResNet's max pool).
void max_pool_impl(const PoolArgs& a) {
  for_each_output_row(a, [&](int64_t b, int64_t oh, int8_t* y_row) {
    const int64_t C = a.C, W = a.W, h0 = a.h0[oh], h1 = a.h1[oh];
    const int8_t* img = a.x + b * a.H * W * C;
    for (int64_t ow = 0; ow < a.Wo; ++ow) {
      int8_t* __restrict y = y_row + ow * C;
      const int64_t w0 = a.w0[ow], w1 = a.w1[ow];
      for (int64_t c = 0; c < C; ++c) y[c] = -128;
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          const int8_t* __restrict x = img + (h * W + w) * C;
          for (int64_t c = 0; c < C; ++c) y[c] = std::max(y[c], x[c]);
        }
    }
  });
}

void avg_pool_impl(const PoolArgs& a) {
  for_each_output_row(a, [&](int64_t b, int64_t oh, int8_t* y_row) {
    const int64_t C = a.C, W = a.W, h0 = a.h0[oh], h1 = a.h1[oh];
    const int8_t* img = a.x + b * a.H * W * C;
    std::vector<int32_t> sum_buf(C);
    int32_t* __restrict sum = sum_buf.data();
    for (int64_t ow = 0; ow < a.Wo; ++ow) {
      int8_t* __restrict y = y_row + ow * C;
      const int64_t w0 = a.w0[ow], w1 = a.w1[ow];
      for (int64_t c = 0; c < C; ++c) sum[c] = 0;
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          const int8_t* __restrict x = img + (h * W + w) * C;
          for (int64_t c = 0; c < C; ++c) sum[c] += x[c];
        }
      // the quotient in double, rounded half to even: the same on every machine
      const double div = double(a.div_h[oh] * a.div_w[ow]);
      for (int64_t c = 0; c < C; ++c)
        y[c] = static_cast<int8_t>(std::nearbyint(double(sum[c]) / div));
    }
  });
}

void add_impl(const int8_t* __restrict a, float sa, const int8_t* __restrict b, float sb,
              int64_t n, float inv_scale, float lo, float hi, int8_t* __restrict y,
              int nthreads) {
  const int nt = threads_for_work(double(n) * 4, nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float va = static_cast<float>(a[i]) * sa;
      y[i] = requant(b ? std::fma(static_cast<float>(b[i]), sb, va) : va, inv_scale, lo, hi);
    }
  });
}

}  // namespace
}  // namespace tersor::int8_ops
