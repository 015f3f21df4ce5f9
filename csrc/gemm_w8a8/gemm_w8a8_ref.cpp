// Portable oracle for the W8A8 GEMM: s8 x s8 products summed in int32, no offset tricks.
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/formats.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w8a8 {

void run_rows_ref(const PackedW8LinearArgs& a, const RowFill& fill) {
  const int64_t Kp = round_up(a.K, 4);
  const int64_t k4n = Kp / 4;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<uint8_t> q(Kp);
      const float sx = fill(m, q.data(), 4, 0);
      for (int64_t n = 0; n < a.N; ++n) {
        const W8Tile* col = reinterpret_cast<const W8Tile*>(a.w) + (n / 16) * k4n;
        int32_t acc = 0;
        for (int64_t k = 0; k < a.K; ++k)
          acc += int32_t(static_cast<int8_t>(q[k])) * int32_t(col[k / 4].q[n % 16][k % 4]);
        const float b = a.bias ? a.bias[n] : 0.0f;
        a.y[m * a.ldy + n] = std::fma(static_cast<float>(acc), sx * a.w_scale[n], b);
      }
    }
  });
}

void run_ref(const PackedW8LinearArgs& a) {
  run_rows_ref(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_ref(quant_act::a8_row(a, m), a.K, dst, gs, xm,
                                          quant_act::amax_floor(a.row_amax, m));
  });
}

}  // namespace tersor::gemm_w8a8
