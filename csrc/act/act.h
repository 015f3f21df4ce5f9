// SwiGLU's gate: y = silu(g) * u = g * sigmoid(g) * u, elementwise over rows (a Llama-family
// MLP's act_fn(gate_proj(x)) * up_proj(x)). fp32, bf16 or fp16 (`dtype`, half_io::Dtype),
// all the same; fp32 arithmetic, a half result rounded once. sigmoid from e = exp(-|g|):
// 1 / (1 + e) for g >= 0, e / (1 + e) below (never an overflowing exp).
//
// Why a kernel: eager PyTorch runs it as two ops on the MLP's widest rows (8192 at M = 1 in a
// 1B Llama: silu ~36 us, mul ~55 us per layer measured in a decode step, Zen 3).
#pragma once
#include <cstdint>

namespace tersor::act {

struct SwigluArgs {
  const void* g;  // [M][N], row stride ldg (elements)
  const void* u;  // [M][N], row stride ldu
  int64_t M, N, ldg, ldu;
  void* y;  // [M][N], row stride ldy
  int64_t ldy;
  int dtype;
  int nthreads;
};

void silu_mul(const SwigluArgs& a);  // per-call ISA dispatch
void silu_mul_ref(const SwigluArgs& a);
void silu_mul_avx2(const SwigluArgs& a);

}  // namespace tersor::act
