#include <algorithm>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "half_io/half_io.h"

namespace tersor::gemm_w4a8 {

namespace {

void run_isa(const PackedW4LinearArgs& a) {
  dispatch_isa(a, run_ref, TERSOR_X86_FN(run_avx2), TERSOR_X86_FN(run_avx512),
               TERSOR_X86_FN(run_amx));
}

// x_planes = 2: the ISA kernel over 2M plane rows into fp32 scratch rows (no bias), then
// y[m] = (y2[2m] + y2[2m + 1]) + bias, rounded to y's dtype (y_io) once. A decode row's two
// planes fall in one register tile, so each weight byte is unpacked once for both.
void run_planes(const PackedW4LinearArgs& a) {
  thread_local std::vector<float> buf;  // (half_io's scratch may hold the staged x)
  const size_t need = static_cast<size_t>(2 * a.M * a.N);
  if (buf.size() < need) buf.resize(need);
  PackedW4LinearArgs b = a;
  b.M = 2 * a.M;
  b.y = buf.data();
  b.ldy = a.N;
  b.bias = nullptr;
  b.y_io = 0;
  run_isa(b);
  const half_io::Converters cv = half_io::converters();
  const int nt = a.M * a.N >= (int64_t(1) << 16) ? a.nthreads : 1;
  parallel_team(::tersor::team(clamp_threads(nt)), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      float* hi = b.y + 2 * m * a.N;  // the sum overwrites the high plane's row
      const float* lo = hi + a.N;
      for (int64_t n = 0; n < a.N; ++n) hi[n] += lo[n];
      if (a.bias)
        for (int64_t n = 0; n < a.N; ++n) hi[n] += a.bias[n];
      if (a.y_io)
        cv.narrow(hi, a.N, reinterpret_cast<uint16_t*>(a.y) + m * a.ldy, a.y_io);
      else
        std::copy(hi, hi + a.N, a.y + m * a.ldy);
    }
  });
}

}  // namespace

void run(const PackedW4LinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
  if (a.x_planes == 2) return run_planes(a);
  run_isa(a);
}

}  // namespace tersor::gemm_w4a8
