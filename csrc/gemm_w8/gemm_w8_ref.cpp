// Portable oracle for the W8 weight-only GEMM.
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/formats.h"
#include "common/half.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {

void run_ref(const PackedW8LinearArgs& a) {
  const int64_t k4n = round_up(a.K, 4) / 4;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ldx;
      for (int64_t n = 0; n < a.N; ++n) {
        const W8Tile* col = reinterpret_cast<const W8Tile*>(a.w) + (n / 16) * k4n;
        float acc = 0.0f;
        for (int64_t k = 0; k < a.K; ++k)
          acc = std::fma(x[k], static_cast<float>(col[k / 4].q[n % 16][k % 4]), acc);
        a.y[m * a.ldy + n] = std::fma(acc, a.w_scale[n], a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

void run_bf16_ref(const PackedW8LinearArgs& a) {
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<float> xb(Kp, 0.0f);
      for (int64_t k = 0; k < a.K; ++k) xb[k] = bf16_to_float(bf16_from(a.x[m * a.ldx + k]));
      for (int64_t n = 0; n < a.N; ++n) {
        const W8Tile* col = reinterpret_cast<const W8Tile*>(a.w) + (n / 16) * k4n;
        auto w = [&](int64_t k) { return static_cast<float>(col[k / 4].q[n % 16][k % 4]); };
        float acc = 0.0f;
        for (int64_t k = 0; k < Kp; k += 2) {
          acc += xb[k + 1] * w(k + 1);  // products exact; each add rounded
          acc += xb[k] * w(k);
        }
        a.y[m * a.ldy + n] = std::fma(acc, a.w_scale[n], a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

}  // namespace tersor::gemm_w8
