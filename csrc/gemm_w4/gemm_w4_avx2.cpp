// AVX2 W4 weight-only GEMM (rules in gemm_w4.h): two ymm per W4Tile (columns 0-7, 8-15); ymm
// vpermps indexes only 8 entries, so codes become (q - 8) by mask, convert and subtract (exact).
// Register tile: 2 rows x 16 columns.
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {
namespace {

constexpr int kMR = 2;

template <int MR>
void tile(const PackedW4LinearArgs& a, const float* X, int64_t nchunks, int64_t m0, int64_t nb) {
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  const __m256i nibble = _mm256_set1_epi32(0x0f);
  const __m256 eight = _mm256_set1_ps(8.0f);
  const float* x = a.x + m0 * a.ldx;
  const uint8_t* wb = a.w + nb * Kp * 8;
  __m256 acc[MR][2], part[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = part[r][0] = part[r][1] = _mm256_setzero_ps();
  const int64_t k8_end = (a.K + 7) / 8;
  for (int64_t t = 0; t < k8_end; ++t) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + t * 64));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + t * 64 + 32));
    const int kn = a.K - 8 * t >= 8 ? 8 : static_cast<int>(a.K - 8 * t);
    for (int i = 0; i < kn; ++i) {
      const __m128i sh = _mm_cvtsi32_si128(i < 4 ? 8 * i : 8 * (i - 4) + 4);
      const __m256 q0 = _mm256_sub_ps(
          _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v0, sh), nibble)), eight);
      const __m256 q1 = _mm256_sub_ps(
          _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v1, sh), nibble)), eight);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m256 xb = _mm256_set1_ps(x[r * a.ldx + 8 * t + i]);
        part[r][0] = _mm256_fmadd_ps(xb, q0, part[r][0]);
        part[r][1] = _mm256_fmadd_ps(xb, q1, part[r][1]);
      }
    }
    if (t % (kChunk / 8) == kChunk / 8 - 1 || t == k8_end - 1) {  // close a 32-k chunk
      const int64_t c = t / (kChunk / 8), meta = (nb * a.ngroups + 8 * t / G) * 16;
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256 s = _mm256_cvtph_ps(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.scale + meta + 8 * h)));
        const __m256 zc = a.zero ? _mm256_sub_ps(eight, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(
                                                                a.zero + meta + 8 * h)))))
                                 : _mm256_setzero_ps();
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          const __m256 tv = _mm256_fmadd_ps(zc, _mm256_set1_ps(X[r * nchunks + c]), part[r][h]);
          acc[r][h] = _mm256_fmadd_ps(tv, s, acc[r][h]);
          part[r][h] = _mm256_setzero_ps();
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

using TileFn = void (*)(const PackedW4LinearArgs&, const float*, int64_t, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>};

}  // namespace

void run_avx2(const PackedW4LinearArgs& a) {
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t nks = (a.K + kChunk - 1) / kChunk;
  auto X = alloc_scratch<float>(a.M * nks);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) chunk_sums(a.x + m * a.ldx, a.K, X.get() + m * nks);
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
      kTiles[mr - 1](a, X.get() + m0 * nks, nks, m0, nb);
    });
  }
}

}  // namespace tersor::gemm_w4
