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

namespace {

using avx2::kMR;

// Quantizes rows [m0, m1) (at most kMR) into one panel [Kp/4][kMR rows][4 k] and their scales
// into sx; rows past m1 are zeroed. Returns whether every code is >= 0.
bool fill_panel(const RowFill& fill, int64_t m0, int64_t m1, int64_t Kp, uint8_t* panel,
                float* sx) {
  for (int64_t m = m0; m < m1; ++m) sx[m - m0] = fill(m, panel + (m - m0) * 4, 4 * kMR, 0);
  if (m1 - m0 < kMR)
    for (int64_t g = 0; g < Kp / 4; ++g)
      std::memset(panel + g * 4 * kMR + 4 * (m1 - m0), 0, 4 * (kMR - (m1 - m0)));
  return avx2::all_non_negative(panel, Kp * kMR);
}

}  // namespace

void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill) {
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4, panel_bytes = Kp * kMR;
  static const int64_t kOneRun = 0;
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);

  if (a.M >= avx2::kRowsPerBlock * nt) {  // every thread gets whole row blocks
#pragma omp parallel num_threads(nt)
    {
      auto panels = alloc_scratch<uint8_t>(avx2::kRowsPerBlock / kMR * panel_bytes);
      avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1, avx2::RowBlock& block) {
        for (int64_t m = m0; m < m1; m += kMR) {
          const int64_t t = (m - m0) / kMR;
          uint8_t* panel = panels.get() + t * panel_bytes;
          block.non_negative[t] =
              fill_panel(fill, m, std::min(m + kMR, m1), Kp, panel, block.sx + (m - m0));
          for (int r = 0; r < kMR; ++r) block.row[m - m0 + r] = panel + 4 * r;
        }
        block.step = 4 * kMR;
        block.run_offset = &kOneRun;
        block.n_runs = 1;
        block.run_groups = k4n;
      });
    }
    return;
  }

  // Few rows: quantize them all, then threads split the column blocks.
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  auto apanel = alloc_scratch<uint8_t>(m_panels * panel_bytes);
  auto sx = alloc_scratch<float>(m_panels * kMR);
  auto non_negative = alloc_scratch<bool>(m_panels);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < m_panels; ++p)
      non_negative.get()[p] = fill_panel(fill, p * kMR, std::min(a.M, p * kMR + kMR), Kp,
                                         apanel.get() + p * panel_bytes, sx.get() + p * kMR);
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
