// AVX-512 unstructured sparse int8 GEMM (rules in spmm_csr.h, W8A8Args): the fp32 kernels'
// two shapes (ELL lane gathers for few rows, transposed activations for many) on integer codes
// held in fp32, with the partial sums moved to int32 every kExactChunk nonzeros.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "quant_act/quant_act.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {
namespace {

// Rows of x -> integer codes as fp32 (xq [M][ldq]) and their scales. Work-shared.
void quantize_codes(const W8A8Args& a, uint8_t* q8, int64_t ldq, float* xq, float* sx) {
#pragma omp for schedule(static)
  for (int64_t m = 0; m < a.M; ++m) {
    uint8_t* q = q8 + m * ldq;
    const int64_t done = round_up(a.K, 4);  // quantize_row writes the codes up to here
    std::memset(q + done, 0, ldq - done);
    sx[m] = quant_act::quantize_row_avx512(a.x + m * a.ldx, a.K, q, 4, 0,
                                                   quant_act::amax_floor(a.row_amax, m));
    for (int64_t k = 0; k < ldq; k += 16)
      _mm512_storeu_ps(xq + m * ldq + k, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                             _mm_loadu_si128(reinterpret_cast<__m128i*>(q + k)))));
  }
}

constexpr int kMR = 4;

template <int MR>
void ell_tile(const W8A8Args& a, const float* xq, int64_t ldq, const float* sx, int64_t b,
              int64_t m0) {
  const __m512i cnt = _mm512_cvtepu16_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.ell_cnt + 16 * b)));
  __m512 accf[MR];
  __m512i acci[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) accf[r] = _mm512_setzero_ps(), acci[r] = _mm512_setzero_si512();
  const int64_t s0 = a.ell_off[b], depth = a.ell_off[b + 1] - s0;
  for (int64_t j0 = 0; j0 < depth; j0 += kExactChunk) {
    const int64_t j1 = std::min(depth, j0 + kExactChunk);
    for (int64_t j = j0; j < j1; ++j) {
      const __mmask16 live = _mm512_cmpgt_epi32_mask(cnt, _mm512_set1_epi32(int(j)));
      const __m512i idx = _mm512_cvtepu16_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.ell_col + (s0 + j) * 16)));
      const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.ell_val + (s0 + j) * 16))));
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 xg =
            _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, idx, xq + (m0 + r) * ldq, 4);
        accf[r] = _mm512_mask3_fmadd_ps(xg, w, accf[r], live);
      }
    }
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      acci[r] = _mm512_add_epi32(acci[r], _mm512_cvtps_epi32(accf[r]));  // exact integers
      accf[r] = _mm512_setzero_ps();
    }
  }
  const __m512i perm = _mm512_loadu_si512(a.perm + 16 * b);
  const __mmask16 valid = _mm512_cmplt_epi32_mask(perm, _mm512_set1_epi32(int(a.N)));
  const __m512 sw = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, perm, a.w_scale, 4);
  const __m512 bias = a.bias ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, perm, a.bias, 4)
                             : _mm512_setzero_ps();
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    const __m512 s = _mm512_mul_ps(_mm512_set1_ps(sx[m0 + r]), sw);
    _mm512_mask_i32scatter_ps(a.y + (m0 + r) * a.ldy, valid, perm,
                              _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[r]), s, bias), 4);
  }
}

using EllFn = void (*)(const W8A8Args&, const float*, int64_t, const float*, int64_t, int64_t);
constexpr EllFn kEll[kMR] = {ell_tile<1>, ell_tile<2>, ell_tile<3>, ell_tile<4>};

constexpr int kMV = 4;  // 64 rows of the transposed codes per pass

void run_transposed(const W8A8Args& a, int64_t ldq, uint8_t* q8, float* xq, float* sx) {
  const int64_t M16 = round_up(a.M, 16), ldt = M16 + 16;  // off a power of two (spmm_csr)
  auto xt = alloc_scratch<float>(a.K * ldt);
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    quantize_codes(a, q8, ldq, xq, sx);  // ends in a barrier
    Args t{};
    t.x = xq, t.M = a.M, t.K = a.K, t.ldx = ldq;
    transpose_rows(t, xt.get(), ldt);
    int64_t n0, n1;
    balanced_range(a.rowptr, a.N, &n0, &n1);
    alignas(64) int32_t tmp[16 * kMV];
    for (int64_t m0 = 0; m0 < M16; m0 += 16 * kMV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMV, (M16 - m0) / 16));
      const int rows = static_cast<int>(std::min<int64_t>(16 * kMV, a.M - m0));
      const float* xb = xt.get() + m0;
      for (int64_t n = n0; n < n1; ++n) {
        __m512 accf[kMV];
        __m512i acci[kMV];
TERSOR_UNROLL
        for (int v = 0; v < kMV; ++v) accf[v] = _mm512_setzero_ps(), acci[v] = _mm512_setzero_si512();
        for (int64_t i0 = a.rowptr[n]; i0 < a.rowptr[n + 1]; i0 += kExactChunk) {
          const int64_t i1 = std::min(a.rowptr[n + 1], i0 + kExactChunk);
          for (int64_t i = i0; i < i1; ++i) {
            const __m512 w = _mm512_set1_ps(static_cast<float>(a.val[i]));
            const float* xr = xb + int64_t(a.col[i]) * ldt;
TERSOR_UNROLL
            for (int v = 0; v < kMV; ++v)
              if (v < nv) accf[v] = _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16 * v), w, accf[v]);
          }
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v) {
            acci[v] = _mm512_add_epi32(acci[v], _mm512_cvtps_epi32(accf[v]));
            accf[v] = _mm512_setzero_ps();
          }
        }
TERSOR_UNROLL
        for (int v = 0; v < kMV; ++v) _mm512_store_si512(tmp + 16 * v, acci[v]);
        const float b = a.bias ? a.bias[n] : 0.0f;
        for (int r = 0; r < rows; ++r)
          a.y[(m0 + r) * a.ldy + n] =
              std::fma(static_cast<float>(tmp[r]), sx[m0 + r] * a.w_scale[n], b);
      }
    }
  });
}

}  // namespace

void w8a8_avx512(const W8A8Args& a) {
  const int64_t ldq = round_up(a.K, 16);
  auto q8 = alloc_scratch<uint8_t>(a.M * ldq);
  auto xq = alloc_scratch<float>(a.M * ldq);
  auto sx = alloc_scratch<float>(a.M);
  if (a.M >= kLargeM) return run_transposed(a, ldq, q8.get(), xq.get(), sx.get());
  const int64_t nblocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    quantize_codes(a, q8.get(), ldq, xq.get(), sx.get());
    int64_t b0, b1;
    balanced_range(a.ell_off, nblocks, &b0, &b1);
    for (int64_t b = b0; b < b1; ++b)
      kEll[a.M - 1](a, xq.get(), ldq, sx.get(), b, 0);
  });
}

}  // namespace tersor::spmm_csr
