// AVX2 W8A8 GEMM (CPUs without VNNI).
//
// vpmaddubsw (u8 x s8 -> saturating int16 pair sums) would overflow with u8 = q + 128, so this
// path keeps activations signed and uses the sign trick (llama.cpp):
//     |a| * sign(w, a) == a * w,   |a|, |w| <= 127  =>  pair sums <= 2 * 127 * 127 < 32767
// then vpmaddwd with ones widens the pairs to int32. No colsum compensation is needed.
//
// A panel: apanel[M/4][Kp/4][4 rows][4 k] s8. Register tile: 4 rows x 16 columns (2 ymm each).
#include <immintrin.h>


#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w8a8 {
namespace {

constexpr int kMR = 4;

template <int MR>
void tile(const uint8_t* apanel, const int8_t* wblock, int64_t k4n, const float* sx,
          const PackedW8LinearArgs& a, int64_t m0, int64_t n0) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const uint8_t* ap = apanel;
  const int8_t* wp = wblock;
  for (int64_t k4 = 0; k4 < k4n; ++k4, ap += 4 * kMR, wp += 64) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32));
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * r));
      const __m256i aa = _mm256_abs_epi8(av);
      acc[r][0] = _mm256_add_epi32(
          acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(aa, _mm256_sign_epi8(w0, av)), ones));
      acc[r][1] = _mm256_add_epi32(
          acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(aa, _mm256_sign_epi8(w1, av)), ones));
    }
  }
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n = n0 + 8 * h;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __m256i mask = tail_mask8(left);
    const __m256 sw = _mm256_loadu_ps(a.w_scale + n);
    const __m256 b = bias8(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 v = _mm256_cvtepi32_ps(acc[r][h]);
      const __m256 s = _mm256_mul_ps(_mm256_set1_ps(sx[r]), sw);
      maskstore8(a.y + (m0 + r) * a.ldy + n, mask, _mm256_fmadd_ps(v, s, b));
    }
  }
}

using TileFn = void (*)(const uint8_t*, const int8_t*, int64_t, const float*,
                        const PackedW8LinearArgs&, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>, tile<3>, tile<4>};

}  // namespace

void run_rows_avx2(const PackedW8LinearArgs& a, const RowFill& fill) {
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  const int64_t panel_bytes = Kp * kMR;
  auto apanel = alloc_scratch<uint8_t>(m_panels * panel_bytes);
  auto sx = alloc_scratch<float>(m_panels * kMR);

  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* dst = apanel.get() + (m / kMR) * panel_bytes + (m % kMR) * 4;
      sx.get()[m] = fill(m, dst, 4 * kMR, 0);
    }
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t blk, int, int64_t m0, int mr) {
      kTiles[mr - 1](apanel.get() + (m0 / kMR) * panel_bytes, a.w + blk * Kp * 16, k4n,
                     sx.get() + m0, a, m0, blk * 16);
    });
  }
}

void run_avx2(const PackedW8LinearArgs& a) {
  run_rows_avx2(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, dst, gs, xm);
  });
}

}  // namespace tersor::gemm_w8a8
