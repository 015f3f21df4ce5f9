// AVX-512 block-sparse GEMMs (rules and layouts in spmm_block.h).
//
// A thread takes whole panels of 16 channels, balanced by kept blocks; within a panel, row tiles
// of up to kMR rows walk the panel's blocks (a panel at K = 4096 and 90% sparsity is ~26 KB, so
// every row tile after the first reads it from L1/L2). Four partial sums per output keep four
// independent FMA / vpdpbusd chains in flight even at M = 1.
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "quant_act/quant_act.h"
#include "spmm_block/spmm_block.h"

namespace tersor::spmm_block {
namespace {

constexpr int kMR = 6;

template <int MR>
void f32_tile(const Args& a, int64_t p, int64_t m0) {
  const float* vals = static_cast<const float*>(a.values);
  __m512 acc[4][MR];
TERSOR_UNROLL
  for (int u = 0; u < 4; ++u)
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[u][r] = _mm512_setzero_ps();
  const float* x = a.x + m0 * a.ldx;
  const int64_t b0 = a.ptr[p], b1 = a.ptr[p + 1];
  auto step = [&](int u, int64_t i) {
    const __m512 v = _mm512_loadu_ps(vals + i * 16);
    const int64_t k = a.kidx[i];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      acc[u][r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * a.ldx + k]), v, acc[u][r]);
  };
  int64_t i = b0;
  for (; i + 4 <= b1; i += 4) {
    step(0, i);
    step(1, i + 1);
    step(2, i + 2);
    step(3, i + 3);
  }
  if (i < b1) step(0, i);
  if (i + 1 < b1) step(1, i + 1);
  if (i + 2 < b1) step(2, i + 2);

  const int64_t n = p * 16;
  const __mmask16 mask = tail_mask16(a.N - n);
  const __m512 bias = bias16(a.bias, n, mask);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]),
                                   _mm512_add_ps(acc[2][r], acc[3][r]));
    _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_add_ps(s, bias));
  }
}

template <int MR>
void w8a8_tile(const Args& a, const uint8_t* aq, int64_t lda, const float* sx, int64_t p,
               int64_t m0) {
  const W8Tile* tiles = static_cast<const W8Tile*>(a.values);
  __m512i acc[4][MR];
TERSOR_UNROLL
  for (int u = 0; u < 4; ++u)
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[u][r] = _mm512_setzero_si512();
  const uint8_t* ap = aq + m0 * lda;
  const int64_t b0 = a.ptr[p], b1 = a.ptr[p + 1];
  auto step = [&](int u, int64_t i) {
    const __m512i w = _mm512_loadu_si512(tiles + i);
    const int64_t k = 4 * int64_t(a.kidx[i]);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap + r * lda + k));
      acc[u][r] = _mm512_dpbusd_epi32(acc[u][r], av, w);
    }
  };
  int64_t i = b0;
  for (; i + 4 <= b1; i += 4) {
    step(0, i);
    step(1, i + 1);
    step(2, i + 2);
    step(3, i + 3);
  }
  if (i < b1) step(0, i);
  if (i + 1 < b1) step(1, i + 1);
  if (i + 2 < b1) step(2, i + 2);

  const int64_t n = p * 16;
  const __mmask16 mask = tail_mask16(a.N - n);
  const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(a.colsum + n), 7);
  const __m512 sw = _mm512_loadu_ps(a.w_scale + n);
  const __m512 bias = bias16(a.bias, n, mask);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(acc[0][r], acc[1][r]),
                                       _mm512_add_epi32(acc[2][r], acc[3][r]));
    const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(s, comp));
    const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(sx[m0 + r]), sw);
    _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_fmadd_ps(v, sc, bias));
  }
}

using F32Fn = void (*)(const Args&, int64_t, int64_t);
constexpr F32Fn kF32[kMR] = {f32_tile<1>, f32_tile<2>, f32_tile<3>,
                             f32_tile<4>, f32_tile<5>, f32_tile<6>};
using W8Fn = void (*)(const Args&, const uint8_t*, int64_t, const float*, int64_t, int64_t);
constexpr W8Fn kW8[kMR] = {w8a8_tile<1>, w8a8_tile<2>, w8a8_tile<3>,
                           w8a8_tile<4>, w8a8_tile<5>, w8a8_tile<6>};

int64_t panels(const Args& a) { return (a.N + 15) / 16; }

// Rows per pass over the panels: a multiple of kMR whose activations (row_bytes each) fill
// about 512 KiB of L2. Walking all rows per panel instead re-read x from L3 for every panel
// (measured 2x slower at M = 512).
int64_t row_block(int64_t row_bytes) {
  const int64_t rows = (512 << 10) / row_bytes;
  return rows < kMR ? kMR : rows / kMR * kMR;
}

}  // namespace

void f32_avx512(const Args& a) {
  const int64_t np = panels(a);
  const int nt = threads_for_work(double(a.M) * a.ptr[np] * 16, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    int64_t p0, p1;
    balanced_range(a.ptr, np, &p0, &p1);
    for_row_blocks(a.M, row_block(a.K * 4), [&](int64_t r0, int64_t r1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t m0 = r0; m0 < r1; m0 += kMR)
          kF32[(r1 - m0 < kMR ? r1 - m0 : kMR) - 1](a, p, m0);
    });
  });
}

void w8a8_avx512(const Args& a) {
  const int64_t np = panels(a);
  const int64_t Kp = round_up(a.K, 4), lda = round_up(Kp, 64) + 64;
  auto aq = alloc_scratch<uint8_t>(a.M * lda);
  auto sx = alloc_scratch<float>(a.M);
  const int nt = threads_for_work(double(a.M) * a.ptr[np] * 64, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m)
      sx.get()[m] = quant_act::quantize_row_avx512(a.x + m * a.ldx, a.K, aq.get() + m * lda, 4,
                                                   0x80, quant_act::amax_floor(a.row_amax, m));
    int64_t p0, p1;
    balanced_range(a.ptr, np, &p0, &p1);
    for_row_blocks(a.M, row_block(lda), [&](int64_t r0, int64_t r1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t m0 = r0; m0 < r1; m0 += kMR)
          kW8[(r1 - m0 < kMR ? r1 - m0 : kMR) - 1](a, aq.get(), lda, sx.get(), p, m0);
    });
  });
}

}  // namespace tersor::spmm_block
