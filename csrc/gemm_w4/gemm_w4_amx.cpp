// W4 weight-only GEMM on AMX-BF16 tiles (Sapphire Rapids on), for batches of rows: the tile
// path of gemm_w4.h's bf16 contract (run_bf16_tiles). vdpbf16ps does 32 multiply-adds per
// instruction; tdpbf16ps does 16 x 16 x 32 = 8192, so from a few dozen rows the work is
// widening the weights, not multiplying them. The group scales therefore go into the widened
// weights (a per-group epilogue over the tile accumulators would cost as much as the tiles):
//
//   w[k][n] = bf16((q - z) * s)      fp32 product, rounded to nearest even (relative 2^-9)
//
// The tiles, the rows and the threads: common/bf16_tiles.h, over the panel
//
//   panel[j][kk][16 columns]  u32 = w[2kk][n] | w[2kk + 1][n] << 16
//
// Then y = C + bias. The widening: gemm_w4/bf16_pairs.h's ScaledW4Pairs.
//
// The fp32 form (run_fp32_tiles) widens the exact fp32 weight (q - z) s into two bf16 parts,
// panel[0] = hi and panel[1] = lo, and the tiles multiply them by the rows' three parts (six
// products a k, every one exact): the dequantized rules' sums in the tile unit's order.
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

// Column blocks nb0, nb0 + 1 (nb of them) of the weight, k in [k0, k1) (whole groups): as
// scaled bf16 pairs (the layout above), or for the fp32 form (kSplit) each weight as two exact
// bf16 parts (ScaledW4Pairs::split), panel[0] the hi parts and panel[1] the lo ones.
template <bool kSplit>
void widen(const PackedW4LinearArgs& a, int64_t nb0, int nb, int64_t Kp, int64_t k0, int64_t k1,
           uint32_t* panel) {
  const W4Pairs pairs_of;
  const ScaledW4Pairs scaled;
  const int64_t G = a.group_size;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* w = a.w + (nb0 + j) * Kp * 8;  // Kp / 8 W4Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * (k1 - k0) * 8) - k0 / 2;
    __m512i* lo = out + (k1 - k0);  // kSplit: two blocks of (k1 - k0) / 2 vectors further
    for (int64_t g = k0 / G; g < k1 / G; ++g) {
      const int64_t meta = ((nb0 + j) * a.ngroups + g) * 16;
      __m512 s, c;
      ScaledW4Pairs::group(a.scale + meta, a.zero ? a.zero + meta : nullptr, &s, &c);
      for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
        __m512i p[4];
        pairs_of(w + t * 64, p);
        for (int i = 0; i < 4; ++i) {
          if (kSplit)
            scaled.split(p[i], s, c, out + 4 * t + i, lo + 4 * t + i);
          else
            _mm512_storeu_si512(out + 4 * t + i, scaled(p[i], s, c));
        }
      }
    }
  }
}

// XP / WP 1: the scaled bf16 form; 3 / 2: the fp32 form (bf16_tiles.h).
template <int XP, int WP, class Widen>
void run_tiles(const PackedW4LinearArgs& a, Widen widen) {
  const int64_t Kp = a.ngroups * a.group_size;  // a multiple of 32 (run_bf16_tiles)
  bf16_tiles::run<XP, WP>(
      a.x, a.M, a.K, a.ldx, a.N, Kp, a.nthreads, a.w, Kp * 8, a.group_size,
      [&](int64_t nb0, int nb, int64_t k0, int64_t k1, uint32_t* panel) {
        widen(a, nb0, nb, Kp, k0, k1, panel);
      },
      [&](const float (*acc)[32], int64_t m0, int64_t rows, int64_t nb0, int nb) {
        for (int h = 0; h < nb; ++h) {  // y = acc + bias
          const int64_t n = (nb0 + h) * 16;
          const __mmask16 mask = tail_mask16(a.N - n);
          const __m512 bias = bias16(a.bias, n, mask);
          for (int64_t r = 0; r < rows; ++r)
            _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask,
                                  _mm512_add_ps(_mm512_loadu_ps(&acc[r][16 * h]), bias));
        }
      });
}

}  // namespace

void run_amx_bf16(const PackedW4LinearArgs& a) { run_tiles<1, 1>(a, widen<false>); }
void run_amx_fp32(const PackedW4LinearArgs& a) { run_tiles<3, 2>(a, widen<true>); }

}  // namespace tersor::gemm_w4
