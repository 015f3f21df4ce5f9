// AVX2 2:4 sparse GEMM: the vpermps selection of spmm_24_avx512.cpp on 8 lanes; an 8-float x
// vector covers 2 groups. Register tile: 3 rows x 16 columns (two ymm halves). From 16 rows: the
// dense form over slabs (below).
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "common/slab_gemm_avx2.h"
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

// ---- Rows in batches: the dense form over slabs (common/slab_gemm_avx2.h) --------------------
//
// The slab kernel runs every k of a group: the kept pair, and the two pruned positions as
// fma(x, +0, acc). For finite x those leave acc unchanged (x * 0 is a zero, and acc, which
// starts at +0, is never -0), so each output gets the rules' result bit for bit. A non-finite
// x at a pruned position would give NaN where the rules skip it: a call whose x holds any
// non-finite value takes the tile above. It does dense work on an L1-resident panel, yet the 3 x
// 16 tile keeps only 6 FMA chains and pays two vpermps per FMA pair: Zen 2, 2 threads, times
// against torch's dense fp32 GEMM on the pruned weight (4096x4096 / 384x1536):
//   rows        8           16          32          128         512
//   tile        3.73/1.41x  3.40/1.13x  2.27/0.95x  1.22/0.74x  0.63/0.73x
//   slabs       3.05/1.50x  3.55/1.47x  2.70/1.35x  1.69/1.22x  1.40/1.29x
// (the dense path of ops/dense_path.py, decompressed panels into torch's GEMM: 0.42-1.06x).
constexpr int64_t kSlabMinRows = 16;

// Group positions of block nb, k in [k0, k1) (k0 a multiple of 4) -> dense panel rows.
void widen_slab(const Args& a, int64_t nb, int64_t k0, int64_t k1, float* panel) {
  const int64_t G = groups(a.K), G4 = meta_groups(a.K);
  const S24Group* grp = reinterpret_cast<const S24Group*>(a.values) + nb * G;
  const uint8_t* meta = a.meta + nb * G4 * 16;
  const __m256i three = _mm256_set1_epi32(3);
  for (int64_t g = k0 / 4; g < (k1 + 3) / 4; ++g) {
    float* out = panel + (4 * g - k0) * 16;
TERSOR_UNROLL
    for (int h = 0; h < 2; ++h) {
      const __m256i p = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(meta + g * 16 + 8 * h)));
      const __m256i p0 = _mm256_and_si256(p, three), p1 = _mm256_srli_epi32(p, 2);
      const __m256 v0 = _mm256_loadu_ps(grp[g].v[0] + 8 * h);
      const __m256 v1 = _mm256_loadu_ps(grp[g].v[1] + 8 * h);
TERSOR_UNROLL
      for (int j = 0; j < 4; ++j) {
        const __m256i jv = _mm256_set1_epi32(j);
        const __m256 at0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(p0, jv));
        const __m256 at1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(p1, jv));
        _mm256_store_ps(out + 16 * j + 8 * h,
                        _mm256_or_ps(_mm256_and_ps(at0, v0), _mm256_and_ps(at1, v1)));
      }
    }
  }
}

// Whether x holds no Inf or NaN (an exponent field of all ones).
bool all_finite(const Args& a) {
  const __m256i exp = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  for (int64_t m = 0; m < a.M; ++m) {
    const float* x = a.x + m * a.ldx;
    for (int64_t k = 0; k < a.K; k += 8) {
      const __m256i v = _mm256_castps_si256(_mm256_maskload_ps(x + k, tail_mask8(a.K - k)));
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(v, exp), exp));
    }
  }
  return _mm256_testz_si256(bad, bad);
}

}  // namespace

void run_avx2(const Args& a) {
  const int64_t n_blocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
  if (a.M >= kSlabMinRows && all_finite(a)) {
    slab_avx2::run(
        a.x, a.ldx, a.M, a.K, n_blocks, nt,
        [&](int64_t nb, int64_t k0, int64_t k1, float* p) { widen_slab(a, nb, k0, k1, p); },
        [&](int64_t nb, int64_t r0, int64_t r1, const float* acc) {
          slab_avx2::store_plus_bias(a.y, a.ldy, a.N, a.bias, nb, r0, r1, acc);
        });
    return;
  }
#pragma omp parallel num_threads(::tersor::team(nt))
  for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
    kTiles[mr - 1](a, nb, m0);
  });
}

}  // namespace tersor::spmm_24
