// W8 weight-only GEMM on AMX-BF16 tiles (Sapphire Rapids on), for batches of rows: the tile
// path of gemm_w8.h's bf16 contract (run_bf16_tiles). The int8 codes are exact in bf16 and the
// scale is per output channel, so the weights enter the tiles exactly and the scale stays in
// the epilogue, as in the vdpbf16ps kernel; only the order of the fp32 additions is the tile
// unit's:
//
//   acc = sum_k bf16(x[k]) w[k]   (fp32),     y = fma(acc, scale_w[n], bias[n])
//
// and of the fp32 form (run_fp32_tiles): each fp32 row in three exact bf16 parts, every product
// w * part exact, so acc holds the products of sum_k x[k] w[k] added in fp32, in the tile unit's
// order (three additions a k where an FMA chain has one).
//
// The tiles, the rows and the threads: common/bf16_tiles.h; the panel is the vdpbf16ps
// kernel's (gemm_w8_avx512bf16.cpp), zero from the packed weight's Kp up to the tile K.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/bf16_tiles.h"
#include "common/formats.h"
#include "common/simd.h"
#include "gemm_w8/bf16_pairs.h"
#include "gemm_w8/gemm_w8.h"

namespace tersor::gemm_w8 {
namespace {

// Blocks nb0 .. nb0 + nb as bf16 pairs, k in [k0, k1): from the W8Tiles up to the packed
// weight's Kp, zero past it (k0, k1 multiples of 32; Kp of 4).
void widen(const PackedW8LinearArgs& a, int64_t nb0, int nb, int64_t Kp, int64_t k0, int64_t k1,
           uint32_t* panel) {
  const W8Pairs pairs;
  const int64_t t1 = std::max(k0, std::min(k1, Kp)) / 4;  // the W8Tiles of k0 .. Kp
  for (int j = 0; j < nb; ++j) {
    const int8_t* w = a.w + (nb0 + j) * Kp * 16;  // Kp / 4 W8Tiles of 64 bytes
    __m512i* out = reinterpret_cast<__m512i*>(panel + j * (k1 - k0) * 8) - k0 / 2;
    for (int64_t t = k0 / 4; t < t1; ++t) {
      __m512i p[2];
      pairs(w + t * 64, p);
      _mm512_storeu_si512(out + 2 * t, p[0]);
      _mm512_storeu_si512(out + 2 * t + 1, p[1]);
    }
    std::memset(out + 2 * t1, 0, (k1 / 4 - t1) * 128);
  }
}

// XP = 1: rows rounded to bf16 (the bf16 contract); 3: fp32 rows in three exact parts.
template <int XP>
void run_tiles(const PackedW8LinearArgs& a) {
  const int64_t Kp = round_up(a.K, 4), Kt = round_up(a.K, bf16_tiles::kStep);
  bf16_tiles::run<XP>(
      a.x, a.M, a.K, a.ldx, a.N, Kt, a.nthreads, a.w, Kp * 16, 16, bf16_tiles::kStep,
      [&](int64_t nb0, int nb, int64_t k0, int64_t k1, uint32_t* panel) {
        widen(a, nb0, nb, Kp, k0, k1, panel);
      },
      [&](const float (*acc)[32], int64_t m0, int64_t rows, int64_t nb0, int nb) {
        for (int h = 0; h < nb; ++h) {  // y = fma(acc, scale_w, bias)
          const int64_t n = (nb0 + h) * 16;
          const __mmask16 mask = tail_mask16(a.N - n);
          const __m512 s = _mm512_loadu_ps(a.w_scale + n);  // [Np]
          const __m512 bias = bias16(a.bias, n, mask);
          for (int64_t r = 0; r < rows; ++r)
            _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask,
                                  _mm512_fmadd_ps(_mm512_loadu_ps(&acc[r][16 * h]), s, bias));
        }
      });
}

}  // namespace

void run_amx_bf16(const PackedW8LinearArgs& a) { run_tiles<1>(a); }
void run_amx_fp32(const PackedW8LinearArgs& a) { run_tiles<3>(a); }

}  // namespace tersor::gemm_w8
