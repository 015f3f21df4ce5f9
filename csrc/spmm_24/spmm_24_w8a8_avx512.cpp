// AVX-512 VNNI 2:4 sparse int8 GEMM (rules in spmm_24.h, layout S24I8Tile in formats.h).
//
// Activations are quantized per row to u8 = q + 128 (the gemm_w8a8 offset trick: the epilogue
// subtracts 128 * colsum[n]). Per 8 k of 16 columns:
//
//   idx  = decode(meta)                 lane c: bytes p0, p1, 4 + p2, 4 + p3
//   a    = broadcast 8 activation bytes  to every 64-bit slot of the zmm
//   sel  = vpshufb(a, idx)              lane c: the 4 activations its kept weights multiply
//   acc += vpdpbusd(sel, w)             4 products per lane, the 4 zeros never touched
//
// Register tile: MR rows x NB column blocks. Few rows decode the positions in the loop (the
// stream is bandwidth-bound); more rows decode a column chunk's positions once into a per-thread
// buffer that every row tile then reads (the decode would otherwise cost as much as the dot
// products).
#include <immintrin.h>

#include <cstring>

#include "common/formats.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "quant_act/quant_act.h"
#include "spmm_24/spmm_24.h"

namespace tersor::spmm_24 {
namespace {

// 16 meta bytes -> 16 lanes of 4 vpshufb indices. Field i of the byte (bits 2i, 2i+1) lands on
// bits 8i, 8i+1 in the copy shifted by 6i, and no other field of any copy lands there.
inline __m512i decode_meta(const uint8_t* meta) {
  const __m512i m = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta)));
  const __m512i t = _mm512_ternarylogic_epi32(m, _mm512_slli_epi32(m, 6), _mm512_slli_epi32(m, 12),
                                              0xFE);  // a | b | c
  const __m512i u = _mm512_or_si512(t, _mm512_slli_epi32(m, 18));
  return _mm512_ternarylogic_epi32(u, _mm512_set1_epi32(0x03030303),
                                   _mm512_set1_epi32(0x04040000), 0xEA);  // (a & b) | c
}

// acc += dpbusd(a, w) in place. With the intrinsic GCC 12 kept each accumulator of this tile in
// two registers and copied it around every dpbusd (one vmovdqa per dot product: 2x slower).
inline void dpbusd(__m512i& acc, __m512i a, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w));
}

struct Ctx {
  const W8A8Args* a;
  const uint8_t* aq;  // quantized rows, u8, stride lda
  int64_t lda, K8;
  const float* sx;
  const __m512i* idx;  // decoded positions of the current chunk [NB][K8], or null
};

template <int MR, int NB, bool kPre>
void tile(const Ctx& c, int64_t nb0, int64_t m0) {
  const W8A8Args& a = *c.a;
  __m512i acc[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
  const int8_t* wp = a.values + nb0 * c.K8 * 64;
  const uint8_t* mp = a.meta + nb0 * c.K8 * 16;
  const __m512i* ip = c.idx;
  const uint8_t* ap = c.aq + m0 * c.lda;
  const int64_t wstride = c.K8 * 64, mstride = c.K8 * 16;
  for (int64_t j = 0; j < c.K8; ++j, wp += 64, mp += 16, ip += 1, ap += 8) {
    __m512i w[NB], idx[NB];
TERSOR_UNROLL
    for (int b = 0; b < NB; ++b) {
      w[b] = _mm512_loadu_si512(wp + b * wstride);
      idx[b] = kPre ? _mm512_load_si512(ip + b * c.K8) : decode_meta(mp + b * mstride);
    }
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi64(*reinterpret_cast<const long long*>(ap + r * c.lda));
TERSOR_UNROLL
      for (int b = 0; b < NB; ++b)
        dpbusd(acc[r][b], _mm512_shuffle_epi8(av, idx[b]), w[b]);
    }
  }
TERSOR_UNROLL
  for (int b = 0; b < NB; ++b) {
    const int64_t n = (nb0 + b) * 16;
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(a.colsum + n), 7);
    const __m512 sw = _mm512_loadu_ps(a.w_scale + n);
    const __m512 bias = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], comp));
      const __m512 s = _mm512_mul_ps(_mm512_set1_ps(c.sx[m0 + r]), sw);
      _mm512_mask_storeu_ps(a.y + (m0 + r) * a.ldy + n, mask, _mm512_fmadd_ps(v, s, bias));
    }
  }
}

using TileFn = void (*)(const Ctx&, int64_t, int64_t);

// few rows: 4 column streams, positions decoded in the loop
constexpr int kSmallM = 4;
template <int NB>
constexpr TileFn kSmallRow[kSmallM] = {tile<1, NB, false>, tile<2, NB, false>,
                                       tile<3, NB, false>, tile<4, NB, false>};
constexpr const TileFn* kSmall[4] = {kSmallRow<1>, kSmallRow<2>, kSmallRow<3>, kSmallRow<4>};
// more rows: 8 x 2 tiles over pre-decoded positions
constexpr int kMR = 8, kNB = 2;
template <int NB>
constexpr TileFn kLargeRow[kMR] = {tile<1, NB, true>, tile<2, NB, true>, tile<3, NB, true>,
                                   tile<4, NB, true>, tile<5, NB, true>, tile<6, NB, true>,
                                   tile<7, NB, true>, tile<8, NB, true>};
constexpr const TileFn* kLarge[kNB] = {kLargeRow<1>, kLargeRow<2>};

}  // namespace

void run_w8a8_avx512(const W8A8Args& a) {
  const int64_t K8 = k8_blocks(a.K), n_blocks = (a.N + 15) / 16;
  const int64_t lda = round_up(K8 * 8, 64) + 64;  // off a power of two (see gemm_w8a8.h)
  auto aq = alloc_scratch<uint8_t>(a.M * lda);
  auto sx = alloc_scratch<float>(a.M);
  const bool small = a.M <= kSmallM;
  const int nt = threads_for_work(double(a.M) * a.N * a.K / 2, a.nthreads);
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* row = aq.get() + m * lda;
      const int64_t done = round_up(a.K, 4);  // quantize_row writes the codes up to here
      std::memset(row + done, 0x80, K8 * 8 - done);
      sx.get()[m] = quant_act::quantize_row_avx512(a.x + m * a.ldx, a.K, row, 4, 0x80,
                                                   quant_act::amax_floor(a.row_amax, m));
    }
    Ctx c{&a, aq.get(), lda, K8, sx.get(), nullptr};
    if (small) {
      for_each_tile(n_blocks, 4, a.M, kSmallM, [&](int64_t b0, int nb, int64_t m0, int mr) {
        kSmall[nb - 1][mr - 1](c, b0, m0);
      });
    } else {
      auto idx = alloc_scratch<__m512i>(kNB * K8);
      int64_t decoded = -1;
      c.idx = idx.get();
      for_each_tile(n_blocks, kNB, a.M, kMR, [&](int64_t b0, int nb, int64_t m0, int mr) {
        if (decoded != b0) {  // a new column chunk: decode its positions once
          for (int64_t i = 0; i < nb * K8; ++i) idx.get()[i] = decode_meta(a.meta + (b0 * K8 + i) * 16);
          decoded = b0;
        }
        kLarge[nb - 1][mr - 1](c, b0, m0);
      });
    }
  });
}

}  // namespace tersor::spmm_24
