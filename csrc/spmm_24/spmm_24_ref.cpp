// Portable oracle for the 2:4 sparse GEMM (rules in spmm_24.h).
#include <cmath>

#include "common/parallel.h"
#include "common/formats.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {

void run_ref(const Args& a) {
  const int64_t G = groups(a.K), G4 = meta_groups(a.K);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ldx;
      auto xk = [&](int64_t k) { return k < a.K ? x[k] : 0.0f; };
      for (int64_t n = 0; n < a.N; ++n) {
        const S24Group* grp = reinterpret_cast<const S24Group*>(a.values) + (n / 16) * G;
        const uint8_t* meta = a.meta + (n / 16) * G4 * 16 + n % 16;
        float acc = 0.0f;
        for (int64_t g = 0; g < G; ++g) {
          const int p = meta[g * 16];
          acc = std::fma(xk(4 * g + (p & 3)), grp[g].v[0][n % 16], acc);
          acc = std::fma(xk(4 * g + (p >> 2)), grp[g].v[1][n % 16], acc);
        }
        a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

}  // namespace tersor::spmm_24
