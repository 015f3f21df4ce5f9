// W4 weight-only GEMM on CPUs with AVX512-BF16 (Zen 4, Cooper Lake, Sapphire Rapids on): the
// bf16 dot-product path of gemm_w4.h, for batches of rows. vdpbf16ps does 32 multiply-adds per
// instruction where an fp32 FMA does 16, and the int4 weights are exact in bf16, so only the
// activations are rounded.
//
// Per call, the rows are rounded to bf16 once (A16[M][lda], zero past K). Per NB column blocks,
// each thread widens the weights once into a panel that every row tile then reads from L2:
//
//   panel[j][kk][16 lanes]  u32 = bf16(q[2kk] - 8) | bf16(q[2kk + 1] - 8) << 16    kk < Kp / 2
//
// one 32-bit broadcast of A16 (the same two k of one row) against it is one vdpbf16ps (the
// pairs: gemm_w4/bf16_pairs.h). Scales and zero points per group, as in gemm_w4.h.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/bf16_avx512.h"
#include "common/formats.h"
#include "common/half.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "gemm_w4/bf16_pairs.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {
namespace {

constexpr int kMR = 4, kNB = 3;

// Column blocks nb0 .. nb0 + nb of the weight as bf16 pairs (the layout above).
void widen_panel(const PackedW4LinearArgs& a, int64_t nb0, int nb, int64_t Kp, uint32_t* panel) {
  const W4Pairs pairs;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* w = a.w + (nb0 + j) * Kp * 8;  // Kp / 8 W4Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * Kp * 8);
    for (int64_t t = 0; t < Kp / 8; ++t) {
      __m512i p[4];
      pairs(w + t * 64, p);
      for (int i = 0; i < 4; ++i) _mm512_storeu_si512(out + 4 * t + i, p[i]);
    }
  }
}

struct Rows {
  const uint16_t* a16;  // the tile's first row, rows lda apart
  int64_t lda;
  const float* X;       // its group sums, rows ngroups apart (zero points only)
  int64_t m0;
};

// Closing group g of column block nb for a row: t = fma(8 - z, X, part); acc = fma(t, s, acc).
struct GroupClose {
  const PackedW4LinearArgs& a;
  int64_t g;
  __m512 s, zc;
  GroupClose(const PackedW4LinearArgs& args, int64_t nb, int64_t group) : a(args), g(group) {
    const int64_t meta = (nb * a.ngroups + g) * 16;
    s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
    zc = a.zero ? _mm512_cvtepi32_ps(_mm512_sub_epi32(
                      _mm512_set1_epi32(8), _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                reinterpret_cast<const __m128i*>(a.zero + meta)))))
                : _mm512_setzero_ps();
  }
  __m512 operator()(const Rows& rows, int r, __m512 part, __m512 acc) const {
    const __m512 X = _mm512_set1_ps(a.zero ? rows.X[r * a.ngroups + g] : 0.0f);
    return _mm512_fmadd_ps(_mm512_fmadd_ps(zc, X, part), s, acc);
  }
};

template <int MR, int NB>
void tile(const PackedW4LinearArgs& a, int64_t Kp, const Rows& rows, const uint32_t* panel,
          int64_t nb0) {
  const int64_t G = a.group_size, pairs = G / 2;
  __m512 acc[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.ngroups; ++g) {
    __m512 part[MR][NB];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) part[r][j] = _mm512_setzero_ps();
    const uint32_t* wp = panel + g * pairs * 16;
    const uint16_t* ap = rows.a16 + g * G;
    for (int64_t kk = 0; kk < pairs; ++kk, wp += 16, ap += 2) {
      __m512bh w[NB];
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) w[j] = (__m512bh)_mm512_loadu_si512(wp + j * Kp * 8);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        int32_t pair;
        std::memcpy(&pair, ap + r * rows.lda, 4);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
TERSOR_UNROLL
        for (int j = 0; j < NB; ++j) part[r][j] = _mm512_dpbf16_ps(part[r][j], av, w[j]);
      }
    }
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      const GroupClose close(a, nb0 + j, g);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) acc[r][j] = close(rows, r, part[r][j], acc[r][j]);
    }
  }
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (nb0 + j) * 16;
    if (n >= a.N) break;  // never taken; keeps GCC from putting the tile on the stack
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (rows.m0 + r) * a.ldy + n, mask, _mm512_add_ps(acc[r][j], b));
  }
}

