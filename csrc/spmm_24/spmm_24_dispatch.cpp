#include <cstring>

#include "common/parallel.h"
#include "common/cpu_features.h"
#include "common/formats.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {

void run(const Args& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512));
}

void run_w8a8(const W8A8Args& a) {
  if (a.M == 0 || a.N == 0) return;
  dispatch_isa(a, run_w8a8_ref, TERSOR_X86_FN(run_w8a8_avx2), TERSOR_X86_FN(run_w8a8_avx512));
}

void decompress(const float* values, const uint8_t* meta, int64_t N, int64_t K, float* out,
                int nthreads) {
  const int64_t G = groups(K), G4 = meta_groups(K);
#pragma omp parallel for schedule(static) num_threads(::tersor::team(nthreads < 1 ? 1 : nthreads))
  for (int64_t n = 0; n < N; ++n) {
    const S24Group* grp = reinterpret_cast<const S24Group*>(values) + (n / 16) * G;
    const uint8_t* pos = meta + (n / 16) * G4 * 16 + n % 16;
    float* row = out + n * K;
    std::memset(row, 0, K * sizeof(float));
    for (int64_t g = 0; g < G; ++g) {  // padding groups past K hold zeros: never stored
      const int64_t k0 = 4 * g + (pos[g * 16] & 3), k1 = 4 * g + (pos[g * 16] >> 2);
      if (k0 < K) row[k0] = grp[g].v[0][n % 16];
      if (k1 < K) row[k1] = grp[g].v[1][n % 16];
    }
  }
}

}  // namespace tersor::spmm_24
