// AVX-512 VNNI W4A8 GEMM (rules in gemm_w4a8.h).
//
// A W4Tile (16 columns x 8 k) splits with one mask and one shift into two zmm of unsigned
// codes, each exactly one vpdpbusd operand: low nibbles = k 0-3, high nibbles = k 4-7 of every
// column (common/formats.h). Activations are quantized into an interleaved s8 panel
//   apanel[M/4][Kp/4][4 rows][4 k]
// and broadcast 4 k at a time. Register tile: MR = 4 rows x NB column blocks (NB = 4 for the
// bandwidth-bound M <= 2, else 2), an int32 accumulator per group and an fp32 one across groups.
#include <immintrin.h>


#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "quant_act/quant_act.h"

namespace tersor::gemm_w4a8 {
namespace {

constexpr int kMR = 4;

struct TileCtx {
  const PackedW4LinearArgs* a;
  const uint8_t* apanel;  // this tile's rows: [Kp/4][kMR][4]
  const int32_t* gsum;    // S[m][g] of the tile's first row, row stride ngroups
  const float* sx;
  int64_t m0, nb0;        // first row, first column block
  int64_t block_bytes;    // Kp * 8
};

template <int MR, int NB>
void tile(const TileCtx& c) {
  const PackedW4LinearArgs& a = *c.a;
  const int64_t G = a.group_size;
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512 accf[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) accf[r][j] = _mm512_setzero_ps();

  const uint8_t* wbase = a.w + c.nb0 * c.block_bytes;
  for (int64_t g = 0; g < a.ngroups; ++g) {
    __m512i acc[MR][NB];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t t = g * G / 8; t < (g + 1) * G / 8; ++t) {
      __m512i lo[NB], hi[NB];
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) {
        const __m512i v = _mm512_loadu_si512(wbase + j * c.block_bytes + t * 64);
        lo[j] = _mm512_and_si512(v, nibble);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      }
      const uint8_t* ap = c.apanel + t * 2 * 4 * kMR;  // k4 = 2t and 2t + 1
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512i x0 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * r));
        const __m512i x1 =
            _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * kMR + 4 * r));
TERSOR_UNROLL
        for (int j = 0; j < NB; ++j) {
          acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], lo[j], x0);
          acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], hi[j], x1);
        }
      }
    }
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      const int64_t meta = ((c.nb0 + j) * a.ngroups + g) * 16;
      const __m512 s = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
      const __m512i z = a.zero ? _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                     reinterpret_cast<const __m128i*>(a.zero + meta)))
                               : _mm512_set1_epi32(8);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512i zs = _mm512_mullo_epi32(z, _mm512_set1_epi32(c.gsum[r * a.ngroups + g]));
        accf[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], zs)), s,
                                     accf[r][j]);
      }
    }
  }
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (c.nb0 + j) * 16;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_ps(a.y + (c.m0 + r) * a.ldy + n, mask,
                            _mm512_fmadd_ps(accf[r][j], _mm512_set1_ps(c.sx[r]), b));
  }
}

using TileFn = void (*)(const TileCtx&);
template <int MR>
constexpr TileFn pick_wide(int nb) {  // M <= 2: up to 4 blocks
  return nb == 1 ? tile<MR, 1> : nb == 2 ? tile<MR, 2> : nb == 3 ? tile<MR, 3> : tile<MR, 4>;
}
template <int MR>
constexpr TileFn pick_narrow(int nb) {  // up to 2 blocks
  return nb == 1 ? tile<MR, 1> : tile<MR, 2>;
}
TileFn pick(int mr, int nb, bool wide) {
  if (wide) return mr == 1 ? pick_wide<1>(nb) : pick_wide<2>(nb);
  switch (mr) {
    case 1: return pick_narrow<1>(nb);
    case 2: return pick_narrow<2>(nb);
    case 3: return pick_narrow<3>(nb);
    default: return pick_narrow<4>(nb);
  }
}

}  // namespace

void run_avx512(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t nbw = a.M <= 2 ? 4 : 2;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  const int64_t panel_bytes = Kp * kMR;

  auto apanel = alloc_scratch<uint8_t>(m_panels * panel_bytes);
  auto sx = alloc_scratch<float>(m_panels * kMR);
  auto gsum = alloc_scratch<int32_t>(m_panels * kMR * a.ngroups);

  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
#pragma omp parallel num_threads(::tersor::team(nt))
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* dst = apanel.get() + (m / kMR) * panel_bytes + (m % kMR) * 4;
      sx.get()[m] = quant_act::quantize_row_grouped(quant_act::quantize_row_avx512,
                                                    quant_act::a8_row(a, m), a.K, G,
                                                    a.ngroups, dst, kMR,
                                                    gsum.get() + m * a.ngroups,
                                                    quant_act::amax_floor(a.row_amax, m));
    }
    TileCtx ctx;
    ctx.a = &a;
    ctx.block_bytes = Kp * 8;
    for_each_tile(n_blocks, nbw, a.M, kMR, [&](int64_t nb0, int nb, int64_t m0, int mr) {
      ctx.nb0 = nb0;
      ctx.m0 = m0;
      ctx.apanel = apanel.get() + (m0 / kMR) * panel_bytes;
      ctx.sx = sx.get() + m0;
      ctx.gsum = gsum.get() + m0 * a.ngroups;
      pick(mr, nb, nbw == 4)(ctx);
    });
  }
}

}  // namespace tersor::gemm_w4a8
