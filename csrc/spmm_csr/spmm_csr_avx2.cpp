// AVX2 unstructured sparse GEMM (rules in spmm_csr.h).
//  - 1-2 rows (decode steps): the ELL blocks, 8 lanes per vector, each lane's own x[k]
//    gathered (vgatherdps; a row of x sits in L1) for one FMA per lane and row, each lane its
//    own chain in k order. Zen 3, 2 threads, 90% zeros, against the scalar kernel it replaces
//    (4 channels in lockstep, one scalar FMA chain each: FMA-latency bound where rows are
//    short): 1.1-2.1x faster at one row (384x1536 .. 4096x11008), 1.1-1.6x at two; against
//    torch's CSR (MKL) at one row 0.93-1.7x -> 1.7-2.6x (75-95% zeros).
//  - More rows: the transposed-activation kernel of spmm_csr_avx512.cpp (8 lanes, 32 rows per
//    pass); its cost per call is about flat up to 32 rows, the gathers' grow with every row
//    (3 rows: even). Up to 16 rows (1-2 vectors per nonzero) 4 channels step in lockstep
//    (below); at 32 rows that lost before (0.74-0.92x, channels of the ELL's sorted order).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <cmath>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/ell_avx2.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {
namespace {

constexpr int kLockstep = 4;  // channels stepped together in passes of 1-2 vectors
constexpr int kTileCols = 16;  // channels per tile of outputs (a multiple of kLockstep)

// Passes of NV <= 2 vectors (up to 16 rows): kLockstep channels at a time, as
// spmm_csr_avx512.cpp does (one FMA chain per channel was latency bound: 4096x4096 at 90%, 8
// rows: 1.5x faster through this path on Zen 5). Each output sums its nonzeros in k order.
// Outputs go to tile[r][n - n_tile] (kTileCols columns, bias added), written out to y one row
// of kTileCols at a time by flush_tile: written straight to y, a column per channel touched a
// cache line of y per row and channel (384x1536 at 32 rows: 1.3x slower).
template <int NV>
void channels_in_lockstep(const Args& a, const float* xb, int64_t ldt, int rows, int64_t n,
                          int count, float* tile, int64_t n_tile) {
  int64_t beg[kLockstep], len[kLockstep], common = INT64_MAX;
  for (int c = 0; c < count; ++c) {
    beg[c] = a.rowptr[n + c];
    len[c] = a.rowptr[n + c + 1] - beg[c];
    common = std::min(common, len[c]);
  }
  __m256 acc[kLockstep][NV];
TERSOR_UNROLL
  for (int c = 0; c < kLockstep; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm256_setzero_ps();
  auto step = [&](int c, int64_t i) {
    const float* xr = xb + int64_t(a.col[i]) * ldt;
    const __m256 w = _mm256_set1_ps(a.val[i]);
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v)
      acc[c][v] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8 * v), w, acc[c][v]);
  };
  if (count < kLockstep) common = 0;
  for (int64_t j = 0; j < common; ++j)
TERSOR_UNROLL
    for (int c = 0; c < kLockstep; ++c) step(c, beg[c] + j);
  alignas(32) float tmp[8 * NV];
  for (int c = 0; c < count; ++c) {
    for (int64_t j = common; j < len[c]; ++j) step(c, beg[c] + j);
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) _mm256_store_ps(tmp + 8 * v, acc[c][v]);
    const float b = a.bias ? a.bias[n + c] : 0.0f;
    for (int r = 0; r < rows; ++r) tile[r * kTileCols + (n + c - n_tile)] = tmp[r] + b;
  }
}

void flush_tile(float* y, int64_t ldy, const float* tile, int rows, int64_t n_tile,
                int64_t cols) {
  for (int r = 0; r < rows; ++r)
    std::memcpy(y + r * ldy + n_tile, tile + r * kTileCols, size_t(cols) * 4);
}

}  // namespace

