// Fused gather + quantize + AMX GEMM for W8A8 convolution (see conv_w8a8.h).
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/linear_args.h"
#include "common/parallel.h"
#include "conv/conv_w8a8.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"

namespace tersor::conv {

void run_w8a8_amx(const ConvW8A8Args& c) {
  const int64_t K = c.kh * c.kw * c.C, M = c.B * c.Ho * c.Wo;
  const int64_t lda = gemm_w8a8::amx_lda(K);
  // With dilation 1 along W the kw taps of a kernel row are adjacent pixels: one contiguous
  // run of kw * C floats (the 3-channel 7x7 stem: 7 runs of 21 instead of 49 runs of 3).
  const bool merge = c.dw == 1;
  const int64_t nseg = merge ? c.kh : c.kh * c.kw, seglen = merge ? c.kw * c.C : c.C;
  auto aq = alloc_scratch<int8_t>(kBlockRows * lda);
  auto sx = alloc_scratch<float>(kBlockRows);
  const int nt = threads_for_work(double(M) * c.N * K, c.nthreads);
#pragma omp parallel num_threads(nt)
  {
    const float* segs[64];  // kh * kw <= 64 (checked by the caller)
    for (int64_t m0 = 0; m0 < M; m0 += kBlockRows) {
      const int64_t rows = M - m0 < kBlockRows ? M - m0 : kBlockRows;
      const int64_t rows32 = round_up(rows, 32);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows32; ++r) {
        int8_t* dst = aq.get() + r * lda;
        if (r >= rows) {  // padding rows of the last block: computed, never stored
          std::memset(dst, 0, lda);
          sx.get()[r] = 0.0f;
          continue;
        }
        const int64_t m = m0 + r, b = m / (c.Ho * c.Wo), oh = m / c.Wo % c.Ho, ow = m % c.Wo;
        const float* origin = c.x + ((b * c.Hp + oh * c.sh) * c.Wp + ow * c.sw) * c.C;
        for (int64_t i = 0, s = 0; i < c.kh; ++i)
          for (int64_t j = 0; j < (merge ? 1 : c.kw); ++j, ++s)
            segs[s] = origin + (i * c.dh * c.Wp + j * c.dw) * c.C;
        sx.get()[r] = quant_act::quantize_gather_avx512(segs, nseg, seglen, dst, lda);
      }
      // implicit barrier: the block's A is ready
      const PackedW8LinearArgs blk{nullptr, rows, K, K, c.w, c.colsum, c.w_scale, c.N,
                                   c.bias, c.y + m0 * c.N, c.N, c.nthreads};
      gemm_w8a8::amx_gemm_quantized(blk, aq.get(), lda, sx.get());
#pragma omp barrier
    }
  }
}

}  // namespace tersor::conv
