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

FoldedScales fold_output_scale(const float* w_scale, const float* bias, int64_t N, int64_t Np,
                               float xs_scale, const Requant& out) {
  FoldedScales f{alloc_scratch<float>(Np), alloc_scratch<float>(Np), out};
  bool finite = true;
  for (int64_t n = 0; n < Np; ++n) {
    f.m.get()[n] = n < N ? (xs_scale * w_scale[n]) * out.inv_scale : 0.0f;
    f.c.get()[n] = n < N && bias ? bias[n] * out.inv_scale : 0.0f;
    finite = finite && std::isfinite(f.m.get()[n]) && std::isfinite(f.c.get()[n]);
  }
  f.out.res_scale = out.res_scale * out.inv_scale;
  f.out.inv_scale = 1.0f;
  f.out.folded_finite = finite && std::isfinite(f.out.res_scale);
  return f;
}

void requant_all(const Requant& r, const float* y, int64_t M, int64_t N, int nthreads) {
  const bool avx2 = TERSOR_X86_FN(requant_rows_avx2) != nullptr && active_isa() >= Isa::Avx2;
  const int nt = threads_for_work(double(M) * N * 4, nthreads);
  parallel_team(::tersor::team(nt), [&] {
    int64_t m0, m1;
    thread_range(M, &m0, &m1);
    if (m0 < m1) {
#if defined(TERSOR_X86)
      if (avx2) requant_rows_avx2(r, y + m0 * N, N, m0, m1, N);
      else
#endif
        requant_rows_ref(r, y + m0 * N, N, m0, m1, N);
    }
  });
}

}  // namespace tersor::conv
