// AVX2 W8 weight-only GEMM: the shift-widening of gemm_w8_avx512.cpp on two ymm per W8Tile
// (columns 0-7, 8-15). One row: two column blocks at a time (gemv); up to 15 rows: a 4 rows x
// 16 columns register tile widening in registers; from 16 rows: slabs widened once into L1
// (common/slab_gemm_avx2.h).
#include <immintrin.h>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "common/slab_gemm_avx2.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {
namespace {

constexpr int kMR = 4;
// Each weight stream prefetched this many W8Tiles ahead (T0: a chunk's later row tiles read the
// same lines). Weights from DRAM (the AVX2 path on Zen 5, 2 threads, 4096x4096 / 2048x8192):
// 1.13-1.19x faster at 2 rows, 1.66x at 4, 1.22-1.35x at 8; one row the same.
constexpr int64_t kPrefetchTiles = 64;

inline __m256 widen(__m256i v, int j) {
  switch (j) {
    case 0: return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 24), 24));
    case 1: return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 16), 24));
    case 2: return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 8), 24));
    default: return _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 24));
  }
}

template <int MR>
void tile(const PackedW8LinearArgs& a, const int8_t* w, int64_t m0, int64_t n0) {
  __m256 acc[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float* x = a.x + m0 * a.ldx;
  // k = 4 k4 + i; whole W8Tiles first, then the partial last one (Zen 3, 2048x8192 M = 1:
  // 0.96x the time of one loop with a bound per tile).
  auto step = [&](int64_t k4, int kn) {
    // past the block's end: the next block's start, or nothing (a prefetch never faults)
    _mm_prefetch(reinterpret_cast<const char*>(w + (k4 + kPrefetchTiles) * 64), _MM_HINT_T0);
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k4 * 64));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k4 * 64 + 32));
TERSOR_UNROLL
    for (int i = 0; i < 4; ++i) {
      if (i >= kn) break;
      const __m256 dlo = widen(lo, i), dhi = widen(hi, i);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m256 xb = _mm256_set1_ps(x[r * a.ldx + 4 * k4 + i]);
        acc[r][0] = _mm256_fmadd_ps(xb, dlo, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(xb, dhi, acc[r][1]);
      }
    }
  };
  const int64_t k4_full = a.K / 4;
  for (int64_t k4 = 0; k4 < k4_full; ++k4) step(k4, 4);
  if (a.K % 4) step(k4_full, static_cast<int>(a.K % 4));
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n = n0 + 8 * h;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __m256i mask = tail_mask8(left);
    const __m256 sw = _mm256_loadu_ps(a.w_scale + n);
    const __m256 b = bias8(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      maskstore8(a.y + (m0 + r) * a.ldy + n, mask, _mm256_fmadd_ps(acc[r][h], sw, b));
  }
}

using TileFn = void (*)(const PackedW8LinearArgs&, const int8_t*, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>, tile<3>, tile<4>};

// One row (a decode step) over NB column blocks side by side: 2 NB FMA chains. The one-row
// tile keeps two, and an FMA waits on the one before it in its chain (4 cycles on Zen 3), so
// it ran at most 4 weights a cycle whatever the memory gave. Each output's FMAs stay in k
// order, as the rules ask. Zen 3, in-process A/B against the tile, 2 threads, weights from
// DRAM: 2048x2048 / 4096x4096 / 2048x8192 / 8192x2048 / 1536x8960 1.11-1.33x, 512x2048
// 1.14x, 2048x512 even (L3-resident); three blocks (6 chains) the same, with coarser splits.
template <int NB>
void gemv(const PackedW8LinearArgs& a, int64_t nb0) {
  const int64_t block_bytes = round_up(a.K, 4) * 16;
  const int8_t* w = a.w + nb0 * block_bytes;
  __m256 acc[NB][2];
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
  auto step = [&](int64_t k4, int kn) {
    __m256i lo[NB], hi[NB];
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      const int8_t* wj = w + j * block_bytes + k4 * 64;
      _mm_prefetch(reinterpret_cast<const char*>(wj + kPrefetchTiles * 64), _MM_HINT_T0);
      lo[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj));
      hi[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + 32));
    }
