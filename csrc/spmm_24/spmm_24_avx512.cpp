// AVX-512 2:4 sparse GEMM (rules in spmm_24.h). Up to 24 rows, vectorized over 16 output
// channels: per 16 k, one load of x per row and one 64-byte load of 4 groups' positions; per
// group the two index vectors 4j + p0, 4j + p1 feed vpermps, which hands every lane its own x.
// Register tile: MR rows x 16 columns. More rows: x transposed, vectorized over rows (below).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/cpu_features.h"
#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {
namespace {

constexpr int kMR = 6;

template <int MR, int NB>
void tile(const Args& a, int64_t nb0, int64_t m0) {
  const int64_t G = groups(a.K), G4 = meta_groups(a.K);
  const __m512i three = _mm512_set1_epi32(3);
  __m512 acc[NB][MR];
TERSOR_UNROLL
  for (int c = 0; c < NB; ++c)
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) acc[c][r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 4) {
    const int64_t left = a.K - 4 * g0;
    const __mmask16 km = tail_mask16(left);
    __m512 xv[MR];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) xv[r] = _mm512_maskz_loadu_ps(km, a.x + (m0 + r) * a.ldx + 4 * g0);
    const int gn = G - g0 < 4 ? static_cast<int>(G - g0) : 4;
TERSOR_UNROLL
    for (int c = 0; c < NB; ++c) {
      const S24Group* grp = reinterpret_cast<const S24Group*>(a.values) + (nb0 + c) * G;
      const __m512i mb = _mm512_loadu_si512(a.meta + (nb0 + c) * G4 * 16 + g0 * 16);
      for (int j = 0; j < gn; ++j) {
        __m128i bytes;
        switch (j) {  // extract needs an immediate
          case 0: bytes = _mm512_extracti32x4_epi32(mb, 0); break;
          case 1: bytes = _mm512_extracti32x4_epi32(mb, 1); break;
          case 2: bytes = _mm512_extracti32x4_epi32(mb, 2); break;
          default: bytes = _mm512_extracti32x4_epi32(mb, 3); break;
        }
        const __m512i p = _mm512_cvtepu8_epi32(bytes);
        const __m512i base = _mm512_set1_epi32(4 * j);
        const __m512i i0 = _mm512_add_epi32(_mm512_and_si512(p, three), base);
        const __m512i i1 = _mm512_add_epi32(_mm512_srli_epi32(p, 2), base);
        const __m512 v0 = _mm512_loadu_ps(grp[g0 + j].v[0]);
        const __m512 v1 = _mm512_loadu_ps(grp[g0 + j].v[1]);
TERSOR_UNROLL
        for (int r = 0; r < MR; ++r) {
          acc[c][r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(i0, xv[r]), v0, acc[c][r]);
          acc[c][r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(i1, xv[r]), v1, acc[c][r]);
        }
      }
    }
  }
TERSOR_UNROLL
  for (int c = 0; c < NB; ++c) {
    const int64_t n = (nb0 + c) * 16, left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_add_ps(acc[c][r], b));
  }
}

// Two column blocks per tile for 1-2 rows (two weight streams, two FMA chains each), one for
// larger row tiles (register budget).
using TileFn = void (*)(const Args&, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1, 1>, tile<2, 1>, tile<3, 1>, tile<4, 1>, tile<5, 1>,
                                tile<6, 1>};
constexpr TileFn kWide[2] = {tile<1, 2>, tile<2, 2>};

// ---- Many rows: x transposed, each kept value broadcast against 64 rows ----------------------
//
// The tile above pays a vpermps per FMA (both on ports 0 / 5): at best the dense FMA rate, and
// below a dense GEMM from ~128 rows. Here a pass of 64 rows of x is transposed, kChunkK k at a
// time, into xT (L1), and each kept value of a column is broadcast against 64 rows at once:
//
//     xT     [kChunkK][64] fp32                 row k - k0 of xT: x[m0 .. m0 + 63][k]
//     acc[n][0..63] = fma(xT[4g + p0 - k0][0..63], v0, acc)     then p1 with v1: the rules'
//                                                               order, every output on its own
//     accT   [this thread's columns][64] fp32   (L2) the sums between chunks, to y at the end
//
// A group's positions are decoded once per column by scalar code into two xT row addresses;
// four columns step together (16 FMA chains of 4 vectors). Work is the kept values only, with
// no shuffle in the FMA stream.
//
// Speed against torch's dense fp32 GEMM on the pruned weight (AMX Xeon reporting family 6
// model 167, 2 threads, 2026-12-06; K x N = 4096x4096 / 384x1536 / 2048x8192):
//   rows   8               16              32              128             512
//   tile   3.04/1.22/3.09  2.34/1.60/2.16  1.43/1.24/1.41  0.92/0.91/0.89  0.76/0.82/0.80
//   here   1.68/0.68/1.54  2.09/1.52/1.74  1.90/1.58/1.65  1.52/1.33/1.38  1.26/1.23/1.14
// and 1.11-1.24 at 2048 rows. A pass of 17-32 rows costs as much as one of 32: from 25 rows on.
constexpr int64_t kTransposedMinRows = 25;
constexpr int64_t kPassRows = 64;
constexpr int64_t kChunkK = 128;  // whole groups; xT chunk 32 KiB

