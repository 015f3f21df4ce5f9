// Portable requantization epilogue (requant.h) and its dispatch.
#include <cmath>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "conv/requant.h"

namespace tersor::conv {

void requant_rows_ref(const Requant& r, const float* y, int64_t ldy, int64_t m0, int64_t m1,
                      int64_t N) {
  for (int64_t m = m0; m < m1; ++m, y += ldy) {
    int8_t* q = r.q + m * r.ldq;
    const int8_t* res = r.res ? r.res + m * r.ldres : nullptr;
    for (int64_t n = 0; n < N; ++n) {
      const float v = res ? std::fma(static_cast<float>(res[n]), r.res_scale, y[n]) : y[n];
      float t = v * r.inv_scale;
      if (std::isnan(t)) t = 0.0f;
      q[n] = static_cast<int8_t>(std::nearbyint(std::fmin(std::fmax(t, r.lo), r.hi)));
    }
  }
}

void requant_all(const Requant& r, const float* y, int64_t M, int64_t N, int nthreads) {
  const bool avx2 = TERSOR_X86_FN(requant_rows_avx2) != nullptr && active_isa() >= Isa::Avx2;
  const int nt = threads_for_work(double(M) * N * 4, nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    int64_t m0, m1;
    thread_range(M, &m0, &m1);
    if (m0 < m1) {
#if defined(TERSOR_X86)
      if (avx2) requant_rows_avx2(r, y + m0 * N, N, m0, m1, N);
      else
#endif
        requant_rows_ref(r, y + m0 * N, N, m0, m1, N);
    }
  }
}

}  // namespace tersor::conv
