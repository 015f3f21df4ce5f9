// AVX2 2:4 sparse GEMM (rules in spmm_24.h). Up to 15 rows: the vpermps selection of
// spmm_24_avx512.cpp on 8 lanes; an 8-float x vector covers 2 groups. Register tile: 3 rows x 16
// columns (two ymm halves). From 16 rows: x transposed, vectorized over rows (below).
#include <immintrin.h>

#include <algorithm>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
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

// ---- Many rows: x transposed, each kept value broadcast against up to 96 rows ---------------
//
// The tile above pays a vpermps per FMA pair: at best the dense FMA rate. As in
// spmm_24_avx512.cpp, a pass of up to kPassRows rows of x is transposed, kChunkK k at a time,
// into xT (L1), and each kept value of a column is broadcast against all of the pass's rows:
//
//     xT     [kChunkK][kPassRows] fp32      row k - k0 of xT: x[m0 .. m0 + 95][k]
//     acc[n][0..95] = fma(xT[4g + p0 - k0][0..95], v0, acc)    then p1 with v1: the rules'
//                                                              order, every output on its own
//     accT   [this thread's columns][kPassRows] fp32   (L2) the sums between chunks, to y last
//
// A group's positions are decoded once per column by scalar code into two xT row addresses, and
// the FMAs take x straight from L1 (a memory operand each): the work is the kept values only,
// with no shuffle in the FMA stream, and a non-finite x at a pruned position is never read.
// Register tile: C columns x NV vectors of 8 rows, about 12 FMA chains (kColumnTiles). Wider
// passes broadcast each value against more rows: 48 -> 96 rows was 1.05-1.10x at 480 rows.
//
// Against torch's dense fp32 GEMM on the pruned weight (python -m tersor.bench --family sparse24,
// AMD EPYC Zen 3, 2 threads, 2026-12-07; K x N = 4096x4096 / 4096x11008 / 11008x4096 /
// 384x1536 / 1536x384), and in-process against the forms it replaced (the tile below 16 rows,
// a dense GEMM over widened slabs from 16):
//   rows            16              32              128             512
//   dense / this    1.80-3.15x      1.39-2.81x      1.51-1.72x      1.31-1.41x
//   old / this      1.00-1.07x      1.21-1.36x      1.27-1.32x      1.25-1.38x  (48-row passes)
// The tile is as fast at 12 rows and 1.1-2.3x faster below.
constexpr int64_t kTransposedMinRows = 16;
constexpr int64_t kPassRows = 96;
constexpr int64_t kChunkK = 64;  // whole groups; an xT chunk is 24 KiB

// In-register transpose of an 8 x 8 float block: r[i] lane j -> r[j] lane i.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
TERSOR_UNROLL
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4q + j], each 128-bit half h: element 4h + j of rows 4q .. 4q + 3
TERSOR_UNROLL
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
TERSOR_UNROLL
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// x[m0 + r][k0 + kk] -> xt[kk * kPassRows + r] for r < 8 * nv, kk < kc; zeros past M and K
// (the rules read x as 0 past K, and rows past M are never stored).
void transpose_chunk(const Args& a, int64_t m0, int rows, int nv, int64_t k0, int64_t kc,
                     float* xt) {
  for (int r0 = 0; r0 < 8 * nv; r0 += 8)
    for (int64_t kk = 0; kk < kc; kk += 8) {
      const int64_t left = a.K - k0 - kk;
      const __m256i km = tail_mask8(left);
      __m256 t[8];
TERSOR_UNROLL
      for (int i = 0; i < 8; ++i) {
        const float* src = a.x + (m0 + r0 + i) * a.ldx + k0 + kk;
        t[i] = r0 + i >= rows ? _mm256_setzero_ps()
               : left >= 8    ? _mm256_loadu_ps(src)
                              : _mm256_maskload_ps(src, km);
      }
      transpose8(t);
      const int kn = kc - kk < 8 ? static_cast<int>(kc - kk) : 8;
      for (int i = 0; i < kn; ++i) _mm256_store_ps(xt + (kk + i) * kPassRows + r0, t[i]);
    }
}

// Columns c0 .. c0 + C - 1 of one block over groups [g0, g0 + gc) (xt holds k from 4 g0).
template <int C, int NV>
void columns(const S24Group* grp, const uint8_t* meta, int c0, int64_t g0, int64_t gc,
             const float* xt, float* acc_t, bool first) {
  __m256 acc[C][NV];
TERSOR_UNROLL
  for (int c = 0; c < C; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v)
      acc[c][v] = first ? _mm256_setzero_ps() : _mm256_load_ps(acc_t + c * kPassRows + 8 * v);
  for (int64_t g = 0; g < gc; ++g) {
    const float* xg = xt + g * 4 * kPassRows;
    const S24Group& w = grp[g0 + g];
    const uint8_t* p = meta + (g0 + g) * 16 + c0;
TERSOR_UNROLL
    for (int c = 0; c < C; ++c) {
      const float* x0 = xg + (p[c] & 3) * kPassRows;
      const float* x1 = xg + (p[c] >> 2) * kPassRows;
      const __m256 w0 = _mm256_broadcast_ss(&w.v[0][c0 + c]);
TERSOR_UNROLL
      for (int v = 0; v < NV; ++v)
        acc[c][v] = _mm256_fmadd_ps(_mm256_load_ps(x0 + 8 * v), w0, acc[c][v]);
      const __m256 w1 = _mm256_broadcast_ss(&w.v[1][c0 + c]);
TERSOR_UNROLL
      for (int v = 0; v < NV; ++v)
        acc[c][v] = _mm256_fmadd_ps(_mm256_load_ps(x1 + 8 * v), w1, acc[c][v]);
    }
  }
TERSOR_UNROLL
  for (int c = 0; c < C; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) _mm256_store_ps(acc_t + c * kPassRows + 8 * v, acc[c][v]);
}

