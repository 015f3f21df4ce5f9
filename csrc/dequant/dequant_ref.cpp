#include <cmath>

#include "common/parallel.h"
#include "common/formats.h"
#include "common/half.h"
#include "dequant/dequant.h"

namespace tersor::dequant {

void w8_ref(const W8Args& a) {
  const int64_t k4n = round_up(a.K, 4) / 4;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
      const W8Tile* col = reinterpret_cast<const W8Tile*>(a.w) + (n / 16) * k4n;
      for (int64_t k = 0; k < a.K; ++k)
        a.out[n * a.K + k] = static_cast<float>(col[k / 4].q[n % 16][k % 4]) * a.w_scale[n];
    }
  });
}

void w4t_ref(const W4TArgs& a) {
  const int64_t G = a.group_size, k8n = a.ngroups * G / 8;
  parallel_team(::tersor::team(a.nthreads), [&] {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
      const W4Tile* col = reinterpret_cast<const W4Tile*>(a.w) + (n / 16) * k8n;
      const int64_t meta = (n / 16) * a.ngroups * 16 + n % 16;
      for (int64_t k = 0; k < a.K; ++k) {
        const float s = half_to_float(a.scale[meta + (k / G) * 16]);
        const float zs = static_cast<float>(a.zero ? a.zero[meta + (k / G) * 16] : 8) * s;
        const uint8_t byte = col[k / 8].q[n % 16][k % 4];
        const int code = (k % 8) < 4 ? (byte & 0x0f) : (byte >> 4);
        a.out[k * a.ldo + n] = std::fma(static_cast<float>(code), s, -zs);
      }
    }
  });
}

}  // namespace tersor::dequant
