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
  auto aq = alloc_scratch<int8_t>(kBlockRows * lda);
  auto zeros = alloc_scratch<float>(c.kw * c.C);
  std::memset(zeros.get(), 0, c.kw * c.C * sizeof(float));
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
        int64_t len;
        const int64_t n = patch_runs(c, m0 + r, zeros.get(), segs, &len);
        sx.get()[r] = quant_act::quantize_gather_avx512(segs, n, len, dst, lda);
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
