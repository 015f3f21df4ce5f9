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

}  // namespace tersor::spmm_24