struct ColumnTile {
  int cols;
  decltype(&columns<2, 6>) fn;
};
// by NV - 1: about 12 chains each (Zen 3's FMA: latency 4, two ports); from 7 vectors one
// column, whose p0 -> p1 pair per group stays behind the other FMAs of the group
constexpr ColumnTile kColumnTiles[12] = {
    {8, columns<8, 1>}, {4, columns<4, 2>}, {4, columns<4, 3>},   {2, columns<2, 4>},
    {2, columns<2, 5>}, {2, columns<2, 6>}, {1, columns<1, 7>},   {1, columns<1, 8>},
    {1, columns<1, 9>}, {1, columns<1, 10>}, {1, columns<1, 11>}, {1, columns<1, 12>}};

// accT ([columns of this thread][kPassRows rows]) + bias -> y rows [m0, m0 + rows), blocks
// b0 .. b1, 8 rows at a time across all blocks.
void store_rows(const Args& a, const float* acc_t, int64_t b0, int64_t b1, int64_t m0,
                int rows) {
  for (int r0 = 0; r0 < rows; r0 += 8) {
    const int rn = rows - r0 < 8 ? rows - r0 : 8;
    for (int64_t nb = b0; nb < b1; ++nb)
      for (int h = 0; h < 2; ++h) {
        const int64_t n = nb * 16 + 8 * h;
        if (n >= a.N) break;
        const __m256i cols = tail_mask8(a.N - n);
        const __m256 b = bias8(a.bias, n, cols);
        const float* acc = acc_t + ((nb - b0) * 16 + 8 * h) * kPassRows + r0;
        __m256 t[8];
TERSOR_UNROLL
        for (int c = 0; c < 8; ++c) t[c] = _mm256_load_ps(acc + c * kPassRows);
        transpose8(t);
        for (int r = 0; r < rn; ++r)
          maskstore8(a.y + (m0 + r0 + r) * a.ldy + n, cols, _mm256_add_ps(t[r], b));
      }
  }
}

void run_transposed(const Args& a, int nt) {
  const int64_t n_blocks = (a.N + 15) / 16, G = groups(a.K), G4 = meta_groups(a.K);
  const S24Group* grp = reinterpret_cast<const S24Group*>(a.values);
  // passes of about equal size, a multiple of 8 rows: 100 rows run as 56 + 44, not 96 + 4
  const int64_t passes = (a.M + kPassRows - 1) / kPassRows;
  const int64_t pass_rows = ((a.M + passes - 1) / passes + 7) / 8 * 8;
  parallel_team(::tersor::team(nt), [&] {
    int64_t b0, b1;
    thread_range(n_blocks, &b0, &b1);
    if (b0 < b1) {
      auto xt = alloc_scratch<float>(kChunkK * kPassRows);
      auto acc = alloc_scratch<float>((b1 - b0) * 16 * kPassRows);
      for (int64_t m0 = 0; m0 < a.M; m0 += pass_rows) {
        const int rows = static_cast<int>(std::min<int64_t>(pass_rows, a.M - m0));
        const int nv = (rows + 7) / 8;
        const ColumnTile tile = kColumnTiles[nv - 1];
        for (int64_t g0 = 0; g0 < G; g0 += kChunkK / 4) {
          const int64_t gc = std::min<int64_t>(kChunkK / 4, G - g0);
          transpose_chunk(a, m0, rows, nv, 4 * g0, 4 * gc, xt.get());
          for (int64_t nb = b0; nb < b1; ++nb)
            for (int c0 = 0; c0 < 16; c0 += tile.cols)
              tile.fn(grp + nb * G, a.meta + nb * G4 * 16, c0, g0, gc, xt.get(),
                      acc.get() + ((nb - b0) * 16 + c0) * kPassRows, g0 == 0);
        }
        store_rows(a, acc.get(), b0, b1, m0, rows);
      }
    }
  });
}

}  // namespace

void run_avx2(const Args& a) {
  const int64_t n_blocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
  if (a.M >= kTransposedMinRows) return run_transposed(a, nt);
  parallel_team(::tersor::team(nt), [&] {
    for_each_tile(n_blocks, 1, a.M, kMR, [&](int64_t nb, int, int64_t m0, int mr) {
      kTiles[mr - 1](a, nb, m0);
    });
  });
}

}  // namespace tersor::spmm_24
