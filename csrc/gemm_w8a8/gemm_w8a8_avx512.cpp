// AVX-512 VNNI W8A8 GEMM.
//
// vpdpbusd multiplies unsigned by signed bytes, so activations are stored as u8 = q + 128
// (q XOR 0x80) and the epilogue subtracts 128 * colsum[n] (precomputed at pack time):
//     sum_k (q_k + 128) w_k  -  128 sum_k w_k  =  sum_k q_k w_k        (exact in int32)
//
// Activations are quantized straight into an interleaved A panel, 8 rows per panel:
//
//   apanel[M/8][Kp/4][8 rows][4 k]  u8      one 32-bit broadcast = 4 k of one row
//
// so a register tile of MR = 8 rows x NB = 3 column blocks (48 outputs, 24 zmm accumulators,
// FBGEMM's AVX512-VNNI shape) reads one A stream and three W streams. Threads split the column
// blocks; each thread keeps its current 3-block W panel (3 * Kp * 16 bytes, 192 KiB at K = 4096)
// in L2 while it walks all rows, so W is read from memory exactly once per call.
#include <immintrin.h>

#include <type_traits>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "common/weight_stream.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"
#include "half_io/half_avx512.h"

namespace tersor::gemm_w8a8 {
namespace {

constexpr int kMR = 8;
constexpr int kNB = 3;
// The register tile prefetches each of its weight streams this many 64-byte lines ahead: T0 (the
// later row tiles of the panel read the same lines), or for the decode (M <= 2) of a weight
// streaming from memory the non-temporal hint common/weight_stream.h picks (AMD only:
// int8_decode_nta). Weights from DRAM (Zen 5, 2 threads, 4096x4096 / 2048x8192, interleaved in one
// process): 1.06-1.19x faster at 4 rows, 1.3x at 8, 1.0-1.15x at 16, 1.06-1.18x at 32; 32 lines
// ahead a little less. With it the tile also runs the decode, where a one-block stream tile (NTA,
// 96 lines ahead) had run 1.3x faster than the tile without prefetch: now the tile is 1.0-1.11x
// faster than the stream tile from DRAM (4096x4096 / 2048x8192 / 8192x2048; NTA 1.0-1.08x faster
// than T0 there) and 1.0-1.17x from L3 (2048x512 .. 4096x4096). (The stream tile for 3-6 rows,
// which the W4A8 kernel takes from DRAM, ran the same as this tile here.)
constexpr int64_t kTilePrefetchLines = 64;
enum class Prefetch { kT0, kNta };

struct TileCtx {
  const uint8_t* apanel;  // this tile's panel: [Kp/4][8][4]
  const int8_t* w;        // first column block of the tile
  int64_t w_block_stride; // bytes between column blocks (Kp * 16)
  int64_t k4n;
  const float* sx;        // activation scales of the tile's rows
  const PackedW8LinearArgs* a;
  int64_t m0, n0;
};

template <int MR, int NB, Prefetch PF>
void tile(const TileCtx& c) {
  __m512i acc[MR][NB];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();

  const uint8_t* ap = c.apanel;
  const int8_t* wp = c.w;
  for (int64_t k4 = 0; k4 < c.k4n; ++k4, ap += 4 * kMR, wp += 64) {
    __m512i w[NB];
TERSOR_UNROLL
    for (int j = 0; j < NB; ++j) {
      // past the block's end: the next block's start, or nothing (a prefetch never faults)
      const char* ahead =
          reinterpret_cast<const char*>(wp + j * c.w_block_stride + kTilePrefetchLines * 64);
      if constexpr (PF == Prefetch::kNta) _mm_prefetch(ahead, _MM_HINT_NTA);
      if constexpr (PF == Prefetch::kT0) _mm_prefetch(ahead, _MM_HINT_T0);
      w[j] = _mm512_loadu_si512(wp + j * c.w_block_stride);
    }
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * r));
TERSOR_UNROLL
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, w[j]);
    }
  }

  const PackedW8LinearArgs& a = *c.a;
