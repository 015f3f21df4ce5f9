// 2:4 sparse fp32 GEMM: y = x W^T + b, W in the 2:4 layout of common/formats.h (S24Group).
// Every path accumulates per output, group by group in k order,
//     acc = fma(x[4g + p0], v0, acc);  acc = fma(x[4g + p1], v1, acc)
// and y = acc + bias, so all ISA paths agree bit for bit with the ref.
#pragma once
#include <cstdint>

namespace tersor::spmm_24 {

struct Args {
  const float* x;  // M x K, row stride ldx
  int64_t M, K, ldx;
  const float* values;  // S24Group[Np/16][K/4]
  const uint8_t* meta;  // [Np/16][K4p][16]
  int64_t N;
  const float* bias;
  float* y;
  int64_t ldy;
  int nthreads;
};

static inline int64_t groups(int64_t K) { return (K + 3) / 4; }
static inline int64_t meta_groups(int64_t K) { return (groups(K) + 3) / 4 * 4; }

void run_ref(const Args& a);
void run_avx2(const Args& a);
void run_avx512(const Args& a);
void run(const Args& a);

// 2:4 sparse int8 weight x int8 activations (S24I8Tile): activations quantized per row as in
// gemm_w8a8 (quant_act.h), exact int32 accumulation, and the same epilogue in every path,
//     y = fma(float(acc), scale_x[m] * scale_w[n], bias[n])
// so all ISA paths agree bit for bit with the ref. K <= 65536 (int32 bound, as gemm_w8a8).
struct W8A8Args {
  const float* x;  // M x K, row stride ldx
  int64_t M, K, ldx;
  const int8_t* values;   // S24I8Tile[Np/16][K8]
  const uint8_t* meta;    // [Np/16][K8][16]
  const int32_t* colsum;  // [Np] sum of the kept int8 values (VNNI +128 offset)
  const float* w_scale;   // [Np]
  int64_t N;
  const float* bias;
  float* y;
  int64_t ldy;
  int nthreads;
  const float* row_amax = nullptr;  // fp32 [M] floors under the rows' amax, or none
};

static inline int64_t k8_blocks(int64_t K) { return (K + 7) / 8; }

void run_w8a8_ref(const W8A8Args& a);
void run_w8a8_avx2(const W8A8Args& a);
void run_w8a8_avx512(const W8A8Args& a);
void run_w8a8(const W8A8Args& a);

}  // namespace tersor::spmm_24
