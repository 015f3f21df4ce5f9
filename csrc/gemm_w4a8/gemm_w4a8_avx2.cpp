// AVX2 W4A8 GEMM (CPUs without VNNI). Codes (0..15, unsigned) x activations (s8) through
// vpmaddubsw: pair sums are at most 2 * 15 * 127 = 3810, so kSteps16 = 4 k-steps of 8 (two
// vpmaddubsw each, 8 pair sums <= 30480) add exactly in int16 before one vpmaddwd with ones
// widens them: half the multiply-port work of widening every vpmaddubsw (the multiply ports
// are what bound this kernel from a few rows up). Register tile: up to 4 rows x 16 columns
// (two ymm per W4Tile half and row): each weight byte unpacked serves 4 rows (measured 8-10%
// faster than 2 rows from 8 rows up on Zen 3).
#include <immintrin.h>


#include "common/formats.h"
#include "common/simd.h"
#include "common/half.h"
#include "common/parallel.h"
#include "common/weight_stream.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w4a8 {
namespace {

constexpr int kMR = 4;
constexpr int64_t kSteps16 = 4;  // k-steps of 8 summed in int16 (8 * 3810 < 32768)

// When the rows fit one tile (M <= kMR: a decode step) each weight line is read once per call:
// it is prefetched 16 lines (1 KiB) ahead, with the hint common/weight_stream.h picks. Zen 2,
// 2 threads, weights from DRAM, M = 1: NTA 0.72-0.80x the time of no prefetch (1B decode
// 21.5 -> 26.8 tok/s), T0 0.83-0.88x; 8 / 12 / 24 / 32 lines ahead were slower. More rows read
// each line once per tile of rows and keep the hardware's prefetch.
constexpr int64_t kPrefetchLines = 16;
enum class Prefetch { kNone, kT0, kNta };

// kG8: the group size / 8 where it is fixed at compile time (0: a.group_size at run time).
// With g32's 4 k-steps per group known, the group's loop is straight code (no loop setup, no
// division per group): Zen 3, 2048x8192, 2 threads: 0.75x the time at M = 1, 0.85x at 4 and
// 128 rows; a 1B W4A8 g32 decode 1.06x tok/s. g128 (16 steps) gained nothing and keeps the
// run-time loop.
template <int MR, Prefetch PF, int kG8>
void tile(const PackedW4LinearArgs& a, const uint8_t* apanel, const int32_t* gsum,
          const float* sx, int64_t m0, int64_t nb) {
  const int64_t G = kG8 ? kG8 * 8 : a.group_size, Kp = a.ngroups * G;
  const __m256i nibble = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const uint8_t* wb = a.w + nb * Kp * 8;
  __m256 accf[MR][2];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) accf[r][0] = accf[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.ngroups; ++g) {
    __m256i acc[MR][2];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const int64_t t_end = (g + 1) * G / 8;
    for (int64_t t0 = g * G / 8; t0 < t_end; t0 += kSteps16) {
      __m256i acc16[MR][2];
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) acc16[r][0] = acc16[r][1] = _mm256_setzero_si256();
      const int64_t t1 = t0 + kSteps16 < t_end ? t0 + kSteps16 : t_end;
      const auto step = [&](int64_t t) __attribute__((always_inline)) {
        const uint8_t* ap = apanel + t * 2 * 4 * kMR;
        // past the block's end: the next block's start, or nothing (a prefetch never faults)
        const char* ahead = reinterpret_cast<const char*>(wb + (t + kPrefetchLines) * 64);
        if constexpr (PF == Prefetch::kNta) _mm_prefetch(ahead, _MM_HINT_NTA);
        if constexpr (PF == Prefetch::kT0) _mm_prefetch(ahead, _MM_HINT_T0);
TERSOR_UNROLL
        for (int h = 0; h < 2; ++h) {  // columns 0-7, 8-15
          const __m256i v =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + t * 64 + 32 * h));
          const __m256i lo = _mm256_and_si256(v, nibble);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
TERSOR_UNROLL
          for (int r = 0; r < MR; ++r) {
            const __m256i x0 = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * r));
            const __m256i x1 =
                _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * kMR + 4 * r));
            acc16[r][h] = _mm256_add_epi16(
                acc16[r][h], _mm256_add_epi16(_mm256_maddubs_epi16(lo, x0),
                                              _mm256_maddubs_epi16(hi, x1)));
          }
        }
      };
      // One row (a decode step) with the group size fixed: each run of steps as straight code
      // (no loop counter, no register copies between steps). Zen 1, 2 threads, M = 1:
      // 1.05-1.09x on 2048x8192 and 8192x2048; with 2-4 rows it lost (0.86-0.95x).
      if constexpr (kG8 != 0 && MR == 1) {
        static_assert(kG8 < kSteps16 || kG8 % kSteps16 == 0, "whole runs of steps per group");
        constexpr int64_t kRun = kG8 < kSteps16 ? kG8 : kSteps16;
#pragma GCC unroll 16
        for (int64_t s = 0; s < kRun; ++s) step(t0 + s);
      } else {
        for (int64_t t = t0; t < t1; ++t) step(t);
      }
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
        for (int h = 0; h < 2; ++h)
          acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(acc16[r][h], ones));
    }
    const int64_t meta = (nb * a.ngroups + g) * 16;
