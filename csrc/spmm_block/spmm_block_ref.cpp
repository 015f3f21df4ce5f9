// Portable oracles for the block-sparse GEMMs (rules in spmm_block.h).
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "common/formats.h"
#include "quant_act/quant_act.h"
#include "spmm_block/spmm_block.h"

namespace tersor::spmm_block {

void f32_ref(const Args& a) {
  const float* vals = static_cast<const float*>(a.values);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ldx;
      for (int64_t n = 0; n < a.N; ++n) {
        const int64_t p = n / 16;
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t i = a.ptr[p]; i < a.ptr[p + 1]; ++i) {
          const int64_t u = (i - a.ptr[p]) % 4;
          s[u] = std::fma(x[a.kidx[i]], vals[i * 16 + n % 16], s[u]);
        }
        a.y[m * a.ldy + n] = ((s[0] + s[1]) + (s[2] + s[3])) + (a.bias ? a.bias[n] : 0.0f);
      }
    }
  });
}

void w8a8_ref(const Args& a) {
  const W8Tile* tiles = static_cast<const W8Tile*>(a.values);
  const int64_t Kp = round_up(a.K, 4);
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      std::vector<uint8_t> q(Kp);
      const float sx = quant_act::quantize_row_ref(a.x + m * a.ldx, a.K, q.data(), 4, 0,
                                                   quant_act::amax_floor(a.row_amax, m));
      for (int64_t n = 0; n < a.N; ++n) {
        const int64_t p = n / 16;
        int32_t acc = 0;
        for (int64_t i = a.ptr[p]; i < a.ptr[p + 1]; ++i)
          for (int j = 0; j < 4; ++j)
            acc += int32_t(static_cast<int8_t>(q[4 * a.kidx[i] + j])) * tiles[i].q[n % 16][j];
        const float b = a.bias ? a.bias[n] : 0.0f;
        a.y[m * a.ldy + n] = std::fma(static_cast<float>(acc), sx * a.w_scale[n], b);
      }
    }
  });
}

}  // namespace tersor::spmm_block
