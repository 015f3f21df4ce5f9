// AVX2 block-sparse GEMMs (rules and layouts in spmm_block.h): the AVX-512 structure with a
// 16-channel panel done as two 8-lane halves (16 ymm registers do not hold four partial sums
// of 16 channels for more than one row); int8 uses gemm_w8a8_avx2's sign trick.
#include <immintrin.h>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "quant_act/quant_act.h"
#include "spmm_block/spmm_block.h"

namespace tersor::spmm_block {
namespace {

constexpr int kMR = 3;

template <int MR>
void f32_tile(const Args& a, int64_t p, int64_t m0, int h) {
  const float* vals = static_cast<const float*>(a.values) + 8 * h;
  __m256 acc[4][MR];
TERSOR_UNROLL
  for (int u = 0; u < 4; ++u)
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[u][r] = _mm256_setzero_ps();
  const float* x = a.x + m0 * a.ldx;
  const int64_t b0 = a.ptr[p], b1 = a.ptr[p + 1];
  auto step = [&](int u, int64_t i) {
    const __m256 v = _mm256_loadu_ps(vals + i * 16);
    const int64_t k = a.kidx[i];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      acc[u][r] = _mm256_fmadd_ps(_mm256_set1_ps(x[r * a.ldx + k]), v, acc[u][r]);
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

  const int64_t n = p * 16 + 8 * h;
  const __m256i mask = tail_mask8(a.N - n);
  const __m256 bias = bias8(a.bias, n, mask);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) {
    const __m256 s = _mm256_add_ps(_mm256_add_ps(acc[0][r], acc[1][r]),
                                   _mm256_add_ps(acc[2][r], acc[3][r]));
    maskstore8(a.y + (m0 + r) * a.ldy + n, mask, _mm256_add_ps(s, bias));
  }
}

template <int MR>
void w8a8_tile(const Args& a, const uint8_t* aq, int64_t lda, const float* sx, int64_t p,
               int64_t m0) {
  const W8Tile* tiles = static_cast<const W8Tile*>(a.values);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t i = a.ptr[p]; i < a.ptr[p + 1]; ++i) {
    const int8_t* wp = tiles[i].q[0];
    const __m256i w[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32))};
    const int64_t k = 4 * int64_t(a.kidx[i]);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256i av =
          _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(aq + (m0 + r) * lda + k));
      const __m256i aa = _mm256_abs_epi8(av);
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h)
        acc[r][h] = _mm256_add_epi32(
            acc[r][h], _mm256_madd_epi16(_mm256_maddubs_epi16(aa, _mm256_sign_epi8(w[h], av)),
                                         ones));
    }
  }
  store_int8_tile<MR>(acc, sx + m0, a.w_scale, a.bias, a.N, a.y + m0 * a.ldy, a.ldy,
                      p * 16);
}

// Rows per pass over the panels (see row_block in the AVX-512 file).
int64_t row_block(int64_t row_bytes) {
  const int64_t rows = (512 << 10) / row_bytes;
  return rows < kMR ? kMR : rows / kMR * kMR;
}

using F32Fn = void (*)(const Args&, int64_t, int64_t, int);
constexpr F32Fn kF32[kMR] = {f32_tile<1>, f32_tile<2>, f32_tile<3>};
using W8Fn = void (*)(const Args&, const uint8_t*, int64_t, const float*, int64_t, int64_t);
constexpr W8Fn kW8[kMR] = {w8a8_tile<1>, w8a8_tile<2>, w8a8_tile<3>};

}  // namespace

void f32_avx2(const Args& a) {
  const int64_t np = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.ptr[np] * 16, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    int64_t p0, p1;
    balanced_range(a.ptr, np, &p0, &p1);
    for_row_blocks(a.M, row_block(a.K * 4), [&](int64_t r0, int64_t r1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int h = 0; h < 2 && p * 16 + 8 * h < a.N; ++h)
          for (int64_t m0 = r0; m0 < r1; m0 += kMR)
            kF32[(r1 - m0 < kMR ? r1 - m0 : kMR) - 1](a, p, m0, h);
    });
  });
}

void w8a8_avx2(const Args& a) {
  const int64_t np = (a.N + 15) / 16;
  const int64_t Kp = round_up(a.K, 4), lda = round_up(Kp, 64) + 64;
  auto aq = alloc_scratch<uint8_t>(a.M * lda);
  auto sx = alloc_scratch<float>(a.M);
  const int nt = threads_for_work(double(a.M) * a.ptr[np] * 64, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m)
      sx.get()[m] = quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, aq.get() + m * lda, 4, 0,
                                                 quant_act::amax_floor(a.row_amax, m));
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
