// Portable part of the W8A8 convolution: the fp32 block gather for ISAs without the fused
// AMX path, and the per-call dispatch.
#include <cstring>
#include <vector>

#include "common/cpu_features.h"
#include "common/linear_args.h"
#include "conv/conv_w8a8.h"
#include "gemm_w8a8/gemm_w8a8.h"

namespace tersor::conv {

int64_t patch_runs(const ConvW8A8Args& c, int64_t m, const float* zeros, const float** runs,
                   int64_t* run_len) {
  const int64_t b = m / (c.Ho * c.Wo), oh = m / c.Wo % c.Ho, ow = m % c.Wo;
  const int64_t iw0 = ow * c.sw - c.pw;
  // With dilation 1 and the kw taps inside the image horizontally, a kernel row is one run of
  // kw * C adjacent floats (the 3-channel 7x7 stem: 7 runs of 21 instead of 49 runs of 3).
  const bool whole_rows = c.dw == 1 && iw0 >= 0 && iw0 + c.kw <= c.W;
  int64_t n = 0;
  for (int64_t i = 0; i < c.kh; ++i) {
    const int64_t ih = oh * c.sh + i * c.dh - c.ph;
    const bool row_in = ih >= 0 && ih < c.H;
    const float* row = c.x + (b * c.H + ih) * c.W * c.C;
    if (whole_rows) {
      runs[n++] = row_in ? row + iw0 * c.C : zeros;
      continue;
    }
    for (int64_t j = 0; j < c.kw; ++j) {
      const int64_t iw = iw0 + j * c.dw;
      runs[n++] = row_in && iw >= 0 && iw < c.W ? row + iw * c.C : zeros;
    }
  }
  *run_len = whole_rows ? c.kw * c.C : c.C;
  return n;
}

void run_w8a8_generic(const ConvW8A8Args& c) {
  const int64_t K = c.kh * c.kw * c.C, M = c.B * c.Ho * c.Wo;
  std::vector<float> block(kBlockRows * K), zeros(c.kw * c.C, 0.0f);
  const float* runs[64];
  for (int64_t m0 = 0; m0 < M; m0 += kBlockRows) {
    const int64_t rows = M - m0 < kBlockRows ? M - m0 : kBlockRows;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t len;
      const int64_t n = patch_runs(c, m0 + r, zeros.data(), runs, &len);
      for (int64_t s = 0; s < n; ++s)
        std::memcpy(block.data() + r * K + s * len, runs[s], len * sizeof(float));
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
