#include "common/formats.h"
#include "dequant/dequant.h"

namespace tersor::dequant {

void w8_ref(const W8Args& a) {
  const int64_t k4n = round_up(a.K, 4) / 4;
#pragma omp parallel for schedule(static) num_threads(a.nthreads < 1 ? 1 : a.nthreads)
  for (int64_t n = 0; n < a.N; ++n) {
    const W8Tile* col = reinterpret_cast<const W8Tile*>(a.w) + (n / 16) * k4n;
    for (int64_t k = 0; k < a.K; ++k)
      a.out[n * a.K + k] = static_cast<float>(col[k / 4].q[n % 16][k % 4]) * a.w_scale[n];
  }
}

}  // namespace tersor::dequant
