// AVX2 unstructured sparse GEMM (rules in spmm_csr.h).
//  - One row (a decode step): scalar FMAs reading x itself, which stays in L1 (the transposed
//    kernel loaded a vector of L2-resident xt per nonzero for one useful lane), in the ELL
//    blocks' channel order (perm: channels sorted by nonzero count), 4 channels in lockstep.
//    Each output's sum is one FMA chain (the rules), Zen 2's FMA has a latency of 5, so one
//    channel at a time ran a nonzero per 5 cycles; 4 channels of nearly equal counts keep 4
//    chains busy until the shortest ends, each in its own k order (8 ran out of registers:
//    0.71-0.81x the speed of 4):
//      channels ch[0..4):  j < min(len):  acc[r] = fma(x[col[ch_r, j]], val[ch_r, j], acc[r])
//                          j >= min(len): the same, one channel at a time
//    Zen 2, bare kernel, interleaved against the transposed kernel below at one row: 1.29x
//    (512x2048) to 2.1x (1536x384) faster, 1.64x on 4096x4096 (90% sparse).
//  - More rows: the transposed-activation kernel of spmm_csr_avx512.cpp (8 lanes, 32 rows per
//    pass); AVX2 gathers are too slow to pay at few rows. (Channels in lockstep there lost:
//    0.74-0.92x at 32 rows, where y is written a column per channel and the sorted order
//    scatters those writes.)
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {
namespace {

// One row: channels ch[0..R) in lockstep (above), x read in place.
template <int R>
void channels_one_row(const Args& a, const int32_t* ch) {
  float acc[R];
  const int32_t* col[R];
  const float* val[R];
  int64_t len[R], common = INT64_MAX;
TERSOR_UNROLL
  for (int r = 0; r < R; ++r) {
    col[r] = a.col + a.rowptr[ch[r]];
    val[r] = a.val + a.rowptr[ch[r]];
    len[r] = a.rowptr[ch[r] + 1] - a.rowptr[ch[r]];
    common = std::min(common, len[r]);
    acc[r] = 0.0f;
  }
  for (int64_t j = 0; j < common; ++j) {
TERSOR_UNROLL
    for (int r = 0; r < R; ++r) acc[r] = std::fma(a.x[col[r][j]], val[r][j], acc[r]);
  }
TERSOR_UNROLL
  for (int r = 0; r < R; ++r) {
    for (int64_t j = common; j < len[r]; ++j) acc[r] = std::fma(a.x[col[r][j]], val[r][j], acc[r]);
    a.y[ch[r]] = acc[r] + (a.bias ? a.bias[ch[r]] : 0.0f);
  }
}

// This thread's ELL blocks (16 channels of nearly equal counts, balanced by depth) in groups of
// R channels (group), the rest one at a time (one); the padding lanes of the last block skipped.
template <int R, typename Group, typename One>
void for_channel_groups(const Args& a, Group&& group, One&& one) {
  int64_t b0, b1;
  balanced_range(a.ell_off, round_up(a.N, 16) / 16, &b0, &b1);
  for (int64_t b = b0; b < b1; ++b) {
    const int32_t* ch = a.perm + 16 * b;
    const int live = static_cast<int>(std::min<int64_t>(16, a.N - 16 * b));
    int c = 0;
    for (; c + R <= live; c += R) group(ch + c);
    for (; c < live; ++c) one(ch + c);
  }
}

}  // namespace

void run_avx2(const Args& a) {
  if (a.M == 1) {
    const int nt = threads_for_work(double(a.rowptr[a.N]) * 4, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
    for_channel_groups<4>(
        a, [&](const int32_t* ch) { channels_one_row<4>(a, ch); },
        [&](const int32_t* ch) { channels_one_row<1>(a, ch); });
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
    alignas(32) float tmp[8 * kMV];
    for (int64_t m0 = 0; m0 < M8; m0 += 8 * kMV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (M8 - m0) / 8));
      const int rows = static_cast<int>(std::min<int64_t>(8 * kMV, a.M - m0));
      const float* xb = xt.get() + m0;
      for (int64_t n = n0; n < n1; ++n) {
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
        for (int r = 0; r < rows; ++r) a.y[(m0 + r) * a.ldy + n] = tmp[r] + b;
      }
    }
  }
}

}  // namespace tersor::spmm_csr
