// The AVX2 ELL walk of 1-2 rows (layout in spmm_csr.h), shared by the fp32 and the int8 kernels
// (spmm_csr_avx2.cpp, spmm_csr_w8a8_avx2.cpp). Include only from *_avx2.cpp files.
//
// spmm_csr_avx512.cpp's few-rows kernel at 8 lanes: each step gathers every lane's own x[k] (a
// row of x sits in L1) for one FMA per lane and row, each lane its own chain in k order. Lanes
// past their count gather nothing: their FMA adds 0 * 0 (the padding's weight), where an
// unmasked x[k] could be inf. NB blocks at a time: 2 NB FMA chains per row in flight.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/formats.h"
#include "common/parallel.h"

namespace tersor::spmm_csr {
namespace {  // internal linkage (common/parallel.h)
namespace ell_avx2 {

constexpr int64_t kMaxRows = 2;  // the gathers' cost grows per row (spmm_csr_avx2.cpp)

// The ELL arrays of one weight.
struct Ell {
  const uint16_t* cnt;
  const int64_t* off;
  const uint16_t* col;
  const int32_t* perm;
  int64_t N;
};

// Blocks b .. b + NB against MR rows of x (ldx apart). weights(e): the fp32 weights of the 8
// lanes from ELL element e. Every `chunk` steps, and after the last, flush(acc) takes the
// partial sums acc[MR][NB][2] (lanes 0-7, 8-15 of each block; it may clear them).
template <int MR, int NB, typename Weights, typename Flush>
inline void walk(const Ell& ell, int64_t b, const float* x, int64_t ldx, int64_t chunk,
                 Weights&& weights, Flush&& flush) {
  __m256i cnt[NB][2];
  __m256 acc[MR][NB][2];
  int64_t s0[NB], depth = 0;
TERSOR_UNROLL
  for (int i = 0; i < NB; ++i) {
TERSOR_UNROLL
    for (int h = 0; h < 2; ++h) {
      cnt[i][h] = _mm256_cvtepu16_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(ell.cnt + 16 * (b + i) + 8 * h)));
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) acc[r][i][h] = _mm256_setzero_ps();
    }
    s0[i] = ell.off[b + i];
    depth = std::max(depth, ell.off[b + i + 1] - s0[i]);
  }
  int64_t j = 0;
  do {
    const int64_t j1 = depth - j <= chunk ? depth : j + chunk;
    for (; j < j1; ++j) {
      const __m256i step = _mm256_set1_epi32(static_cast<int>(j));
TERSOR_UNROLL
      for (int i = 0; i < NB; ++i) {
        const int64_t e = (s0[i] + j) * 16;  // past a shorter block's depth: no lane is live
TERSOR_UNROLL
        for (int h = 0; h < 2; ++h) {
          const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(cnt[i][h], step));
          if (_mm256_testz_ps(live, live)) continue;
          const __m256i idx = _mm256_cvtepu16_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(ell.col + e + 8 * h)));
          const __m256 w = weights(e + 8 * h);
TERSOR_UNROLL
          for (int r = 0; r < MR; ++r) {
            const __m256 xg =
                _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x + r * ldx, idx, live, 4);
            acc[r][i][h] = _mm256_fmadd_ps(xg, w, acc[r][i][h]);
          }
        }
      }
    }
    flush(acc);
  } while (j < depth);
}

inline void store_lanes(__m256 lo, __m256 hi, float* out) {
  _mm256_store_ps(out, lo);
  _mm256_store_ps(out + 8, hi);
}
inline void store_lanes(__m256i lo, __m256i hi, int32_t* out) {
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8), hi);
}

// out(r, n, v) for each lane value v (T: float or int32_t; vec: as walk's acc) of the blocks
// b .. b + NB, n the lane's output channel (padding lanes skipped).
template <typename T, int MR, int NB, typename V, typename Out>
inline void scatter(const Ell& ell, int64_t b, const V (&vec)[MR][NB][2], Out&& out) {
TERSOR_UNROLL
  for (int i = 0; i < NB; ++i)
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      alignas(32) T lanes[16];
      store_lanes(vec[r][i][0], vec[r][i][1], lanes);
      for (int c = 0; c < 16; ++c) {
        const int32_t n = ell.perm[16 * (b + i) + c];
        if (n < ell.N) out(r, n, lanes[c]);
      }
    }
}

template <int MR, int NB>
struct Shape {
  static constexpr int kRows = MR, kBlocks = NB;
};

// This thread's ELL blocks (balanced by depth) for M <= kMaxRows rows: blocks(b, Shape<MR, NB>)
// on NB = 2 blocks at a time for one row (four chains), one block for two rows. Call inside
// the parallel region.
template <typename Blocks>
inline void for_blocks(const Ell& ell, int64_t M, Blocks&& blocks) {
  int64_t b0, b1;
  balanced_range(ell.off, round_up(ell.N, 16) / 16, &b0, &b1);
  if (M == 2) {
    for (int64_t b = b0; b < b1; ++b) blocks(b, Shape<2, 1>{});
    return;
  }
  int64_t b = b0;
  for (; b + 2 <= b1; b += 2) blocks(b, Shape<1, 2>{});
  if (b < b1) blocks(b, Shape<1, 1>{});
}

}  // namespace ell_avx2
}  // namespace
}  // namespace tersor::spmm_csr
