// Portable part of the W8A8 convolution: the fp32 block gather for ISAs without the fused
// AMX path, and the per-call dispatch.
#include <cstring>
#include <vector>

#include "common/cpu_features.h"
#include "common/linear_args.h"
#include "conv/conv_w8a8.h"
#include "gemm_w8a8/gemm_w8a8.h"

namespace tersor::conv {

void run_w8a8_generic(const ConvW8A8Args& c) {
  const int64_t K = c.kh * c.kw * c.C, M = c.B * c.Ho * c.Wo;
  std::vector<float> block(kBlockRows * K);
  for (int64_t m0 = 0; m0 < M; m0 += kBlockRows) {
    const int64_t rows = M - m0 < kBlockRows ? M - m0 : kBlockRows;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t m = m0 + r, b = m / (c.Ho * c.Wo), oh = m / c.Wo % c.Ho, ow = m % c.Wo;
      float* dst = block.data() + r * K;
      for (int64_t i = 0; i < c.kh; ++i)
        for (int64_t j = 0; j < c.kw; ++j) {
          const float* src =
              c.x + ((b * c.Hp + oh * c.sh + i * c.dh) * c.Wp + ow * c.sw + j * c.dw) * c.C;
          std::memcpy(dst + (i * c.kw + j) * c.C, src, c.C * sizeof(float));
        }
    }
    gemm_w8a8::run(PackedW8LinearArgs{block.data(), rows, K, K, c.w, c.colsum, c.w_scale, c.N,
                                      c.bias, c.y + m0 * c.N, c.N, c.nthreads});
  }
}

void run_w8a8(const ConvW8A8Args& c) {
  if (c.B * c.Ho * c.Wo == 0 || c.N == 0) return;
#if defined(TERSOR_X86)
  if (active_isa() == Isa::Amx) return run_w8a8_amx(c);
#endif
  run_w8a8_generic(c);
}

}  // namespace tersor::conv