TERSOR_UNROLL
    for (int h = 0; h < 2; ++h) {
      const __m256 s = _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.scale + meta + 8 * h)));
      const __m256i z = a.zero ? _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                     reinterpret_cast<const __m128i*>(a.zero + meta + 8 * h)))
                               : _mm256_set1_epi32(8);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m256i zs = _mm256_mullo_epi32(z, _mm256_set1_epi32(gsum[r * a.ngroups + g]));
        accf[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], zs)), s,
                                     accf[r][h]);
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
      maskstore8(a.y + (m0 + r) * a.ldy + n, mask,
                          _mm256_fmadd_ps(accf[r][h], _mm256_set1_ps(sx[r]), b));
  }
}

}  // namespace

void run_avx2(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  const int64_t panel_bytes = Kp * kMR;
  // One panel (a decode step): every thread quantizes it into a copy of its own instead of
  // waiting at a barrier for one thread's (as gemm_w8a8_avx2.cpp run_rows_avx2).
  const int team_size = ::tersor::team(threads_for_work(double(a.M) * a.N * a.K, a.nthreads));
  const bool own_copy = m_panels == 1 && team_size > 1;
  const int64_t copies = own_copy ? team_size : 1;
  auto apanel = alloc_scratch<uint8_t>(copies * m_panels * panel_bytes);
  auto sx_all = alloc_scratch<float>(copies * m_panels * kMR);
  auto gsum_all = alloc_scratch<int32_t>(copies * m_panels * kMR * a.ngroups);

  using TileFn = decltype(&tile<1, Prefetch::kNone, 0>);
#define TERSOR_W4A8_TILES(PF, G8) {tile<1, PF, G8>, tile<2, PF, G8>, tile<3, PF, G8>, tile<4, PF, G8>}
#define TERSOR_W4A8_GROUP(G8)                                                    \
  {TERSOR_W4A8_TILES(Prefetch::kNone, G8), TERSOR_W4A8_TILES(Prefetch::kT0, G8), \
   TERSOR_W4A8_TILES(Prefetch::kNta, G8)}
  static constexpr TileFn kTiles[2][3][kMR] = {TERSOR_W4A8_GROUP(0), TERSOR_W4A8_GROUP(4)};
#undef TERSOR_W4A8_GROUP
#undef TERSOR_W4A8_TILES
  const Prefetch pf = a.M > kMR                                  ? Prefetch::kNone
                      : weight_stream_nta(a.w, n_blocks * Kp * 8) ? Prefetch::kNta
                                                                  : Prefetch::kT0;
  const TileFn* tiles = kTiles[G == 32][static_cast<int>(pf)];
  parallel_team(team_size, [&] {
    const int64_t copy = own_copy ? thread_index() : 0;
    uint8_t* const panels = apanel.get() + copy * m_panels * panel_bytes;
    float* const sx = sx_all.get() + copy * m_panels * kMR;
    int32_t* const gsum = gsum_all.get() + copy * m_panels * kMR * a.ngroups;
    const auto quantize = [&](int64_t m) {
      uint8_t* dst = panels + (m / kMR) * panel_bytes + (m % kMR) * 4;
      sx[m] = quant_act::a8_grouped_row(a, m, quant_act::quantize_row_avx2,
                                        quant_act::quantize_row_lo_avx2, dst, kMR,
                                        gsum + m * a.ngroups);
    };
    if (own_copy) {
      for (int64_t m = 0; m < a.M; ++m) quantize(m);
    } else {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < a.M; ++m) quantize(m);
    }
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
      const uint8_t* ap = panels + (m0 / kMR) * panel_bytes;
      tiles[mr - 1](a, ap, gsum + m0 * a.ngroups, sx + m0, m0, nb);
    });
  });
}

}  // namespace tersor::gemm_w4a8
