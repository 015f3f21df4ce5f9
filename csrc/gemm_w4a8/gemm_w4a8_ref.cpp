// Portable oracle for the W4A8 GEMM (rules in gemm_w4a8.h).
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/formats.h"
#include "common/half.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w4a8 {

void run_ref(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, Kp = a.ngroups * G, k8n = Kp / 8;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<uint8_t> qb(Kp);
      std::vector<int32_t> S(a.ngroups);
      const float sx = quant_act::a8_grouped_row(a, m, quant_act::quantize_row_ref,
                                                 quant_act::quantize_row_lo_ref, qb.data(), 1,
                                                 S.data());
      const int8_t* q = reinterpret_cast<const int8_t*>(qb.data());
      for (int64_t n = 0; n < a.N; ++n) {
        const W4Tile* col = reinterpret_cast<const W4Tile*>(a.w) + (n / 16) * k8n;
        const int64_t meta = (n / 16) * a.ngroups * 16 + n % 16;  // + g * 16
        float acc = 0.0f;
        for (int64_t g = 0; g < a.ngroups; ++g) {
          int32_t dot = 0;
          for (int64_t k = g * G; k < (g + 1) * G; ++k) {
            const uint8_t byte = col[k / 8].q[n % 16][k % 4];
            const int32_t code = (k % 8) < 4 ? (byte & 0x0f) : (byte >> 4);
            dot += code * int32_t(q[k]);
          }
          const int32_t z = a.zero ? a.zero[meta + g * 16] : 8;
          acc = std::fma(static_cast<float>(dot - z * S[g]), half_to_float(a.scale[meta + g * 16]),
                         acc);
        }
        a.y[m * a.ldy + n] = std::fma(acc, sx, a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

}  // namespace tersor::gemm_w4a8
