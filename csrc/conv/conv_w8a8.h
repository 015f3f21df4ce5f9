// W8A8 Conv2d by the GEMM view (M = B * H_out * W_out, K = kh * kw * C_in, N = C_out) on an NHWC
// input that the caller has already zero-padded. Rows of the implicit im2col matrix are
// produced a block at a time (kBlockRows output pixels), never for the whole batch:
//   - AMX: each patch is gathered and quantized to s8 in one pass straight into the tile
//     buffer (quant_act::quantize_gather_avx512), then gemm_w8a8::amx_gemm_quantized;
//   - other ISAs: the block is gathered as fp32 rows and goes through gemm_w8a8::run.
// Every path gives the bit-identical results of im2col + gemm_w8a8 (the same quantization
// rules and epilogue).
#pragma once
#include <cstdint>

namespace tersor::conv {

struct ConvW8A8Args {
  const float* x;  // padded NHWC input [B][Hp][Wp][C]
  int64_t B, Hp, Wp, C;
  int64_t kh, kw, sh, sw, dh, dw, Ho, Wo;
  const int8_t* w;  // packed int8 weight, K = kh * kw * C in (kh, kw, C) order
  const int32_t* colsum;
  const float* w_scale;
  int64_t N;
  const float* bias;
  float* y;  // NHWC output [B * Ho * Wo][N]
  int nthreads;
};

constexpr int64_t kBlockRows = 1024;

void run_w8a8_generic(const ConvW8A8Args& c);
void run_w8a8_amx(const ConvW8A8Args& c);
void run_w8a8(const ConvW8A8Args& c);  // per-call ISA dispatch

}  // namespace tersor::conv
