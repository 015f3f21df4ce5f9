// AVX2 W8A8 convolution without a gather. The GEMM micro-kernel (gemm_w8a8/tile_avx2.h)
// broadcasts one 4-code group of one row at a time, so its rows need not be packed: row r of a
// tile is a pointer to output pixel m's first tap in the zero-padded int8 input, and the kernel
// rows of the patch are runs at fixed offsets from it:
//
//   xq image (C codes per pixel)          output pixel (oh, ow), 3x3, stride s
//   row oh*s     [ . . a a a . . ]   run 0 = xq + ((oh*s)*Wp + ow*s) * C,   kw*C codes
//   row oh*s+1   [ . . a a a . . ]   run 1 = run 0 + 1 * Wp * C
//   row oh*s+2   [ . . a a a . . ]   run 2 = run 0 + 2 * Wp * C
//
// (dilated, or one group's channels of a grouped convolution: one run per tap.) The K order
// (kh, kw, C) of the packed weight is the order of the runs, so the weight block streams as in
// the GEMM. This skips the patch copy (~20% of the AVX2 time at 56x56, measured with perf) and
// the panel's trip through memory.
// In the static pipeline (c.out) the tiles write the next layer's codes directly.
#include <vector>

#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#include "gemm_w8a8/tile_avx2.h"

namespace tersor::conv {

void run_w8a8_avx2(const ConvCall& k) {
  using gemm_w8a8::avx2::kMR;
  const ConvW8A8Args& c = k.c;
  const QuantizedInput& in = k.in;
  const int64_t cg = c.groups > 1 ? c.C / c.groups : patch_channels(c);
  const bool whole_rows = c.dw == 1 && cg == c.C;  // a kernel row's taps: one run of codes
  const int64_t run = whole_rows ? c.kw * c.C : cg;
  // a 4-code group would straddle two runs; non-finite factors: the NaN rule of requant.h
  if (run % 4 != 0 || (c.out && !c.out->folded_finite))
    return for_each_group(k, [](const ConvCall& g) { run_unfused(g, run_w8a8_generic); });

  const int64_t M = c.B * c.Ho * c.Wo, K = c.kh * c.kw * cg;  // K % 4 == 0 here
  std::vector<int64_t> run_offset;
  for (int64_t i = 0; i < c.kh; ++i)
    for (int64_t j = 0; j < (whole_rows ? 1 : c.kw); ++j)
      run_offset.push_back((i * c.dh * in.Wp + j * c.dw) * c.C);
  const PackedW8LinearArgs a{nullptr, M, K, K, c.w, c.colsum, c.w_scale, c.N, c.bias, c.y,
                             out_stride(c), c.nthreads};
  // c.out (folded, requant.h): the tiles write codes straight from their accumulators
  const gemm_w8a8::avx2::CodesOut codes =
      c.out ? gemm_w8a8::avx2::CodesOut{c.out->q, c.out->ldq, c.out->res, c.out->ldres,
                                        c.out->res_scale, c.out->lo, c.out->hi}
            : gemm_w8a8::avx2::CodesOut{};
  const int nt = threads_for_work(double(M) * c.N * K, c.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  gemm_w8a8::avx2::run_row_blocks(a, [&](int64_t m0, int64_t m1,
                                         gemm_w8a8::avx2::RowBlock& block) {
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t b = m / (c.Ho * c.Wo), oh = m / c.Wo % c.Ho, ow = m % c.Wo;
      block.row[m - m0] = reinterpret_cast<const uint8_t*>(
          in.xq + ((b * in.Hp + oh * c.sh) * in.Wp + ow * c.sw) * c.C + c.c0);
      block.sx[m - m0] = in.scale[b];
      bool& non_negative = block.non_negative[(m - m0) / kMR];
      non_negative = ((m - m0) % kMR == 0 || non_negative) && in.non_negative[b];
    }
    block.run_offset = run_offset.data();
    block.n_runs = static_cast<int64_t>(run_offset.size());
    block.run_groups = run / 4;
    block.codes = c.out ? &codes : nullptr;
    if (c.groups > 1) {  // N / groups is a multiple of 16: a column block lies in one group
      block.group_cols = c.N / c.groups;
      block.group_bytes = cg;
    }
  });
}

}  // namespace tersor::conv
