// AVX2 unstructured sparse int8 GEMM (rules in spmm_csr.h, W8A8Args): the fp32 kernels' two
// shapes (spmm_csr_avx2.cpp: ELL lane gathers for 1-2 rows, transposed activations for more) on
// integer codes held in fp32, the partial sums moved to int32 every kExactChunk nonzeros.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "quant_act/quant_act.h"
#include "spmm_csr/ell_avx2.h"
#include "spmm_csr/spmm_csr.h"

namespace tersor::spmm_csr {

namespace {

// More rows: the codes transposed pass-major (transpose_passes: a K x pass block per pass of up
// to 32 rows), each nonzero broadcast against the pass's rows (spmm_csr/transposed.h at 8
// lanes). Work-shared: call inside the parallel region.
constexpr int kMV = 4;

int64_t pass_rows(int64_t M) { return std::min<int64_t>(round_up(M, 8), 8 * kMV); }

void transposed_w8a8(const W8A8Args& a, const float* xq, int64_t ldq, const float* sx,
                     float* xt) {
  const int64_t M8 = round_up(a.M, 8), pass = pass_rows(a.M);
  Args t{};
  t.x = xq, t.M = a.M, t.K = a.K, t.ldx = ldq;
  transpose_passes(t, xt, pass);
  int64_t n0, n1;
  balanced_range(a.rowptr, a.N, &n0, &n1);
  alignas(32) int32_t tmp[8 * kMV];
  for (int64_t m0 = 0; m0 < M8; m0 += pass) {
    const int nv = static_cast<int>(std::min<int64_t>(kMV, (M8 - m0) / 8));
    const int rows = static_cast<int>(std::min<int64_t>(pass, a.M - m0));
    const float* xb = xt + (m0 / pass) * a.K * pass;
    for (int64_t n = n0; n < n1; ++n) {
      __m256 accf[kMV];
      __m256i acci[kMV];
TERSOR_UNROLL
      for (int v = 0; v < kMV; ++v)
        accf[v] = _mm256_setzero_ps(), acci[v] = _mm256_setzero_si256();
      for (int64_t i0 = a.rowptr[n]; i0 < a.rowptr[n + 1]; i0 += kExactChunk) {
        const int64_t i1 = std::min(a.rowptr[n + 1], i0 + kExactChunk);
        for (int64_t i = i0; i < i1; ++i) {
          const __m256 w = _mm256_set1_ps(static_cast<float>(a.val[i]));
          const float* xr = xb + int64_t(a.col[i]) * pass;
TERSOR_UNROLL
          for (int v = 0; v < kMV; ++v)
            if (v < nv) accf[v] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8 * v), w, accf[v]);
        }
TERSOR_UNROLL
        for (int v = 0; v < kMV; ++v) {
          acci[v] = _mm256_add_epi32(acci[v], _mm256_cvtps_epi32(accf[v]));
          accf[v] = _mm256_setzero_ps();
        }
      }
TERSOR_UNROLL
      for (int v = 0; v < kMV; ++v)
        _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8 * v), acci[v]);
      const float b = a.bias ? a.bias[n] : 0.0f;
      for (int r = 0; r < rows; ++r)
        a.y[(m0 + r) * a.ldy + n] =
            std::fma(static_cast<float>(tmp[r]), sx[m0 + r] * a.w_scale[n], b);
    }
  }
}

}  // namespace

void w8a8_avx2(const W8A8Args& a) {
  const int64_t ldq = round_up(a.K, 8);
  auto q8 = alloc_scratch<uint8_t>(a.M * ldq);
  auto xq = alloc_scratch<float>(a.M * ldq);
  auto sx = alloc_scratch<float>(a.M);
  auto xt = alloc_scratch<float>(
      a.M <= ell_avx2::kMaxRows ? 0 : a.K * round_up(a.M, pass_rows(a.M)));
  const int nt = threads_for_work(double(a.M) * a.rowptr[a.N] * 4, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* q = q8.get() + m * ldq;
      const int64_t done = round_up(a.K, 4);
      std::memset(q + done, 0, ldq - done);
      sx.get()[m] = quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, q, 4, 0,
                                                 quant_act::amax_floor(a.row_amax, m));
      for (int64_t k = 0; k < ldq; k += 8)
        _mm256_storeu_ps(xq.get() + m * ldq + k,
                         _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                             _mm_loadl_epi64(reinterpret_cast<__m128i*>(q + k)))));
    }
    if (a.M <= ell_avx2::kMaxRows) {  // after the barrier that ends the quantization loop
      const ell_avx2::Ell ell{a.ell_cnt, a.ell_off, a.ell_col, a.perm, a.N};
      ell_avx2::for_blocks(ell, a.M, [&](int64_t b, auto shape) {
        constexpr int MR = decltype(shape)::kRows, NB = decltype(shape)::kBlocks;
        __m256i acc[MR][NB][2] = {};  // the exact integer sums
        ell_avx2::walk<MR, NB>(
            ell, b, xq.get(), ldq, kExactChunk,
            [&](int64_t e) {
              return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                  _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.ell_val + e))));
            },
            [&](__m256(&part)[MR][NB][2]) {  // codes in fp32: exact below 2^24
TERSOR_UNROLL
              for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
                for (int i = 0; i < NB; ++i)
TERSOR_UNROLL
                  for (int h = 0; h < 2; ++h) {
                    acc[r][i][h] =
                        _mm256_add_epi32(acc[r][i][h], _mm256_cvtps_epi32(part[r][i][h]));
                    part[r][i][h] = _mm256_setzero_ps();
                  }
            });
        ell_avx2::scatter<int32_t>(ell, b, acc, [&](int r, int32_t n, int32_t v) {
          a.y[r * a.ldy + n] = std::fma(static_cast<float>(v), sx.get()[r] * a.w_scale[n],
                                        a.bias ? a.bias[n] : 0.0f);
        });
      });
    } else {
      transposed_w8a8(a, xq.get(), ldq, sx.get(), xt.get());
    }
  });
}

}  // namespace tersor::spmm_csr
