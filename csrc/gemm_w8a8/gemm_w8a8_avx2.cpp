// AVX2 W8A8 GEMM (CPUs without VNNI): rows are quantized into a buffer of s8 rows (Kp codes
// each, zero past K), then the micro-kernel of tile_avx2.h runs over it, 4 rows x 16 columns at
// a time, with one pointer per row.
#include <immintrin.h>

#include <algorithm>

#include "common/formats.h"
#include "common/parallel.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "gemm_w8a8/tile_avx2.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w8a8 {

void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill) {
  using avx2::kMR;
  const int64_t Kp = round_up(a.K, 4);
  static const int64_t kOneRun = 0;
  // The rows [m0, m1) of a tile (at most kMR), quantized at rows + (m - m0) * Kp, as the
  // kernel's source; sx receives their scales and the return value says whether every code is
  // >= 0. Pointers past m1 repeat row m0: the tile never reads them.
  auto fill_tile = [&](int64_t m0, int64_t m1, uint8_t* rows, float* sx, avx2::ARows* src) {
    for (int64_t m = m0; m < m1; ++m) sx[m - m0] = fill(m, rows + (m - m0) * Kp, 4, 0);
    *src = avx2::ARows{{rows, rows, rows, rows}, 4, &kOneRun, 1, Kp / 4};
    for (int64_t r = 1; r < m1 - m0; ++r) src->row[r] = rows + r * Kp;
    return avx2::all_non_negative(rows, (m1 - m0) * Kp);
  };
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);

  if (a.M >= avx2::kRowsPerBlock * nt) {  // every thread gets whole row blocks
#pragma omp parallel num_threads(nt)
    {
      auto rows = alloc_scratch<uint8_t>(avx2::kRowsPerBlock * Kp);
      avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1, avx2::RowBlock& block) {
        for (int64_t m = m0; m < m1; m += kMR) {
          const int64_t i = m - m0;
          avx2::ARows src;
          block.non_negative[i / kMR] = fill_tile(m, std::min(m + kMR, m1), rows.get() + i * Kp,
                                                  block.sx + i, &src);
          for (int r = 0; r < kMR; ++r) block.row[i + r] = src.row[r];
        }
        block.step = 4;
        block.run_offset = &kOneRun;
        block.n_runs = 1;
        block.run_groups = Kp / 4;
      });
    }
    return;
  }

  // Few rows: quantize them all, then threads split the column blocks.
  const int64_t n_blocks = round_up(a.N, 16) / 16, tiles = (a.M + kMR - 1) / kMR;
  auto rows = alloc_scratch<uint8_t>(a.M * Kp);
  auto sx = alloc_scratch<float>(tiles * kMR);
  auto src = alloc_scratch<avx2::ARows>(tiles);
  auto non_negative = alloc_scratch<bool>(tiles);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t)
      non_negative.get()[t] = fill_tile(t * kMR, std::min(a.M, t * kMR + kMR),
                                        rows.get() + t * kMR * Kp, sx.get() + t * kMR,
                                        src.get() + t);
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t blk, int, int64_t m0, int mr) {
      avx2::run_tile(mr, non_negative.get()[m0 / kMR], src.get()[m0 / kMR],
                     a.w + blk * Kp * 16, sx.get() + m0, a, m0, blk * 16);
    });
  }
}

void run_avx2(const PackedW8LinearArgs& a) {
  run_rows_avx2(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, dst, gs, xm);
  });
}

}  // namespace tersor::gemm_w8a8
