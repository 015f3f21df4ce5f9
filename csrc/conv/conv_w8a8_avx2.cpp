// AVX2 W8A8 convolution without a gather (direct_rows.h): the GEMM micro-kernel
// (gemm_w8a8/tile_avx2.h) broadcasts one 4-code group of one row at a time, so its rows need
// not be packed. In the static pipeline (c.out) the tiles write the next layer's codes directly.
#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#include "conv/direct_rows.h"
#include "gemm_w8a8/tile_avx2.h"

namespace tersor::conv {

void run_w8a8_avx2(const ConvCall& k) {
  const ConvW8A8Args& c = k.c;
  const DirectRuns d = direct_runs(c, k.in);
  if (!direct_applies(c, d)) return run_gathered(k);
  const PackedW8LinearArgs a = direct_gemm_args(c, d);
  const gemm_w8a8::CodesOut codes = direct_codes(c);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, c.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  gemm_w8a8::avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1,
                                         gemm_w8a8::avx2::RowBlock& block) {
    direct_rows(c, k.in, d, &codes, m0, m1, block);
  });
}

}  // namespace tersor::conv
