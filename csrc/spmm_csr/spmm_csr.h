// Unstructured sparse fp32 GEMM: y = x W^T + b with W in compressed rows (one row per output
// channel, nonzeros in ascending k). Two layouts of the same nonzeros, built at conversion:
//
//   CSR (canonical, and the large-M kernel's input):
//     rowptr[N+1] int64, col[nnz] int32 (k), val[nnz] fp32
//
//   ELL blocks (the small-M kernel): output channels sorted by nonzero count and grouped 16 to
//   a block so the lanes of a vector do about the same work; block b holds depth[b] steps:
//
//     ell_val[step][16] fp32   ell_col[step][16] uint16   (lane c = channel perm[16 b + c])
//     ell_cnt[16 b + c] uint16 nonzeros of that lane      ell_off[b] first step of block b
//
//     step j of lane c is its j-th nonzero (k ascending); lanes past their count are masked.
//
// Every path sums, per output, acc = fma(x[k], w, acc) over the row's nonzeros in k order, then
// y = acc + bias: bit-identical results. Threads are balanced by nonzeros, not by rows.
#pragma once
#include <cstdint>

namespace tersor::spmm_csr {

struct Args {
  const float* x;  // M x K, row stride ldx
  int64_t M, K, ldx;
  int64_t N;
  const int64_t* rowptr;
  const int32_t* col;
  const float* val;
  const float* ell_val;
  const uint16_t* ell_col;
  const uint16_t* ell_cnt;
  const int64_t* ell_off;  // [nblocks + 1]
  const int32_t* perm;     // [Np] lane -> output channel (>= N: padding)
  const float* bias;
  float* y;
  int64_t ldy;
  int nthreads;
};

// Rows from which the AVX-512 path takes the transposed-activation kernel (AVX2: from 3, see
// spmm_csr_avx2.cpp): measured on 4096 x 4096 at 90% sparsity, the lane-gather kernel wins
// only below 4 rows (M = 8: 2.4 ms transposed vs 5.0 ms gathered).
constexpr int64_t kLargeM = 4;

// x [M][K] -> xt [K][ld] (rows M..ld-1 zero), in 16 x 16 tiles: a column-at-a-time copy reads
// x with a K-float stride and was 10x slower than the GEMM it feeds. Work-shared: call inside
// an OpenMP parallel region.
void transpose_rows(const Args& a, float* xt, int64_t ld);

// x in passes of `pass` rows, each pass transposed into a block of its own (pass-major): rows
// [m0, m0 + pass) -> xt + (m0 / pass) * K * pass as transpose_rows with ld = pass (zeros past
// M). A pass then reads one contiguous K x pass panel; in one xT [K][ld] of all the rows it
// read `pass` floats of every ld-float row, a working set spread over the whole xT (Zen 3,
// 4096x4096 at 512 rows: 8.6 MB, 1.5-1.8x slower). Work-shared, as transpose_rows.
void transpose_passes(const Args& a, float* xt, int64_t pass);

void run_ref(const Args& a);
void run_avx2(const Args& a);
void run_avx512(const Args& a);
void run(const Args& a);

// int8 values x per-row int8 activations ("unstructured+w8a8"): the same CSR / ELL layouts with
// int8 values (symmetric per output channel, scale w_scale[n]), activations quantized per row
// (quant_act.h). Accumulation is exact in integers: the kernels multiply the integer codes in
// fp32 FMAs, which is exact while a partial sum stays below 2^24, and move the partial sum to
// an int32 accumulator every kExactChunk nonzeros (1024 * 127 * 127 < 2^24). One FMA per
// nonzero, where int32 would need vpmulld (two uops) + an add. The epilogue, in every path,
//     y = fma(float(acc), scale_x[m] * scale_w[n], bias[n])
// so all paths agree bit for bit with the ref.
constexpr int64_t kExactChunk = 1024;

struct W8A8Args {
  const float* x;  // M x K, row stride ldx
  int64_t M, K, ldx;
  int64_t N;
  const int64_t* rowptr;
  const int32_t* col;
  const int8_t* val;
  const int8_t* ell_val;
  const uint16_t* ell_col;
  const uint16_t* ell_cnt;
  const int64_t* ell_off;
  const int32_t* perm;
  const float* w_scale;  // [N]
  const float* bias;
  float* y;
  int64_t ldy;
  int nthreads;
  const float* row_amax = nullptr;  // fp32 [M] floors under the rows' amax, or none
};

void w8a8_ref(const W8A8Args& a);
void w8a8_avx2(const W8A8Args& a);
void w8a8_avx512(const W8A8Args& a);
void run_w8a8(const W8A8Args& a);

}  // namespace tersor::spmm_csr
