// AVX-512 2:4 sparse GEMM, vectorized over 16 output channels (rules in spmm_24.h).
// Per 16 k: one load of x per row and one 64-byte load of 4 groups' positions; per group the
// two index vectors 4j + p0, 4j + p1 feed vpermps, which hands every lane its own x.
// Register tile: MR rows x 16 columns.
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {
namespace {

constexpr int kMR = 6;

template <int MR, int NB>
void tile(const Args& a, int64_t nb0, int64_t m0) {
  const int64_t G = groups(a.K), G4 = meta_groups(a.K);
  const __m512i three = _mm512_set1_epi32(3);
  __m512 acc[NB][MR];
TERSOR_UNROLL
  for (int c = 0; c < NB; ++c)
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[c][r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 4) {
    const int64_t left = a.K - 4 * g0;
    const __mmask16 km = tail_mask16(left);
    __m512 xv[MR];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) xv[r] = _mm512_maskz_loadu_ps(km, a.x + (m0 + r) * a.ldx + 4 * g0);
    const int gn = G - g0 < 4 ? static_cast<int>(G - g0) : 4;
TERSOR_UNROLL
    for (int c = 0; c < NB; ++c) {
      const S24Group* grp = reinterpret_cast<const S24Group*>(a.values) + (nb0 + c) * G;
      const __m512i mb = _mm512_loadu_si512(a.meta + (nb0 + c) * G4 * 16 + g0 * 16);
      for (int j = 0; j < gn; ++j) {
        __m128i bytes;
        switch (j) {  // extract needs an immediate
          case 0: bytes = _mm512_extracti32x4_epi32(mb, 0); break;
          case 1: bytes = _mm512_extracti32x4_epi32(mb, 1); break;
          case 2: bytes = _mm512_extracti32x4_epi32(mb, 2); break;
          default: bytes = _mm512_extracti32x4_epi32(mb, 3); break;
        }
        const __m512i p = _mm512_cvtepu8_epi32(bytes);
        const __m512i base = _mm512_set1_epi32(4 * j);
        const __m512i i0 = _mm512_add_epi32(_mm512_and_si512(p, three), base);
        const __m512i i1 = _mm512_add_epi32(_mm512_srli_epi32(p, 2), base);
        const __m512 v0 = _mm512_loadu_ps(grp[g0 + j].v[0]);
        const __m512 v1 = _mm512_loadu_ps(grp[g0 + j].v[1]);
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          acc[c][r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(i0, xv[r]), v0, acc[c][r]);
          acc[c][r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(i1, xv[r]), v1, acc[c][r]);
        }
      }
    }
  }
TERSOR_UNROLL
  for (int c = 0; c < NB; ++c) {
    const int64_t n = (nb0 + c) * 16, left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_add_ps(acc[c][r], b));
  }
}

// Two column blocks per tile for 1-2 rows (two weight streams, two FMA chains each), one for
// larger row tiles (register budget).
using TileFn = void (*)(const Args&, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1, 1>, tile<2, 1>, tile<3, 1>, tile<4, 1>, tile<5, 1>,
                                tile<6, 1>};
constexpr TileFn kWide[2] = {tile<1, 2>, tile<2, 2>};

}  // namespace

void run_avx512(const Args& a) {
  const int64_t n_blocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
  const bool wide = a.M <= 2;
#pragma omp parallel num_threads(::tersor::team(nt))
  for_each_tile(n_blocks, wide ? 2 : 1, a.M, kMR, [&](int64_t nb, int nbs, int64_t m0, int mr) {
    (wide && nbs == 2 ? kWide[mr - 1] : kTiles[mr - 1])(a, nb, m0);
  });
}

}  // namespace tersor::spmm_24
