// Portable oracle for the 2:4 sparse int8 GEMM (rules in spmm_24.h, layout S24I8Tile):
// s8 x s8 products summed in int32, no offset tricks.
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/formats.h"
#include "quant_act/quant_act.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {

void run_w8a8_ref(const W8A8Args& a) {
  const int64_t K8 = k8_blocks(a.K);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<uint8_t> q(K8 * 8, 0);
      const float sx = quant_act::quantize_row_ref(a.x + m * a.ldx, a.K, q.data(), 4, 0,
                                                   quant_act::amax_floor(a.row_amax, m));
      for (int64_t n = 0; n < a.N; ++n) {
        const S24I8Tile* t = reinterpret_cast<const S24I8Tile*>(a.values) + (n / 16) * K8;
        const uint8_t* meta = a.meta + (n / 16) * K8 * 16 + n % 16;
        int32_t acc = 0;
        for (int64_t j = 0; j < K8; ++j) {
          const int mb = meta[j * 16];
          for (int b = 0; b < 4; ++b) {
            const int64_t k = 8 * j + 4 * (b / 2) + ((mb >> (2 * b)) & 3);
            acc += int32_t(static_cast<int8_t>(q[k])) * int32_t(t[j].v[n % 16][b]);
          }
        }
        const float bias = a.bias ? a.bias[n] : 0.0f;
        a.y[m * a.ldy + n] = std::fma(static_cast<float>(acc), sx * a.w_scale[n], bias);
      }
    }
  });
}

}  // namespace tersor::spmm_24