void run_avx2(const Args& a) {
  if (a.M <= ell_avx2::kMaxRows) {
    const ell_avx2::Ell ell{a.ell_cnt, a.ell_off, a.ell_col, a.perm, a.N};
    const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
    ell_avx2::for_blocks(ell, a.M, [&](int64_t b, auto shape) {
      constexpr int MR = decltype(shape)::kRows, NB = decltype(shape)::kBlocks;
      ell_avx2::walk<MR, NB>(
          ell, b, a.x, a.ldx, INT64_MAX,
          [&](int64_t e) { return _mm256_loadu_ps(a.ell_val + e); },
          [&](const __m256(&acc)[MR][NB][2]) {  // once, at the end: y = acc + bias
            ell_avx2::scatter<float>(ell, b, acc, [&](int r, int32_t n, float v) {
              a.y[r * a.ldy + n] = v + (a.bias ? a.bias[n] : 0.0f);
            });
          });
    });
    return;
  }
  constexpr int kMV = 4;
  const int64_t M8 = round_up(a.M, 8);
  // Row stride of xT: with more rows than one pass takes, one cache line past a multiple of 16
  // floats, because a pass reads a part of each row and with a power-of-two stride those parts
  // fall into a few L2 sets (a 1 MiB tile thrashed, 10x slower); within one pass the rows are
  // read whole, so packed rows keep xT small (Zen 2: 1.04-1.30x faster at 2-32 rows than with
  // the padded stride, 384x1536 .. 4096x4096 at 90%).
  const int64_t ldt = M8 <= 8 * kMV ? M8 : M8 + 16;
  auto xt = alloc_scratch<float>(a.K * ldt);
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    transpose_rows(a, xt.get(), ldt);
    int64_t n0, n1;
    balanced_range(a.rowptr, a.N, &n0, &n1);
    alignas(64) float tmp[8 * kMV];
    alignas(64) float tile[8 * kMV * kTileCols];  // outputs of kTileCols channels
    if (M8 <= 16) {
      const int rows = static_cast<int>(a.M);
      for (int64_t nt = n0; nt < n1; nt += kTileCols) {
        const int64_t cols = std::min<int64_t>(kTileCols, n1 - nt);
        for (int64_t n = nt; n < nt + cols; n += kLockstep)
          (M8 == 8 ? channels_in_lockstep<1> : channels_in_lockstep<2>)(
              a, xt.get(), ldt, rows, n,
              static_cast<int>(std::min<int64_t>(kLockstep, nt + cols - n)), tile, nt);
        flush_tile(a.y, a.ldy, tile, rows, nt, cols);
      }
    }
    for (int64_t m0 = 0; M8 > 16 && m0 < M8; m0 += 8 * kMV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (M8 - m0) / 8));
      const int rows = static_cast<int>(std::min<int64_t>(8 * kMV, a.M - m0));
      const float* xb = xt.get() + m0;
      for (int64_t nt = n0; nt < n1; nt += kTileCols) {
        const int64_t cols = std::min<int64_t>(kTileCols, n1 - nt);
        for (int64_t n = nt; n < nt + cols; ++n) {
          __m256 acc[kMV];
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v) acc[v] = _mm256_setzero_ps();
          for (int64_t i = a.rowptr[n]; i < a.rowptr[n + 1]; ++i) {
            const __m256 w = _mm256_set1_ps(a.val[i]);
            const float* xr = xb + int64_t(a.col[i]) * ldt;
TERSOR_UNROLL
            for (int v = 0; v < kMV; ++v)
              if (v < nv) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8 * v), w, acc[v]);
          }
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v) _mm256_store_ps(tmp + 8 * v, acc[v]);
          const float b = a.bias ? a.bias[n] : 0.0f;
          for (int r = 0; r < rows; ++r) tile[r * kTileCols + (n - nt)] = tmp[r] + b;
        }
        flush_tile(a.y + m0 * a.ldy, a.ldy, tile, rows, nt, cols);
      }
    }
  }
}

}  // namespace tersor::spmm_csr
