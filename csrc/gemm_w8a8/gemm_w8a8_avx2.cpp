// AVX2 W8A8 GEMM (CPUs without VNNI): rows are quantized into a panel, then the micro-kernel
// of tile_avx2.h runs over it, 4 rows x 16 columns at a time.
//
// A panel: apanel[M/4][Kp/4][4 rows][4 k] s8.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "gemm_w8a8/tile_avx2.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w8a8 {

void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill) {
  using avx2::kMR;
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  const int64_t panel_bytes = Kp * kMR;
  auto apanel = alloc_scratch<uint8_t>(m_panels * panel_bytes);
  auto sx = alloc_scratch<float>(m_panels * kMR);
  auto non_negative = alloc_scratch<bool>(m_panels);  // per panel: take the plain u8 x s8 tile
  static const int64_t kOneRun = 0;

  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* dst = apanel.get() + (m / kMR) * panel_bytes + (m % kMR) * 4;
      sx.get()[m] = fill(m, dst, 4 * kMR, 0);
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < m_panels; ++p) {
      uint8_t* panel = apanel.get() + p * panel_bytes;
      const int64_t rows = std::min<int64_t>(kMR, a.M - p * kMR);
      for (int64_t g = 0; g < k4n && rows < kMR; ++g)  // rows past M: zeros, not garbage
        std::memset(panel + g * 4 * kMR + 4 * rows, 0, 4 * (kMR - rows));
      non_negative.get()[p] = avx2::all_non_negative(panel, panel_bytes);
    }
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t blk, int, int64_t m0, int mr) {
      const uint8_t* panel = apanel.get() + (m0 / kMR) * panel_bytes;
      const avx2::ARows src{{panel, panel + 4, panel + 8, panel + 12}, 4 * kMR, &kOneRun, 1, k4n};
      avx2::run_tile(mr, non_negative.get()[m0 / kMR], src, a.w + blk * Kp * 16, sx.get() + m0,
                     a, m0, blk * 16);
    });
  }
}

void run_avx2(const PackedW8LinearArgs& a) {
  run_rows_avx2(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, dst, gs, xm);
  });
}

}  // namespace tersor::gemm_w8a8
