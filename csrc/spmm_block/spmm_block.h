// Block-sparse GEMM: y = x W^T + b with W kept in blocks of 16 output channels x BK k, the
// block a vector unit consumes whole (layouts BlockF32 / W8Tile in common/formats.h):
//
//   fp32, BK = 1:  a block is one zmm of W^T (16 channels at one k): per block and row, one
//                  broadcast of x[m][k] and one FMA, the dense GEMM's own inner step
//   int8, BK = 4:  a block is one W8Tile (16 channels x 4 k, one VNNI lane per channel): per
//                  block and row, one 32-bit broadcast of 4 activations and one vpdpbusd
//
// For every panel of 16 channels p, its kept blocks are ptr[p] .. ptr[p+1]-1 (k ascending);
// kidx[i] is block i's first k divided by BK, values[i] its 16 x BK weights. Any pruning block
// shape (r, c) maps onto these kernel blocks (a kernel block is kept when it holds a nonzero).
//
// fp32 order rule (every path, bit-identical): per output, block i adds into partial sum
// i % 4 (four FMA chains, so one row is not bound by FMA latency), y = ((s0 + s1) + (s2 + s3))
// + bias. int8: exact int32 accumulation and gemm_w8a8's epilogue
// y = fma(float(acc), scale_x[m] * scale_w[n], bias[n]).
#pragma once
#include <cstdint>

namespace tersor::spmm_block {

struct Args {
  const float* x;  // M x K, row stride ldx
  int64_t M, K, ldx;
  int64_t N;
  const int64_t* ptr;     // [Np/16 + 1] kept blocks per panel (prefix)
  const uint16_t* kidx;   // [blocks] k / BK
  const void* values;     // fp32 [blocks][16] or W8Tile [blocks]
  const int32_t* colsum;  // int8 only: [Np] sum_k W[n][k]
  const float* w_scale;   // int8 only: [Np]
  const float* bias;
  float* y;
  int64_t ldy;
  int nthreads;
  const float* row_amax = nullptr;  // int8 only: fp32 [M] floors under the rows' amax, or none
};

void f32_ref(const Args& a);
void f32_avx2(const Args& a);
void f32_avx512(const Args& a);
void run_f32(const Args& a);

void w8a8_ref(const Args& a);
void w8a8_avx2(const Args& a);
void w8a8_avx512(const Args& a);
void run_w8a8(const Args& a);

}  // namespace tersor::spmm_block
