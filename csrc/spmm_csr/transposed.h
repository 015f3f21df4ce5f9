// The many-rows kernel of the unstructured fp32 GEMM (layouts and rules in spmm_csr.h),
// XNNPACK's way, written once over a vector policy V (V::vec of V::kLanes floats: zero, set1,
// load, store, fma) and compiled by spmm_csr_avx2.cpp (8 lanes) and spmm_csr_avx512.cpp (16):
//
//   x is transposed once per call to xT[K][ldt] (rows of M), and each nonzero w of a channel
//   is broadcast against contiguous rows, acc[m..] += w * xT[k][m..]: no index decoding in the
//   FMA stream, and the work is the nonzeros only.
//
// Passes of one or two vectors (rows <= 2 * kLanes): kLockstep channels at a time, nonzero j of
// each in turn while all have one, then each one's rest. Channel by channel, each nonzero's FMAs
// waited for the previous ones (4-cycle latency: at 8 rows one FMA per 4 cycles); 4-8
// independent chains fill the pipe (4096x4096 at 90%, 8 rows: 1.9x faster, Zen 5). Wider passes
// (up to kMV vectors) step two channels together. Either way each output sums its own nonzeros in
// k order: the same bits as the ref.
//
// Outputs go to a tile[r][n - n_tile] of kTileCols channels (bias added), written out to y a
// row of kTileCols at a time: written straight to y, a column per channel touched a cache line
// of y per row and channel (384x1536 at 32 rows: 1.3-1.7x slower).
//
// Internal linkage on purpose (see common/parallel.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {
namespace {

constexpr int kMV = 4;         // vectors of rows per wide pass
constexpr int kLockstep = 4;   // channels stepped together in passes of 1-2 vectors
constexpr int kTileCols = 16;  // channels per tile of outputs (a multiple of kLockstep)

template <class V, int NV, int L = kLockstep>
void channels_in_lockstep(const Args& a, const float* xb, int64_t ldt, int rows, int64_t n,
                          int count, float* tile, int64_t n_tile) {
  int64_t beg[L], len[L], common = INT64_MAX;
  for (int c = 0; c < count; ++c) {
    beg[c] = a.rowptr[n + c];
    len[c] = a.rowptr[n + c + 1] - beg[c];
    common = std::min(common, len[c]);
  }
  typename V::vec acc[L][NV];
TERSOR_UNROLL
  for (int c = 0; c < L; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) acc[c][v] = V::zero();
  auto step = [&](int c, int64_t i) {
    const float* xr = xb + int64_t(a.col[i]) * ldt;
    const auto w = V::set1(a.val[i]);
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) acc[c][v] = V::fma(V::load(xr + V::kLanes * v), w, acc[c][v]);
  };
  if (count < L) common = 0;
  for (int64_t j = 0; j < common; ++j)
TERSOR_UNROLL
    for (int c = 0; c < L; ++c) step(c, beg[c] + j);
  alignas(64) float tmp[V::kLanes * NV];
  for (int c = 0; c < count; ++c) {
    for (int64_t j = common; j < len[c]; ++j) step(c, beg[c] + j);
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) V::store(tmp + V::kLanes * v, acc[c][v]);
    const float b = a.bias ? a.bias[n + c] : 0.0f;
    for (int r = 0; r < rows; ++r) tile[r * kTileCols + (n + c - n_tile)] = tmp[r] + b;
  }
}

// The channels [n, n1) of a tile over a pass of NV <= kMV vectors, two in lockstep (2 x NV FMA
// chains: one channel's NV = 4 chains waited on the FMA latency, 384x1536 at 128 rows 1.3x
// slower).
template <class V, int NV>
void channels_wide(const Args& a, const float* xb, int64_t ldt, int rows, int64_t n,
                   int64_t n1, float* tile, int64_t n_tile) {
  for (; n < n1; n += 2)
    channels_in_lockstep<V, NV, 2>(a, xb, ldt, rows, n, n + 1 < n1 ? 2 : 1, tile, n_tile);
}

// xT's layout (the caller's choice, see its files): ld = 0, pass-major (transpose_passes: one
// K x pass block per pass of rows); else one xT [K][ld], ld >= round_up(M, V::kLanes), every
// pass a column range of it.
template <class V>
void run_transposed(const Args& a, int64_t ld) {
  constexpr int64_t L = V::kLanes;
  const int64_t Mp = round_up(a.M, L);
  // passes of at most kMV vectors of rows (1-2 vectors: the lockstep pass)
  const int64_t pass = std::min<int64_t>(Mp, L * kMV);
  const bool pass_major = ld == 0;
  const int64_t ldt = pass_major ? pass : ld;          // floats from one k row to the next
  const int64_t block = pass_major ? a.K * pass : pass;  // from one pass to the next
  auto xt = alloc_scratch<float>(a.K * (pass_major ? round_up(Mp, pass) : ld));
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    if (pass_major)
      transpose_passes(a, xt.get(), pass);
    else
      transpose_rows(a, xt.get(), ld);
    int64_t n0, n1;
    balanced_range(a.rowptr, a.N, &n0, &n1);
    alignas(64) float tile[L * kMV * kTileCols];
    for (int64_t m0 = 0; m0 < Mp; m0 += pass) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (Mp - m0) / L));
      const int rows = static_cast<int>(std::min<int64_t>(pass, a.M - m0));
      const float* xb = xt.get() + (m0 / pass) * block;
      for (int64_t n_tile = n0; n_tile < n1; n_tile += kTileCols) {
        const int64_t cols = std::min<int64_t>(kTileCols, n1 - n_tile);
        if (Mp <= 2 * L) {
          for (int64_t n = n_tile; n < n_tile + cols; n += kLockstep)
            (Mp == L ? channels_in_lockstep<V, 1> : channels_in_lockstep<V, 2>)(
                a, xb, ldt, rows, n,
                static_cast<int>(std::min<int64_t>(kLockstep, n_tile + cols - n)), tile,
                n_tile);
        } else {
          constexpr decltype(&channels_wide<V, 1>) kWide[kMV] = {
              channels_wide<V, 1>, channels_wide<V, 2>, channels_wide<V, 3>, channels_wide<V, 4>};
          kWide[nv - 1](a, xb, ldt, rows, n_tile, n_tile + cols, tile, n_tile);
        }
        // the tile out, a row of cols outputs at a time (a constant size for whole tiles: a
        // variable one took a byte loop, a quarter of the time at 384x1536)
        if (cols == kTileCols)
          for (int r = 0; r < rows; ++r)
            std::memcpy(a.y + (m0 + r) * a.ldy + n_tile, tile + r * kTileCols, kTileCols * 4);
        else
          for (int r = 0; r < rows; ++r)
            std::memcpy(a.y + (m0 + r) * a.ldy + n_tile, tile + r * kTileCols, size_t(cols) * 4);
      }
    }
  });
}

}  // namespace
}  // namespace tersor::spmm_csr