TERSOR_UNROLL
    for (int i = 0; i < 4; ++i) {
      if (i >= kn) break;
      const __m256 xb = _mm256_set1_ps(a.x[4 * k4 + i]);
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) {
        acc[j][0] = _mm256_fmadd_ps(xb, widen(lo[j], i), acc[j][0]);
        acc[j][1] = _mm256_fmadd_ps(xb, widen(hi[j], i), acc[j][1]);
      }
    }
  };
  const int64_t k4_full = a.K / 4;
  for (int64_t k4 = 0; k4 < k4_full; ++k4) step(k4, 4);
  if (a.K % 4) step(k4_full, static_cast<int>(a.K % 4));
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
TERSOR_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t n = (nb0 + j) * 16 + 8 * h;
      if (n >= a.N) break;
      const __m256i mask = tail_mask8(a.N - n);
      const __m256 sw = _mm256_loadu_ps(a.w_scale + n);
      maskstore8(a.y + n, mask, _mm256_fmadd_ps(acc[j][h], sw, bias8(a.bias, n, mask)));
    }
  }
}

constexpr int kGemvBlocks = 2;

// From 16 rows: slabs widened once into L1 (common/slab_gemm_avx2.h). Zen 2, interleaved A/B,
// 384x1536 / 2048x2048 / 8192x2048: at 4-8 rows the 4 x 16 tile is 1.1-1.7x faster, at 16
// even, at 32 / 64 / 256 the slabs 1.23-1.30x / 1.33-1.38x / 1.37-1.45x.
constexpr int64_t kSlabMinRows = 16;

// The 16 columns of block blk, k in [k0, k1) (k0 a multiple of 4) -> panel[(k - k0) * 16 + col].
void widen_slab(const PackedW8LinearArgs& a, int64_t blk, int64_t k0, int64_t k1, float* panel) {
  const int8_t* w = a.w + blk * round_up(a.K, 4) * 16;
  for (int64_t k4 = k0 / 4; k4 < (k1 + 3) / 4; ++k4) {
    prefetch_next_slab(w + k4 * 64, slab_avx2::kSlabK / 4);
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k4 * 64));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k4 * 64 + 32));
    float* out = panel + (4 * k4 - k0) * 16;
TERSOR_UNROLL
    for (int i = 0; i < 4; ++i) {
      _mm256_store_ps(out + 16 * i, widen(lo, i));
      _mm256_store_ps(out + 16 * i + 8, widen(hi, i));
    }
  }
}

// y[r0, r1) of block blk = fma(acc, scale_w, bias).
void store_rows(const PackedW8LinearArgs& a, int64_t blk, int64_t r0, int64_t r1,
                const float* acc) {
TERSOR_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n = blk * 16 + 8 * h;
    if (n >= a.N) break;
    const __m256i mask = tail_mask8(a.N - n);
    const __m256 sw = _mm256_loadu_ps(a.w_scale + n);
    const __m256 b = bias8(a.bias, n, mask);
    for (int64_t m = r0; m < r1; ++m)
      maskstore8(a.y + m * a.ldy + n, mask,
                 _mm256_fmadd_ps(_mm256_load_ps(acc + m * 16 + 8 * h), sw, b));
  }
}

}  // namespace

void run_avx2(const PackedW8LinearArgs& a) {
  const int64_t Kp = round_up(a.K, 4);
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  if (a.M >= kSlabMinRows) {
    slab_avx2::run(
        a.x, a.ldx, a.M, a.K, n_blocks, nt,
        [&](int64_t blk, int64_t k0, int64_t k1, float* p) { widen_slab(a, blk, k0, k1, p); },
        [&](int64_t blk, int64_t r0, int64_t r1, const float* acc) {
          store_rows(a, blk, r0, r1, acc);
        });
    return;
  }
  if (a.M == 1) {
    parallel_team(::tersor::team(nt), [&] {
      for_each_tile(n_blocks, kGemvBlocks, 1, 1, [&](int64_t nb0, int nb, int64_t, int) {
        (nb == 2 ? gemv<2> : gemv<1>)(a, nb0);
      });
    });
    return;
  }
  parallel_team(::tersor::team(nt), [&] {
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t blk, int, int64_t m0, int mr) {
      kTiles[mr - 1](a, a.w + blk * Kp * 16, m0, blk * 16);
    });
  });
}

}  // namespace tersor::gemm_w8
