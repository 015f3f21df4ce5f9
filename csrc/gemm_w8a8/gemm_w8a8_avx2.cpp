// AVX2 W8A8 GEMM (CPUs without VNNI): rows are quantized into a buffer of s8 rows (Kp codes
// each, zero past K), then the micro-kernel of tile_avx2.h runs over it, 4 rows x 16 columns at
// a time, with one pointer per row.
#include <immintrin.h>

#include <algorithm>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/weight_stream.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "gemm_w8a8/tile_avx2.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w8a8 {

void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill) {
  using avx2::kMR;
  const int64_t Kp = round_up(a.K, 4);
  static const int64_t kOneRun = 0;
  // Rows [m0, m1) quantized to rows + (m - m0) * Kp, their scales to sx; returns whether
  // every code is >= 0 (the tile variant to take). Narrow weights: the codes are written as
  // u8 a + 128 (tile_avx2.h), whatever their signs.
  const bool biased = a.narrow_w;
  auto quantize = [&](int64_t m0, int64_t m1, uint8_t* rows, float* sx) {
    for (int64_t m = m0; m < m1; ++m)
      sx[m - m0] = fill(m, rows + (m - m0) * Kp, 4, biased ? 0x80 : 0);
    return !biased && avx2::all_non_negative(rows, (m1 - m0) * Kp);
  };
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);

  if (a.M >= kRowsPerBlock * nt) {  // every thread gets whole row blocks
#pragma omp parallel num_threads(::tersor::team(nt))
    {
      auto rows = alloc_scratch<uint8_t>(kRowsPerBlock * Kp);
      avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1, avx2::RowBlock& block) {
        for (int64_t m = m0; m < m1; m += kMR)
          block.non_negative[(m - m0) / kMR] = quantize(
              m, std::min(m + kMR, m1), rows.get() + (m - m0) * Kp, block.sx + (m - m0));
        for (int64_t i = 0; i < kRowsPerBlock; ++i) block.row[i] = rows.get() + i * Kp;
        block.runs = RowRuns{&kOneRun, 1, Kp / 4};
        block.biased = biased;
      });
    }
    return;
  }

  // Few rows: quantize them all, then threads split the column blocks.
  const int64_t n_blocks = round_up(a.N, 16) / 16, tiles = (a.M + kMR - 1) / kMR;
  auto rows = alloc_scratch<uint8_t>(tiles * kMR * Kp);  // whole tiles: every row pointer valid
  auto sx = alloc_scratch<float>(tiles * kMR);
  auto non_negative = alloc_scratch<bool>(tiles);
  const int prefetch = a.M > kMR ? 0 : weight_stream_nta(a.w, n_blocks * Kp * 16) ? 2 : 1;
  // signed rows take the XOR tile (tile_avx2.h) where staging its operands, once per column
  // block and call, costs less than it saves: from 8 row tiles
  const bool xor_tiles = a.M >= 8 * kMR;
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    avx2::XorWeights xw;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t)
      non_negative.get()[t] = quantize(t * kMR, std::min(a.M, t * kMR + kMR),
                                       rows.get() + t * kMR * Kp, sx.get() + t * kMR);
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t blk, int, int64_t m0, int mr) {
      const uint8_t* r = rows.get() + m0 * Kp;
      const avx2::ARows src{
          {r, r + Kp, r + 2 * Kp, r + 3 * Kp}, RowRuns{&kOneRun, 1, Kp / 4}, prefetch, biased};
      avx2::run_tile(mr, non_negative.get()[m0 / kMR], src, a.w + blk * Kp * 16, sx.get() + m0,
                     a, avx2::TileOut{a.y + m0 * a.ldy, a.ldy, nullptr, m0}, blk * 16,
                     xor_tiles ? &xw : nullptr);
    });
  }
}

void run_avx2(const PackedW8LinearArgs& a) {
  run_rows_avx2(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx2(quant_act::a8_row(a, m), a.K, dst, gs, xm,
                                          quant_act::amax_floor(a.row_amax, m));
  });
}

}  // namespace tersor::gemm_w8a8
