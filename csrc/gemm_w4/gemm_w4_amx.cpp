// W4 weight-only GEMM on AMX-BF16 tiles (Sapphire Rapids on), for batches of rows: the tile
// path of gemm_w4.h's bf16 contract (run_bf16_tiles). vdpbf16ps does 32 multiply-adds per
// instruction; tdpbf16ps does 16 x 16 x 32 = 8192, so from a few dozen rows the work is
// widening the weights, not multiplying them. The group scales therefore go into the widened
// weights (measured: a per-group epilogue over the tile accumulators, below, ran bf16 rows
// 0.6-1.1x as fast as this; it costs as much as the one tile product a step):
//
//   w[k][n] = bf16((q - z) * s)      fp32 product, rounded to nearest even (relative 2^-9)
//
// The tiles, the rows and the threads: common/bf16_tiles.h, over the panel
//
//   panel[j][kk][16 columns]  u32 = w[2kk][n] | w[2kk + 1][n] << 16
//
// Then y = C + bias. The widening: gemm_w4/bf16_pairs.h's ScaledW4Pairs.
//
// The fp32 form (run_fp32_tiles) is the grouped one (bf16_tiles.h block_groups): the weights
// widened as exact integers q - z, the rows' three exact parts against them (three products a
// k, every one exact), and each group's tile sums times its scales in fp32. Measured against
// the form before it (weights (q - z) s in two exact bf16 parts, six products a k), 2 threads,
// 8192x3072 g128: 1.9x / 1.7x / 1.5x faster at 16 / 32 / 128 rows; 2048x2048 g32 1.6x / 1.2x
// at 32 / 128.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/bf16_tiles.h"
#include "common/formats.h"
#include "common/simd.h"
#include "gemm_w4/bf16_pairs.h"
#include "gemm_w4/gemm_w4.h"

namespace tersor::gemm_w4 {
namespace {

// Column blocks nb0, nb0 + 1 (nb of them) of the weight, k in [k0, k1) (whole groups), as
// scaled bf16 pairs (the layout above), or for the grouped form (kExact) as the exact integers
// bf16(q - z) (|q - z| <= 15), the scales left to the tiles' group sums.
template <bool kExact>
void widen(const PackedW4LinearArgs& a, int64_t nb0, int nb, int64_t Kp, int64_t k0, int64_t k1,
           uint32_t* panel) {
  const W4Pairs pairs_of;
  const ScaledW4Pairs scaled;
  const int64_t G = a.group_size;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* w = a.w + (nb0 + j) * Kp * 8;  // Kp / 8 W4Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * (k1 - k0) * 8) - k0 / 2;
    for (int64_t g = k0 / G; g < k1 / G; ++g) {
      const int64_t meta = ((nb0 + j) * a.ngroups + g) * 16;
      const uint8_t* zero = a.zero ? a.zero + meta : nullptr;
      __m512 s, c;  // exact: s = 1, c = 8 - z, (q - 8) + (8 - z) exact in fp32 and bf16
      ScaledW4Pairs::group(kExact ? nullptr : a.scale + meta, zero, &s, &c);
      for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
        __m512i p[4];
        pairs_of(w + t * 64, p);
        for (int i = 0; i < 4; ++i)
          _mm512_storeu_si512(out + 4 * t + i, kExact && !zero ? p[i] : scaled(p[i], s, c));
      }
    }
  }
}

// y = acc + bias: a row block's sums (bf16_tiles.h `store`)
auto store_to(const PackedW4LinearArgs& a) {
  return [&a](const float (*acc)[32], int64_t m0, int64_t rows, int64_t nb0, int nb) {
    for (int h = 0; h < nb; ++h) {
      const int64_t n = (nb0 + h) * 16;
      const __mmask16 mask = tail_mask16(a.N - n);
      const __m512 bias = bias16(a.bias, n, mask);
      for (int64_t r = 0; r < rows; ++r)
        _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask,
                              _mm512_add_ps(_mm512_loadu_ps(&acc[r][16 * h]), bias));
    }
  };
}

}  // namespace

void run_amx_bf16(const PackedW4LinearArgs& a) {
  const int64_t Kp = a.ngroups * a.group_size;  // a multiple of 32 (run_bf16_tiles)
  bf16_tiles::run<1>(
      a.x, a.M, a.K, a.ldx, a.N, Kp, a.nthreads, a.w, Kp * 8, 8, a.group_size,
      [&](int64_t nb0, int nb, int64_t k0, int64_t k1, uint32_t* panel) {
        widen<false>(a, nb0, nb, Kp, k0, k1, panel);
      },
      store_to(a));
}

void run_amx_fp32(const PackedW4LinearArgs& a) {
  const int64_t Kp = a.ngroups * a.group_size;
  bf16_tiles::run<3>(
      a.x, a.M, a.K, a.ldx, a.N, Kp, a.nthreads, a.w, Kp * 8, 8, a.group_size,
      [&](int64_t nb0, int nb, int64_t k0, int64_t k1, uint32_t* panel) {
        widen<true>(a, nb0, nb, Kp, k0, k1, panel);
      },
      store_to(a),
      [&](int64_t nb0, int nb, int64_t k, __m512 s[2]) {  // the group's scales, blocks j0 / j1
        for (int h = 0; h < 2; ++h)
          s[h] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
              a.scale + ((nb0 + (h < nb ? h : 0)) * a.ngroups + k / a.group_size) * 16)));
      });
}

}  // namespace tersor::gemm_w4
