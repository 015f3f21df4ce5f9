// AVX-512 unstructured sparse GEMM (layouts and rules in spmm_csr.h).
//
// Few rows: ELL blocks, vectorized over 16 output channels; each step gathers every lane's own
// x[k] (vgatherdps; x of a row sits in L1) and does one masked FMA.
// Many rows: XNNPACK's way: x is transposed once per call to xT[K][M], and each nonzero w of a
// channel is broadcast against contiguous rows, acc[m..m+63] += w * xT[k][m..m+63]; no index
// decoding in the FMA stream, and the work is the nonzeros only.
#include <immintrin.h>

#include <algorithm>

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
    for (int64_t m0 = 0; m0 < M16; m0 += 16 * kMV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (M16 - m0) / 16));
      const int rows = static_cast<int>(std::min<int64_t>(16 * kMV, a.M - m0));
      const float* xb = xt.get() + m0;
      for (int64_t n = n0; n < n1; ++n) {
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
        for (int r = 0; r < rows; ++r) a.y[(m0 + r) * a.ldy + n] = tmp[r] + b;
      }
    }
  }
}

}  // namespace

void run_avx512(const Args& a) {
  if (a.M >= kLargeM) return run_transposed(a);
  run_ell(a);
}

}  // namespace tersor::spmm_csr
