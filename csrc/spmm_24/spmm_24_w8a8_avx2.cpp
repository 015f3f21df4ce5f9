// AVX2 2:4 sparse int8 GEMM (CPUs without VNNI; rules in spmm_24.h, layout S24I8Tile).
// The same vpshufb selection as the AVX-512 path, 8 lanes per ymm (a 16-column block is two
// halves), and gemm_w8a8_avx2's sign trick for the dot products: activations stay signed,
//     |a| * sign(w, a) == a * w  (vpmaddubsw cannot saturate: |a|, |w| <= 127)
// then vpmaddwd with ones widens the pairs to int32.
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "quant_act/quant_act.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {
namespace {

// 8 meta bytes -> 8 lanes of 4 vpshufb indices (see decode_meta in the AVX-512 file).
inline __m256i decode_meta8(const uint8_t* meta) {
  const __m256i m =
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(meta)));
  const __m256i t = _mm256_or_si256(_mm256_or_si256(m, _mm256_slli_epi32(m, 6)),
                                    _mm256_or_si256(_mm256_slli_epi32(m, 12),
                                                    _mm256_slli_epi32(m, 18)));
  return _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(0x03030303)),
                         _mm256_set1_epi32(0x04040000));
}

constexpr int kMR = 4;

template <int MR>
void tile(const W8A8Args& a, const uint8_t* aq, int64_t lda, int64_t K8, const float* sx,
          int64_t nb, int64_t m0) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int8_t* wp = a.values + nb * K8 * 64;
  const uint8_t* mp = a.meta + nb * K8 * 16;
  for (int64_t j = 0; j < K8; ++j, wp += 64, mp += 16) {
    const __m256i w[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32))};
    const __m256i idx[2] = {decode_meta8(mp), decode_meta8(mp + 8)};
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256i av =
          _mm256_set1_epi64x(*reinterpret_cast<const long long*>(aq + (m0 + r) * lda + 8 * j));
TERSOR_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256i sel = _mm256_shuffle_epi8(av, idx[h]);
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(sel), _mm256_sign_epi8(w[h], sel));
        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(p, ones));
      }
    }
  }
  store_int8_tile<MR>(acc, sx + m0, a.w_scale, a.bias, a.N, a.y + m0 * a.ldy, a.ldy,
                      nb * 16);
}

using TileFn = void (*)(const W8A8Args&, const uint8_t*, int64_t, int64_t, const float*, int64_t,
                        int64_t);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>, tile<3>, tile<4>};

}  // namespace

void run_w8a8_avx2(const W8A8Args& a) {
  const int64_t K8 = k8_blocks(a.K), n_blocks = (a.N + 15) / 16;
  const int64_t lda = round_up(K8 * 8, 64) + 64;
  auto aq = alloc_scratch<uint8_t>(a.M * lda);
  auto sx = alloc_scratch<float>(a.M);
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* row = aq.get() + m * lda;
      const int64_t done = round_up(a.K, 4);
      std::memset(row + done, 0, K8 * 8 - done);
      sx.get()[m] = quant_act::quantize_row_avx2(a.x + m * a.ldx, a.K, row, 4, 0,
                                                 quant_act::amax_floor(a.row_amax, m));
    }
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
      kTiles[mr - 1](a, aq.get(), lda, K8, sx.get(), nb, m0);
    });
  }
}

}  // namespace tersor::spmm_24