// Up to kDirectRows rows (a served batch of 8, a short prompt): the pairs are made in
// registers from the W4Tiles and used at once by every row, with no panel. Zen 5 (2 threads,
// 4096x4096 / 2048x8192 / 8192x2048 / 2048x2048, g32 and g128, 8 rows): 1.15-1.24x faster than
// writing the 8x larger bf16 panel and reading it back; at 12 and 16 rows (two passes over
// the weight) 0.95-1.07x, so the panel keeps them. The same vdpbf16ps in the same order per
// (row, column), so the same bits. One column block per tile: eight rows' partial and total
// sums take 16 of the 32 registers.
constexpr int64_t kDirectRows = 8;

template <int MR>
void direct_tile(const PackedW4LinearArgs& a, int64_t Kp, const Rows& rows, int64_t nb) {
  const W4Pairs pairs;
  const int64_t G = a.group_size;
  const uint8_t* w = a.w + nb * Kp * 8;
  __m512 acc[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.ngroups; ++g) {
    __m512 part[MR];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) part[r] = _mm512_setzero_ps();
    for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
      __m512i p[4];
      pairs(w + t * 64, p);
      const uint16_t* ap = rows.a16 + 8 * t;
TERSOR_UNROLL
      for (int i = 0; i < 4; ++i) {
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          int32_t pair;
          std::memcpy(&pair, ap + r * rows.lda + 2 * i, 4);
          part[r] = _mm512_dpbf16_ps(part[r], (__m512bh)_mm512_set1_epi32(pair), (__m512bh)p[i]);
        }
      }
    }
    const GroupClose close(a, nb, g);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[r] = close(rows, r, part[r], acc[r]);
  }
  const int64_t n = nb * 16;
  const __mmask16 mask = tail_mask16(a.N - n);
  const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    _mm512_mask_storeu_ps(a.y + (rows.m0 + r) * a.ldy + n, mask, _mm512_add_ps(acc[r], b));
}

using DirectFn = void (*)(const PackedW4LinearArgs&, int64_t, const Rows&, int64_t);
constexpr DirectFn kDirect[8] = {direct_tile<1>, direct_tile<2>, direct_tile<3>, direct_tile<4>,
                                 direct_tile<5>, direct_tile<6>, direct_tile<7>, direct_tile<8>};

using TileFn = void (*)(const PackedW4LinearArgs&, int64_t, const Rows&, const uint32_t*, int64_t);

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

// Row m of x rounded to bf16 (round to nearest even) into a16 [lda], zero past K; with zero
// points, X[g] = the sum of group g's rounded values, fp32 adds in k order.
void round_row(const PackedW4LinearArgs& a, int64_t m, int64_t lda, uint16_t* a16, float* X) {
  round_row_bf16(a.x + m * a.ldx, a.K, lda, a16);
  if (!X) return;
  for (int64_t g = 0; g < a.ngroups; ++g) {
    float sum = 0.0f;
    for (int64_t k = g * a.group_size; k < (g + 1) * a.group_size; ++k)
      sum += bf16_to_float(a16[k]);
    X[g] = sum;
  }
}

}  // namespace

void run_avx512bf16(const PackedW4LinearArgs& a) {
  const int64_t Kp = a.ngroups * a.group_size, lda = (Kp + 15) / 16 * 16;
  const int64_t n_blocks = (a.N + 15) / 16, panels = (n_blocks + kNB - 1) / kNB;
  auto a16 = alloc_scratch<uint16_t>(a.M * lda);
  auto X = alloc_scratch<float>(a.zero ? a.M * a.ngroups : 1);
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m)
      round_row(a, m, lda, a16.get() + m * lda, a.zero ? X.get() + m * a.ngroups : nullptr);
    // implicit barrier: every row is ready
    auto rows_at = [&](int64_t m0) {
      return Rows{a16.get() + m0 * lda, lda, a.zero ? X.get() + m0 * a.ngroups : nullptr, m0};
    };
    if (a.M <= kDirectRows) {
      int64_t b0, b1;
      thread_range(n_blocks, &b0, &b1);
      for (int64_t nb = b0; nb < b1; ++nb)
        for (int64_t m0 = 0; m0 < a.M; m0 += 8) {
          const int mr = static_cast<int>(std::min<int64_t>(8, a.M - m0));
          kDirect[mr - 1](a, Kp, rows_at(m0), nb);
        }
    } else {
      auto panel = alloc_scratch<uint32_t>(kNB * Kp * 8);
      int64_t p0, p1;
      thread_range(panels, &p0, &p1);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nb0 = p * kNB;
        const int nb = static_cast<int>(std::min<int64_t>(kNB, n_blocks - nb0));
        widen_panel(a, nb0, nb, Kp, panel.get());
        for (int64_t m0 = 0; m0 < a.M; m0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, a.M - m0));
          pick(mr, nb)(a, Kp, rows_at(m0), panel.get(), nb0);
        }
      }
    }
  }
}

}  // namespace tersor::gemm_w4
