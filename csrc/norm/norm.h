// RMSNorm rows, as Hugging Face's Llama-family RMSNorm computes them:
//
//   r = 1 / sqrt(mean(x^2) + eps)       (fp32; the sum in 8 lanes and a fixed tree)
//   y = w * half(x * r)                  (each product rounded to the model's dtype)
//
// x, w and y are fp32, bf16 or fp16 (`dtype`, half_io::Dtype), all the same. For fp32 rows
// half() is the identity; for halves each product is computed in fp32 and rounded to nearest
// even, as torch's bf16 / fp16 elementwise ops do, so a row equals HF's bit for bit except
// where its mean, summed in another order, differs in the last bit.
//
// Why a kernel: in eager PyTorch the norm is 7 ops per call (~30 us at M = 1); a 1B Llama
// decode step calls it 33 times.
#pragma once
#include <cstdint>

namespace tersor::norm {

struct RmsArgs {
  const void* x;  // [M][N], row stride ldx (elements)
  int64_t M, N, ldx;
  const void* w;  // [N]
  float eps;
  void* y;  // [M][N], row stride ldy
  int64_t ldy;
  int dtype;
  int nthreads;
};

void rms_norm(const RmsArgs& a);  // per-call ISA dispatch
void rms_norm_ref(const RmsArgs& a);
void rms_norm_avx2(const RmsArgs& a);

}  // namespace tersor::norm
