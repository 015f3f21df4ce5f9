// AVX2 unstructured sparse GEMM: the transposed-activation kernel of spmm_csr_avx512.cpp (8
// lanes, 32 rows per pass) for every M; AVX2 gathers are too slow to pay at few rows.
#include <immintrin.h>

#include <algorithm>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {

void run_avx2(const Args& a) {
  constexpr int kMV = 4;
  const int64_t M8 = round_up(a.M, 8);
  // Row stride one cache line past a multiple of 16 floats: with a power-of-two stride the
  // k rows of xT fall into a few L2 sets and a 1 MiB tile thrashes (measured 10x slower).
  const int64_t ldt = M8 + 16;
  auto xt = alloc_scratch<float>(a.K * ldt);
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    transpose_rows(a, xt.get(), ldt);
    int64_t n0, n1;
    balanced_range(a.rowptr, a.N, &n0, &n1);
    alignas(32) float tmp[8 * kMV];
    for (int64_t m0 = 0; m0 < M8; m0 += 8 * kMV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (M8 - m0) / 8));
      const int rows = static_cast<int>(std::min<int64_t>(8 * kMV, a.M - m0));
      const float* xb = xt.get() + m0;
      for (int64_t n = n0; n < n1; ++n) {
        __m256 acc[kMV];
TERSOR_UNROLL
        for (int v = 0; v < kMV; ++v) acc[v] = _mm256_setzero_ps();
        for (int64_t i = a.rowptr[n]; i < a.rowptr[n + 1]; ++i) {
          const __m256 w = _mm256_set1_ps(a.val[i]);
          const float* xr = xb + int64_t(a.col[i]) * ldt;
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v)
            if (v < nv) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8 * v), w, acc[v]);
        }
TERSOR_UNROLL
        for (int v = 0; v < kMV; ++v) _mm256_store_ps(tmp + 8 * v, acc[v]);
        const float b = a.bias ? a.bias[n] : 0.0f;
        for (int r = 0; r < rows; ++r) a.y[(m0 + r) * a.ldy + n] = tmp[r] + b;
      }
    }
  }
}

}  // namespace tersor::spmm_csr
