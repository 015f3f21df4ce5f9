// AVX-512 W8 weight-only GEMM.
//
// One W8Tile (64 bytes) holds 16 columns x 4 k, k in the bytes of each 32-bit lane. Shifting a
// lane left so byte j sits on top, then arithmetic-shifting right by 24, sign-extends byte j of
// every lane at once: four shift pairs + four int->float converts turn a tile into the 4 zmm
// W[., k..k+3] without any shuffle. Register tile: MR = 8 rows x NB = 2 blocks (32 columns).
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {
namespace {

constexpr int kMR = 8;
constexpr int kNB = 2;
constexpr int kNBWide = 4;  // M <= 2
// Each weight stream prefetched this many W8Tiles ahead (T0: a chunk's later row tiles read the
// same lines). Weights from DRAM (Zen 5, 2 threads, 4096x4096 / 2048x8192, interleaved in one
// process): 1.2-1.3x faster at 1 row, 1.45-1.8x at 2-8, 1.25x at 16, 1.12x at 32.
constexpr int64_t kPrefetchTiles = 64;

template <int J>
inline __m512 widen(__m512i v) {  // byte J of each lane, sign-extended, as float
  if constexpr (J == 3) return _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 24));
  else return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * J), 24));
}

template <int MR, int NB>
void tile(const PackedW8LinearArgs& a, const int8_t* w, int64_t w_block_stride, int64_t m0,
          int64_t n0) {
  __m512 acc[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  const float* x = a.x + m0 * a.ldx;
  const int64_t kfull = a.K / 4;
  for (int64_t k4 = 0; k4 < kfull; ++k4) {
    __m512 d[NB][4];
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      // past the block's end: the next block's start, or nothing (a prefetch never faults)
      _mm_prefetch(reinterpret_cast<const char*>(w + j * w_block_stride +
                                                 (k4 + kPrefetchTiles) * 64),
                   _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(w + j * w_block_stride + k4 * 64);
      d[j][0] = widen<0>(v); d[j][1] = widen<1>(v); d[j][2] = widen<2>(v); d[j][3] = widen<3>(v);
    }
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const float* xr = x + r * a.ldx + 4 * k4;
TERSOR_UNROLL
      for (int i = 0; i < 4; ++i) {
        const __m512 xb = _mm512_set1_ps(xr[i]);
TERSOR_UNROLL
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_fmadd_ps(xb, d[j][i], acc[r][j]);
      }
    }
  }
  const int ktail = static_cast<int>(a.K % 4);
  if (ktail) {
    __m512 d[NB][3];
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      const __m512i v = _mm512_loadu_si512(w + j * w_block_stride + kfull * 64);
      d[j][0] = widen<0>(v); d[j][1] = widen<1>(v); d[j][2] = widen<2>(v);
    }
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const float* xr = x + r * a.ldx + 4 * kfull;
TERSOR_UNROLL
      for (int i = 0; i < ktail; ++i) {
        const __m512 xb = _mm512_set1_ps(xr[i]);
TERSOR_UNROLL
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_fmadd_ps(xb, d[j][i], acc[r][j]);
      }
    }
  }
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = n0 + 16 * j;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512 sw = _mm512_loadu_ps(a.w_scale + n);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_fmadd_ps(acc[r][j], sw, b));
  }
}

using TileFn = void (*)(const PackedW8LinearArgs&, const int8_t*, int64_t, int64_t, int64_t);
template <int MR>
constexpr TileFn pick_nb(int nb) { return nb == 1 ? tile<MR, 1> : tile<MR, 2>; }
// One or two rows are bandwidth-bound: four column blocks give four independent weight
// streams and FMA chains (the widening work per byte is the same).
template <int MR>
constexpr TileFn pick_wide(int nb) {
  return nb == 1 ? tile<MR, 1> : nb == 2 ? tile<MR, 2> : nb == 3 ? tile<MR, 3> : tile<MR, 4>;
}
TileFn pick(int mr, int nb) {
  switch (mr) {
    case 1: return pick_wide<1>(nb);
    case 2: return pick_wide<2>(nb);
    case 3: return pick_nb<3>(nb);
    case 4: return pick_nb<4>(nb);
    case 5: return pick_nb<5>(nb);
    case 6: return pick_nb<6>(nb);
    case 7: return pick_nb<7>(nb);
    default: return pick_nb<8>(nb);
  }
}

}  // namespace

void run_avx512(const PackedW8LinearArgs& a) {
  const int64_t Kp = round_up(a.K, 4);
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t nbw = a.M <= 2 ? kNBWide : kNB;  // column blocks per register tile
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
    for_each_tile(n_blocks, nbw, a.M, kMR, [&](int64_t b0, int nb, int64_t m0, int mr) {
      pick(mr, nb)(a, a.w + b0 * Kp * 16, Kp * 16, m0, b0 * 16);
    });
  });
}

}  // namespace tersor::gemm_w8
