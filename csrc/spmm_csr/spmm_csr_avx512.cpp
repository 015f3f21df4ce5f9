// AVX-512 unstructured sparse GEMM (layouts and rules in spmm_csr.h).
//
// Few rows: ELL blocks, vectorized over 16 output channels; each step gathers every lane's own
// x[k] (vgatherdps; x of a row sits in L1) and does one masked FMA.
// Many rows: XNNPACK's way: x is transposed once per call to xT[K][M], and each nonzero w of a
// channel is broadcast against contiguous rows, acc[m..m+63] += w * xT[k][m..m+63]; no index
// decoding in the FMA stream, and the work is the nonzeros only.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {
namespace {

constexpr int kMR = 4;

template <int MR>
void ell_tile(const Args& a, int64_t b, int64_t m0) {
  const __m512i cnt = _mm512_cvtepu16_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.ell_cnt + 16 * b)));
  __m512 acc[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t s0 = a.ell_off[b], depth = a.ell_off[b + 1] - s0;
  for (int64_t j = 0; j < depth; ++j) {
    const __mmask16 live = _mm512_cmpgt_epi32_mask(cnt, _mm512_set1_epi32(static_cast<int>(j)));
    const __m512i idx = _mm512_cvtepu16_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.ell_col + (s0 + j) * 16)));
    const __m512 w = _mm512_loadu_ps(a.ell_val + (s0 + j) * 16);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512 xg = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, idx,
                                                 a.x + (m0 + r) * a.ldx, 4);
      acc[r] = _mm512_mask3_fmadd_ps(xg, w, acc[r], live);
    }
  }
  const __m512i perm = _mm512_loadu_si512(a.perm + 16 * b);
  const __mmask16 valid = _mm512_cmplt_epi32_mask(perm, _mm512_set1_epi32(static_cast<int>(a.N)));
  const __m512 bias = a.bias ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, perm, a.bias, 4)
                             : _mm512_setzero_ps();
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    _mm512_mask_i32scatter_ps(a.y + (m0 + r) * a.ldy, valid, perm, _mm512_add_ps(acc[r], bias),
                              4);
}

using EllFn = void (*)(const Args&, int64_t, int64_t);
constexpr EllFn kEll[kMR] = {ell_tile<1>, ell_tile<2>, ell_tile<3>, ell_tile<4>};

void run_ell(const Args& a) {
  const int64_t nblocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    int64_t b0, b1;
    balanced_range(a.ell_off, nblocks, &b0, &b1);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m0 = 0; m0 < a.M; m0 += kMR) kEll[std::min<int64_t>(kMR, a.M - m0) - 1](a, b, m0);
  }
}

constexpr int kMV = 4;  // 64 rows of the transposed activations per pass
constexpr int kLockstep = 4;  // channels stepped together in passes of 1-2 vectors
constexpr int kTileCols = 16;  // channels per tile of outputs (a multiple of kLockstep)

// Passes of NV <= 2 vectors (up to 32 rows): kLockstep channels at a time, nonzero j of each in
// turn while all have one, then each one's rest. Channel by channel, each nonzero's FMAs waited
// for the previous ones (4-cycle latency: at 8 rows 1 FMA per 4 cycles); 4-8 independent
// chains fill the pipe (4096x4096 at 90%, 8 rows: 1.9x faster, Zen 5). Each output still sums
// its own nonzeros in k order (spmm_csr.h).
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
  __m512 acc[kLockstep][NV];
TERSOR_UNROLL
  for (int c = 0; c < kLockstep; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_setzero_ps();
  auto step = [&](int c, int64_t i) {
    const float* xr = xb + int64_t(a.col[i]) * ldt;
    const __m512 w = _mm512_set1_ps(a.val[i]);
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v)
      acc[c][v] = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16 * v), w, acc[c][v]);
  };
  if (count < kLockstep) common = 0;
  for (int64_t j = 0; j < common; ++j)