// In-register transpose of a 16 x 16 float block: r[i] lane j -> r[j] lane i.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
TERSOR_UNROLL
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4q + j], 128-bit lane l: element 4l + j of rows 4q .. 4q + 3
TERSOR_UNROLL
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
TERSOR_UNROLL
  for (int j = 0; j < 4; ++j) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], _MM_SHUFFLE(3, 1, 3, 1));
    t[j] = _mm512_shuffle_f32x4(u0, w0, _MM_SHUFFLE(2, 0, 2, 0));       // lane 0
    t[4 + j] = _mm512_shuffle_f32x4(u1, w1, _MM_SHUFFLE(2, 0, 2, 0));   // lane 1
    t[8 + j] = _mm512_shuffle_f32x4(u0, w0, _MM_SHUFFLE(3, 1, 3, 1));   // lane 2
    t[12 + j] = _mm512_shuffle_f32x4(u1, w1, _MM_SHUFFLE(3, 1, 3, 1));  // lane 3
  }
TERSOR_UNROLL
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

inline __mmask16 mask_left(int64_t left) { return left > 0 ? tail_mask16(left) : 0; }

// x[m0 + r][k0 + kk] -> xt[kk * 64 + r] for r < 16 * nv, kk < kc; zeros past M and K (a zero
// value times a finite zero adds nothing, and every column's padding value is 0).
void transpose_chunk(const Args& a, int64_t m0, int rows, int nv, int64_t k0, int64_t kc,
                     float* xt) {
  for (int r0 = 0; r0 < 16 * nv; r0 += 16)
    for (int64_t kk = 0; kk < kc; kk += 16) {
      const __mmask16 km = mask_left(a.K - k0 - kk);
      __m512 t[16];
TERSOR_UNROLL
      for (int i = 0; i < 16; ++i)
        t[i] = r0 + i < rows ? _mm512_maskz_loadu_ps(km, a.x + (m0 + r0 + i) * a.ldx + k0 + kk)
                             : _mm512_setzero_ps();
      transpose16(t);
      const int kn = kc - kk < 16 ? static_cast<int>(kc - kk) : 16;
      for (int i = 0; i < kn; ++i) _mm512_store_ps(xt + (kk + i) * kPassRows + r0, t[i]);
    }
}

// Four columns c0 .. c0 + 3 of one block over groups [g0, g0 + gc) (xt holds k from 4 g0).
template <int NV>
void four_columns(const S24Group* grp, const uint8_t* meta, int c0, int64_t g0, int64_t gc,
                  const float* xt, float* acc_t, bool first) {
  __m512 acc[4][NV];
TERSOR_UNROLL
  for (int c = 0; c < 4; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v)
      acc[c][v] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc_t + c * kPassRows + 16 * v);
  for (int64_t g = 0; g < gc; ++g) {
    const float* xg = xt + g * 4 * kPassRows;
    const S24Group& w = grp[g0 + g];
    const uint8_t* p = meta + (g0 + g) * 16 + c0;
TERSOR_UNROLL
    for (int c = 0; c < 4; ++c) {
      const float* x0 = xg + (p[c] & 3) * kPassRows;
      const float* x1 = xg + (p[c] >> 2) * kPassRows;
      const __m512 w0 = _mm512_set1_ps(w.v[0][c0 + c]), w1 = _mm512_set1_ps(w.v[1][c0 + c]);
TERSOR_UNROLL
      for (int v = 0; v < NV; ++v)
        acc[c][v] = _mm512_fmadd_ps(_mm512_load_ps(x0 + 16 * v), w0, acc[c][v]);
TERSOR_UNROLL
      for (int v = 0; v < NV; ++v)
        acc[c][v] = _mm512_fmadd_ps(_mm512_load_ps(x1 + 16 * v), w1, acc[c][v]);
    }
  }
