// AVX-512 unstructured sparse GEMM (layouts and rules in spmm_csr.h).
//
// Few rows: ELL blocks, vectorized over 16 output channels; each step gathers every lane's own
// x[k] (vgatherdps; x of a row sits in L1) and does one masked FMA.
// Many rows: spmm_csr/transposed.h (from 9 rows; 4-8 rows take the AVX2 kernel's full 8-lane
// vectors).
#include <immintrin.h>

#include <algorithm>

#include "common/formats.h"
#include "common/parallel.h"
#include "spmm_csr/spmm_csr.h"
#include "spmm_csr/transposed.h"

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
  parallel_team(::tersor::team(nt), [&] {
    int64_t b0, b1;
    balanced_range(a.ell_off, nblocks, &b0, &b1);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m0 = 0; m0 < a.M; m0 += kMR) kEll[std::min<int64_t>(kMR, a.M - m0) - 1](a, b, m0);
  });
}

struct Avx512Vec {
  using vec = __m512;
  static constexpr int kLanes = 16;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec set1(float x) { return _mm512_set1_ps(x); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, vec v) { _mm512_store_ps(p, v); }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
};

}  // namespace

void run_avx512(const Args& a) {
  if (a.M < kLargeM) return run_ell(a);
  // up to 8 rows the AVX2 kernel's 8-lane vectors are full where ours would be half empty
  // (they read half the bytes of xT: 1.3-1.7x faster at 8 rows, 384x1536 .. 2048x512, Zen 5)
  if (a.M <= 8) return run_avx2(a);
  // xT's row stride one cache line past a multiple of 16 floats: with a power-of-two stride the
  // k rows of xT fall into a few L2 sets and a 1 MiB tile thrashes (measured 10x slower)
  run_transposed<Avx512Vec>(a, round_up(a.M, 16) + 16);
}

}  // namespace tersor::spmm_csr