TERSOR_UNROLL
  for (int j = 0; j < NB; ++j) {
    const int64_t n = c.n0 + 16 * j;
    if (n >= a.N) break;
    const int64_t left = a.N - n;
    const __mmask16 mask = tail_mask16(left);
    const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(a.colsum + n), 7);
    const __m512 sw = _mm512_loadu_ps(a.w_scale + n);
    const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], comp));
      const __m512 s = _mm512_mul_ps(_mm512_set1_ps(c.sx[r]), sw);
      half_io::store_y16(a, c.m0 + r, n, mask, _mm512_fmadd_ps(v, s, b));
    }
  }
}

using TileFn = void (*)(const TileCtx&);

template <int MR, Prefetch PF>
constexpr TileFn pick_nb(int nb) {
  return nb == 1 ? tile<MR, 1, PF> : nb == 2 ? tile<MR, 2, PF> : tile<MR, 3, PF>;
}

// nta: the decode of a weight streaming from memory (common/weight_stream.h), one or two rows
TileFn pick(int mr, int nb, bool nta) {
  switch (mr) {
    case 1: return nta ? pick_nb<1, Prefetch::kNta>(nb) : pick_nb<1, Prefetch::kT0>(nb);
    case 2: return nta ? pick_nb<2, Prefetch::kNta>(nb) : pick_nb<2, Prefetch::kT0>(nb);
    case 3: return pick_nb<3, Prefetch::kT0>(nb);
    case 4: return pick_nb<4, Prefetch::kT0>(nb);
    case 5: return pick_nb<5, Prefetch::kT0>(nb);
    case 6: return pick_nb<6, Prefetch::kT0>(nb);
    case 7: return pick_nb<7, Prefetch::kT0>(nb);
    default: return pick_nb<8, Prefetch::kT0>(nb);
  }
}

}  // namespace

void run_rows_avx512(const PackedW8LinearArgs& a, const RowFill& fill) {
  const int64_t Kp = round_up(a.K, 4), k4n = Kp / 4;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  const int64_t panel_bytes = Kp * kMR;

  auto apanel = alloc_scratch<uint8_t>(m_panels * panel_bytes);
  auto sx = alloc_scratch<float>(m_panels * kMR);

  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  // every call records its read (the reuse distance of common/weight_stream.h counts all weight
  // bytes streamed); only the decode tiles use the hint
  const bool nta = weight_stream_nta(a.w, n_blocks * Kp * 16) && a.M <= 2 && int8_decode_nta();
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* dst = apanel.get() + (m / kMR) * panel_bytes + (m % kMR) * 4;
      sx.get()[m] = fill(m, dst, 4 * kMR, 0x80);
    }
    // implicit barrier: the whole A panel is ready

    TileCtx ctx;
    ctx.a = &a;
    ctx.k4n = k4n;
    ctx.w_block_stride = Kp * 16;
    for_each_tile(n_blocks, kNB, a.M, kMR, [&](int64_t b0, int nb, int64_t m0, int mr) {
      ctx.w = a.w + b0 * Kp * 16;
      ctx.n0 = b0 * 16;
      ctx.apanel = apanel.get() + (m0 / kMR) * panel_bytes;
      ctx.sx = sx.get() + m0;
      ctx.m0 = m0;
      pick(mr, nb, nta)(ctx);
    });
  });
}

void run_avx512(const PackedW8LinearArgs& a) {
  run_rows_avx512(a, [&](int64_t m, uint8_t* dst, int64_t gs, uint8_t xm) {
    return quant_act::quantize_row_avx512(quant_act::a8_row(a, m), a.K, dst, gs, xm,
                                          quant_act::amax_floor(a.row_amax, m));
  });
}

}  // namespace tersor::gemm_w8a8