TERSOR_UNROLL
    for (int c = 0; c < kLockstep; ++c) step(c, beg[c] + j);
  alignas(64) float tmp[16 * NV];
  for (int c = 0; c < count; ++c) {
    for (int64_t j = common; j < len[c]; ++j) step(c, beg[c] + j);
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) _mm512_store_ps(tmp + 16 * v, acc[c][v]);
    const float b = a.bias ? a.bias[n + c] : 0.0f;
    for (int r = 0; r < rows; ++r) tile[r * kTileCols + (n + c - n_tile)] = tmp[r] + b;
  }
}

void flush_tile(float* y, int64_t ldy, const float* tile, int rows, int64_t n_tile,
                int64_t cols) {
  for (int r = 0; r < rows; ++r)
    std::memcpy(y + r * ldy + n_tile, tile + r * kTileCols, size_t(cols) * 4);
}

void run_transposed(const Args& a) {
  const int64_t M16 = round_up(a.M, 16);
  // Row stride one cache line past a multiple of 16 floats: with a power-of-two stride the
  // k rows of xT fall into a few L2 sets and a 1 MiB tile thrashes (measured 10x slower).
  const int64_t ldt = M16 + 16;
  auto xt = alloc_scratch<float>(a.K * ldt);
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
    transpose_rows(a, xt.get(), ldt);
    int64_t n0, n1;
    balanced_range(a.rowptr, a.N, &n0, &n1);
    alignas(64) float tmp[16 * kMV];
    alignas(64) float tile[16 * kMV * kTileCols];  // outputs of kTileCols channels
    if (M16 <= 32) {
      const int rows = static_cast<int>(a.M);
      for (int64_t nt = n0; nt < n1; nt += kTileCols) {
        const int64_t cols = std::min<int64_t>(kTileCols, n1 - nt);
        for (int64_t n = nt; n < nt + cols; n += kLockstep)
          (M16 == 16 ? channels_in_lockstep<1> : channels_in_lockstep<2>)(
              a, xt.get(), ldt, rows, n,
              static_cast<int>(std::min<int64_t>(kLockstep, nt + cols - n)), tile, nt);
        flush_tile(a.y, a.ldy, tile, rows, nt, cols);
      }
    }
    for (int64_t m0 = 0; M16 > 32 && m0 < M16; m0 += 16 * kMV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (M16 - m0) / 16));
      const int rows = static_cast<int>(std::min<int64_t>(16 * kMV, a.M - m0));
      const float* xb = xt.get() + m0;
      for (int64_t nt = n0; nt < n1; nt += kTileCols) {
        const int64_t cols = std::min<int64_t>(kTileCols, n1 - nt);
        for (int64_t n = nt; n < nt + cols; ++n) {
          __m512 acc[kMV];
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v) acc[v] = _mm512_setzero_ps();
          for (int64_t i = a.rowptr[n]; i < a.rowptr[n + 1]; ++i) {
            const __m512 w = _mm512_set1_ps(a.val[i]);
            const float* xr = xb + int64_t(a.col[i]) * ldt;
TERSOR_UNROLL
            for (int v = 0; v < kMV; ++v)
              if (v < nv) acc[v] = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16 * v), w, acc[v]);
          }
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v) _mm512_store_ps(tmp + 16 * v, acc[v]);
          const float b = a.bias ? a.bias[n] : 0.0f;
          for (int r = 0; r < rows; ++r) tile[r * kTileCols + (n - nt)] = tmp[r] + b;
        }
        flush_tile(a.y + m0 * a.ldy, a.ldy, tile, rows, nt, cols);
      }
    }
  }
}

}  // namespace

void run_avx512(const Args& a) {
  if (a.M < kLargeM) return run_ell(a);
  // up to 8 rows the AVX2 kernel's 8-lane vectors are full where ours would be half empty
  // (they read half the bytes of xT: 1.3-1.7x faster at 8 rows, 384x1536 .. 2048x512, Zen 5)
  if (a.M <= 8) return run_avx2(a);
  run_transposed(a);
}

}  // namespace tersor::spmm_csr
