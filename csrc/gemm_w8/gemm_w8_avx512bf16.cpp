// W8 weight-only GEMM on CPUs with AVX512-BF16: the bf16 dot-product path of gemm_w8.h, the
// int8 sibling of gemm_w4/gemm_w4_avx512bf16.cpp (same row rounding, panel, tile and threads).
// Codes in [-127, 127] are exact in bf16 (the pairs: gemm_w8/bf16_pairs.h):
//
//   panel[j][kk][16 lanes]  u32 = bf16(w[2kk]) | bf16(w[2kk + 1]) << 16      kk < Kp / 2
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/bf16_avx512.h"
#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "gemm_w8/bf16_pairs.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {
namespace {

constexpr int kMR = 4, kNB = 3;
// The panel's widening reads each block's codes as one stream, prefetched this many W8Tiles
// (8 KiB) ahead. Weights from DRAM (Zen 5, 2 threads, 4096x4096 / 2048x8192, interleaved in one
// process): 1.75x faster at 8 rows, 1.55x at 16, 1.35x at 32, 1.1x at 128; 32 / 64 / 256 ahead
// less.
constexpr int64_t kWidenPrefetchTiles = 128;

// Column blocks nb0 .. nb0 + nb of the weight as bf16 pairs (the layout above); Kp % 4 == 0.
void widen_panel(const PackedW8LinearArgs& a, int64_t nb0, int nb, int64_t Kp, uint32_t* panel) {
  const W8Pairs pairs;
  for (int j = 0; j < nb; ++j) {
    const int8_t* w = a.w + (nb0 + j) * Kp * 16;  // Kp / 4 W8Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * Kp * 8);
    for (int64_t t = 0; t < Kp / 4; ++t) {
      // past the block's end: the next block's start, or nothing (a prefetch never faults)
      _mm_prefetch(reinterpret_cast<const char*>(w + (t + kWidenPrefetchTiles) * 64), _MM_HINT_T0);
      __m512i p[2];
      pairs(w + t * 64, p);
      _mm512_storeu_si512(out + 2 * t, p[0]);
      _mm512_storeu_si512(out + 2 * t + 1, p[1]);
    }
  }
}

template <int MR, int NB>
void tile(const PackedW8LinearArgs& a, int64_t Kp, const uint16_t* a16, int64_t lda,
          const uint32_t* panel, int64_t m0, int64_t nb0) {
  __m512 acc[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  const uint32_t* wp = panel;
  const uint16_t* ap = a16;
  for (int64_t kk = 0; kk < Kp / 2; ++kk, wp += 16, ap += 2)
    pair_step<MR, NB>(wp, Kp * 8, ap, lda, acc);
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (nb0 + j) * 16;
    if (n >= a.N) break;  // never taken; keeps GCC from putting the tile on the stack
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512 s = _mm512_loadu_ps(a.w_scale + n);  // [Np]
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_fmadd_ps(acc[r][j], s, b));
  }
}

using TileFn = void (*)(const PackedW8LinearArgs&, int64_t, const uint16_t*, int64_t,
                        const uint32_t*, int64_t, int64_t);

template <int MR>
constexpr TileFn pick_nb(int nb) {
  return nb == 1 ? tile<MR, 1> : nb == 2 ? tile<MR, 2> : tile<MR, 3>;
}

TileFn pick(int mr, int nb) {
  switch (mr) {
    case 1: return pick_nb<1>(nb);
    case 2: return pick_nb<2>(nb);
    case 3: return pick_nb<3>(nb);
    default: return pick_nb<4>(nb);
  }
}

}  // namespace

void run_avx512bf16(const PackedW8LinearArgs& a) {
  const int64_t Kp = round_up(a.K, 4), lda = round_up(Kp, 16);
  const int64_t n_blocks = (a.N + 15) / 16, panels = (n_blocks + kNB - 1) / kNB;
  auto a16 = alloc_scratch<uint16_t>(a.M * lda);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) round_row_bf16(a.x + m * a.ldx, a.K, lda, a16.get() + m * lda);
    // implicit barrier: every row is ready
    auto panel = alloc_scratch<uint32_t>(kNB * Kp * 8);
    int64_t p0, p1;
    thread_range(panels, &p0, &p1);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t nb0 = p * kNB;
      const int nb = static_cast<int>(std::min<int64_t>(kNB, n_blocks - nb0));
      widen_panel(a, nb0, nb, Kp, panel.get());
      for (int64_t m0 = 0; m0 < a.M; m0 += kMR) {
        const int mr = static_cast<int>(std::min<int64_t>(kMR, a.M - m0));
        pick(mr, nb)(a, Kp, a16.get() + m0 * lda, lda, panel.get(), m0, nb0);
      }
    }
  });
}

}  // namespace tersor::gemm_w8
