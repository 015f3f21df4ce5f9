// W8A8 Conv2d by the GEMM view (M = B * H_out * W_out, K = kh * kw * C_in, N = C_out) on an NHWC
// input; zero padding is applied in the gather (taps outside the image read a zero run), so no
// padded copy of the input is made. Rows of the implicit im2col matrix are
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
  const float* x;  // NHWC input [B][H][W][C]
  int64_t B, H, W, C;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  const int8_t* w;  // packed int8 weight, K = kh * kw * C in (kh, kw, C) order
  const int32_t* colsum;
  const float* w_scale;
  int64_t N;
  const float* bias;
  float* y;  // NHWC output [B * Ho * Wo][N]
  int nthreads;
};

constexpr int64_t kBlockRows = 1024;

// The runs of one output pixel's patch, in (kh, kw, C) order: up to kh * kw pointers to C floats
// (or kh pointers to kw * C floats when a kernel row lies inside the image and dilation_w is 1);
// taps in the padding point at `zeros` (at least kw * C zero floats). Returns the run count and
// sets *run_len to the floats per run.
int64_t patch_runs(const ConvW8A8Args& c, int64_t m, const float* zeros, const float** runs,
                   int64_t* run_len);
void run_w8a8_generic(const ConvW8A8Args& c);
void run_w8a8_amx(const ConvW8A8Args& c);
void run_w8a8(const ConvW8A8Args& c);  // per-call ISA dispatch

}  // namespace tersor::conv