TERSOR_UNROLL
  for (int c = 0; c < 4; ++c)
TERSOR_UNROLL
    for (int v = 0; v < NV; ++v) _mm512_store_ps(acc_t + c * kPassRows + 16 * v, acc[c][v]);
}

using ColumnsFn = decltype(&four_columns<1>);
constexpr ColumnsFn kColumns[4] = {four_columns<1>, four_columns<2>, four_columns<3>,
                                   four_columns<4>};

// accT ([columns of this thread][64 rows]) + bias -> y rows [m0, m0 + rows), blocks b0 .. b1,
// 16 rows at a time across all blocks (a block at a time touched 64 pages of y per block).
void store_rows(const Args& a, const float* acc_t, int64_t b0, int64_t b1, int64_t m0, int rows,
                int nv) {
  for (int r0 = 0; r0 < 16 * nv; r0 += 16) {
    const int rn = rows - r0 < 16 ? rows - r0 : 16;
    for (int64_t nb = b0; nb < b1; ++nb) {
      const int64_t n = nb * 16;
      const __mmask16 cols = tail_mask16(a.N - n);
      const __m512 b = bias16(a.bias, n, cols);
      const float* acc = acc_t + (nb - b0) * 16 * kPassRows + r0;
      __m512 t[16];
TERSOR_UNROLL
      for (int c = 0; c < 16; ++c) t[c] = _mm512_load_ps(acc + c * kPassRows);
      transpose16(t);
      for (int r = 0; r < rn; ++r)
        _mm512_mask_storeu_ps(a.y + (m0 + r0 + r) * a.ldy + n, cols, _mm512_add_ps(t[r], b));
    }
  }
}

void run_transposed(const Args& a, int nt) {
  const int64_t n_blocks = (a.N + 15) / 16, G = groups(a.K), G4 = meta_groups(a.K);
  const S24Group* grp = reinterpret_cast<const S24Group*>(a.values);
  parallel_team(::tersor::team(nt), [&] {
    int64_t b0, b1;
    thread_range(n_blocks, &b0, &b1);
    if (b0 < b1) {
      auto xt = alloc_scratch<float>(kChunkK * kPassRows);
      auto acc = alloc_scratch<float>((b1 - b0) * 16 * kPassRows);
      for (int64_t m0 = 0; m0 < a.M; m0 += kPassRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kPassRows, a.M - m0));
        const int nv = (rows + 15) / 16;
        for (int64_t g0 = 0; g0 < G; g0 += kChunkK / 4) {
          const int64_t gc = std::min<int64_t>(kChunkK / 4, G - g0);
          transpose_chunk(a, m0, rows, nv, 4 * g0, 4 * gc, xt.get());
          for (int64_t nb = b0; nb < b1; ++nb)
            for (int c0 = 0; c0 < 16; c0 += 4)
              kColumns[nv - 1](grp + nb * G, a.meta + nb * G4 * 16, c0, g0, gc, xt.get(),
                               acc.get() + ((nb - b0) * 16 + c0) * kPassRows, g0 == 0);
        }
        store_rows(a, acc.get(), b0, b1, m0, rows, nv);
      }
    }
  });
}

}  // namespace

void run_avx512(const Args& a) {
  const int64_t n_blocks = (a.N + 15) / 16;
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
  // AMD's AVX-512 (Zen 4 / 5) keeps the tile measured there (2-2.8x torch's dense GEMM at
  // 256-1024 rows, ops/dense_path.py); this kernel was measured on Intel only.
  static const bool amd = std::strcmp(cpu_features().vendor, "AuthenticAMD") == 0;
  if (a.M >= kTransposedMinRows && !amd) return run_transposed(a, nt);
  const bool wide = a.M <= 2;
  parallel_team(::tersor::team(nt), [&] {
    for_each_tile(n_blocks, wide ? 2 : 1, a.M, kMR, [&](int64_t nb, int nbs, int64_t m0, int mr) {
      (wide && nbs == 2 ? kWide[mr - 1] : kTiles[mr - 1])(a, nb, m0);
    });
  });
}

}  // namespace tersor::spmm_24
