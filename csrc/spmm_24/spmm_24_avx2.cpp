// AVX2 2:4 sparse GEMM: the vpermps selection of spmm_24_avx512.cpp on 8 lanes; an 8-float x
// vector covers 2 groups. Register tile: 3 rows x 16 columns (two ymm halves).
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {
namespace {

constexpr int kMR = 3;

template <int MR>
void tile(const Args& a, int64_t nb, int64_t m0) {
  const int64_t G = groups(a.K), G4 = meta_groups(a.K);
  const S24Group* grp = reinterpret_cast<const S24Group*>(a.values) + nb * G;
  const uint8_t* meta = a.meta + nb * G4 * 16;
  const __m256i three = _mm256_set1_epi32(3);
  __m256 acc[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 2) {
    const int64_t left = a.K - 4 * g0;
    const __m256i km = tail_mask8(left);
    __m256 xv[MR];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) xv[r] = _mm256_maskload_ps(a.x + (m0 + r) * a.ldx + 4 * g0, km);
    const int gn = G - g0 < 2 ? 1 : 2;
    for (int j = 0; j < gn; ++j) {
      const __m256i base = _mm256_set1_epi32(4 * j);
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256i p = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(meta + (g0 + j) * 16 + 8 * h)));
        const __m256i i0 = _mm256_add_epi32(_mm256_and_si256(p, three), base);
        const __m256i i1 = _mm256_add_epi32(_mm256_srli_epi32(p, 2), base);
        const __m256 v0 = _mm256_loadu_ps(grp[g0 + j].v[0] + 8 * h);
        const __m256 v1 = _mm256_loadu_ps(grp[g0 + j].v[1] + 8 * h);
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          acc[r][h] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(xv[r], i0), v0, acc[r][h]);
          acc[r][h] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(xv[r], i1), v1, acc[r][h]);
        }
      }
    }
  }
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n = nb * 16 + 8 * h;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __m256i mask = tail_mask8(left);
    const __m256 b = bias8(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      maskstore8(a.y + (m0 + r) * a.ldy + n, mask, _mm256_add_ps(acc[r][h], b));
  }
}

using TileFn = void (*)(const Args&, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>, tile<3>};

}  // namespace

void run_avx2(const Args& a) {
  const int64_t n_blocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
    kTiles[mr - 1](a, nb, m0);
  });
}

}  // namespace tersor::spmm_24
