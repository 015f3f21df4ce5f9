// Portable oracle for the unstructured sparse GEMM (rules in spmm_csr.h), plus the dispatch.
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/cpu_features.h"
#include "quant_act/quant_act.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {

void run_ref(const Args& a) {
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ldx;
      for (int64_t n = 0; n < a.N; ++n) {
        float acc = 0.0f;
        for (int64_t i = a.rowptr[n]; i < a.rowptr[n + 1]; ++i)
          acc = std::fma(x[a.col[i]], a.val[i], acc);
        a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

void w8a8_ref(const W8A8Args& a) {
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<uint8_t> q((a.K + 3) / 4 * 4);
      const float sx = quant_act::quantize_row_ref(a.x + m * a.ldx, a.K, q.data(), 4, 0,
                                                   quant_act::amax_floor(a.row_amax, m));
      for (int64_t n = 0; n < a.N; ++n) {
        int32_t acc = 0;
        for (int64_t i = a.rowptr[n]; i < a.rowptr[n + 1]; ++i)
          acc += int32_t(static_cast<int8_t>(q[a.col[i]])) * a.val[i];
        const float b = a.bias ? a.bias[n] : 0.0f;
        a.y[m * a.ldy + n] = std::fma(static_cast<float>(acc), sx * a.w_scale[n], b);
      }
    }
  });
}

void transpose_rows(const Args& a, float* xt, int64_t ld) {
  const int64_t kt = (a.K + 15) / 16;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < kt; ++t) {
    const int64_t k0 = 16 * t, k1 = k0 + 16 < a.K ? k0 + 16 : a.K;
    for (int64_t m0 = 0; m0 < ld; m0 += 16)
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t m = m0; m < m0 + 16 && m < ld; ++m)
          xt[k * ld + m] = m < a.M ? a.x[m * a.ldx + k] : 0.0f;
  }
}

void transpose_passes(const Args& a, float* xt, int64_t pass) {
  for (int64_t m0 = 0; m0 < a.M; m0 += pass) {
    Args t = a;
    t.x = a.x + m0 * a.ldx;
    t.M = a.M - m0 < pass ? a.M - m0 : pass;
    transpose_rows(t, xt + (m0 / pass) * a.K * pass, pass);
  }
}

}  // namespace tersor::spmm_csr
