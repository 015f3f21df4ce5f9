// AVX-512 VNNI W4A8 GEMM (rules in gemm_w4a8.h).
//
// A W4Tile (16 columns x 8 k) splits with one mask and one shift into two zmm of unsigned
// codes, each exactly one vpdpbusd operand: low nibbles = k 0-3, high nibbles = k 4-7 of every
// column (common/formats.h). Activations are quantized into an interleaved s8 panel
//   apanel[M/4][Kp/4][4 rows][4 k]
// and broadcast 4 k at a time. Register tile: MR = 4 rows x NB = 2 column blocks, an int32
// accumulator per group and an fp32 one across groups; on AMD, M <= 4 with the weight
// streaming from memory takes stream_tile (common/weight_stream.h int8_decode_nta).
#include <immintrin.h>

#include <type_traits>

#include "common/formats.h"
#include "common/simd.h"
#include "common/parallel.h"
#include "common/weight_stream.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "quant_act/quant_act.h"
#include "half_io/half_avx512.h"

namespace tersor::gemm_w4a8 {
namespace {

constexpr int kMR = 4;
// The register tile prefetches each of its weight streams this many 64-byte W4Tiles ahead
// (T0: the chunk's later row tiles read the same lines). Weights from DRAM (Zen 5, 2 threads,
// 4096x4096 / 2048x8192, g32): 1.2x faster at 4-8 rows, 1.1x at 16, 1.03-1.05x at 32; 32
// lines ahead ran the same, 16 less well.
constexpr int64_t kTilePrefetchLines = 64;

// The zero point's term of a group in fp32 (zero_term): |acc_g|, |z S| <= 15 * 127 * G < 2^24
// for G <= kExactFloatGroup, so float(acc_g) - z S is float(t_g) exactly, the rules' value. On
// Intel, vpmulld takes two port-0 uops at 10 cycles of latency, beside port 0's vpdpbusd; the
// fp32 form is one vfnmadd on either port. Xeon family 6 model 167 under the avx512 path, 2
// threads, 4096x4096 / 2048x8192: 1.09-1.18x faster (g32) and 1.08-1.19x (g128) at 8-128 rows.
constexpr int64_t kExactFloatGroup = 8192;

struct TileCtx {
  const PackedW4LinearArgs* a;
  const uint8_t* apanel;  // this tile's rows: [Kp/4][kMR][4]
  const int32_t* gsum;    // S[m][g] of the tile's first row, row stride ngroups
  const float* gsum_f;    // the same as fp32 (exact), where the group size allows
  const float* sx;
  int64_t m0, nb0;        // first row, first column block
  int64_t block_bytes;    // Kp * 8
};

// float(t_g) = float(acc_g - z S[m][g]) for one row and 16 columns (zf: z as fp32).
inline __m512 zero_term(const TileCtx& c, __m512i acc, __m512i z, __m512 zf, int r, int64_t g) {
  const int64_t i = r * c.a->ngroups + g;
  if (c.gsum_f) return _mm512_fnmadd_ps(zf, _mm512_set1_ps(c.gsum_f[i]), _mm512_cvtepi32_ps(acc));
  const __m512i zs = _mm512_mullo_epi32(z, _mm512_set1_epi32(c.gsum[i]));
  return _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, zs));
}

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
        // past the block's end: the next block's start, or nothing (a prefetch never faults)
        _mm_prefetch(reinterpret_cast<const char*>(wbase + j * c.block_bytes +
                                                   (t + kTilePrefetchLines) * 64),
                     _MM_HINT_T0);
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
      const __m512 zf = _mm512_cvtepi32_ps(z);
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r)
        accf[r][j] = _mm512_fmadd_ps(zero_term(c, acc[r][j], z, zf, r, g), s, accf[r][j]);
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
      half_io::store_y16(a, c.m0 + r, n, mask,
                         _mm512_fmadd_ps(accf[r][j], _mm512_set1_ps(c.sx[r]), b));
  }
}

// Up to 4 rows with the weight streaming from memory (a decode step of a model larger than the
// last-level cache): one column block per call, its weight read as one stream and prefetched
// kPrefetchLines (6 KiB) ahead, non-temporal (the gemm_w4a8_avx2.cpp rule, with a longer reach
// for the faster memory of AVX-512 servers).
// The general tile with 4 blocks side by side (four streams 16 KiB apart per thread, no
// prefetch) took 1.3-1.45x the time from DRAM: Zen 5, 2 threads, g32, M = 1, 2048x8192 /
// 8192x2048 / 2048x2048 283-312 / 258-267 / 74-77 us against 214 / 215-217 / 61-66 us, when a
// plain read ran at 41-45 GB/s (the new tile: ~42 GB/s). 16 / 32 / 64 / 128 / 192 lines ahead:
// 244-251, 223-237, 214-222, 207-217 us at 2048x8192; T0 instead of NTA 1.0-1.04x the time.
// One block gives a row one accumulator, a chain of dependent vpdpbusd; four (lo / hi nibbles
// of even / odd k-steps) keep four chains in flight.
constexpr int64_t kPrefetchLines = 96;

template <int MR>
void stream_tile(const TileCtx& c) {
  const PackedW4LinearArgs& a = *c.a;
  const int64_t G = a.group_size;
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512 accf[MR];
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r) accf[r] = _mm512_setzero_ps();
  const uint8_t* wb = a.w + c.nb0 * c.block_bytes;
  const int64_t meta0 = c.nb0 * a.ngroups * 16;
  for (int64_t g = 0; g < a.ngroups; ++g) {
    __m512i acc[MR][4];
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r)
TERSOR_UNROLL
      for (int i = 0; i < 4; ++i) acc[r][i] = _mm512_setzero_si512();
    // one k-step of 8 into accumulators 2e, 2e + 1
    auto step = [&](int64_t t, auto e) {
      // past the block's end: the next block's start, or nothing (a prefetch never faults)
      _mm_prefetch(reinterpret_cast<const char*>(wb + (t + kPrefetchLines) * 64), _MM_HINT_NTA);
      const __m512i v = _mm512_loadu_si512(wb + t * 64);
      const __m512i lo = _mm512_and_si512(v, nibble);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      const uint8_t* ap = c.apanel + t * 2 * 4 * kMR;
TERSOR_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512i x0 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * r));
        const __m512i x1 =
            _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ap + 4 * kMR + 4 * r));
        acc[r][2 * e] = _mm512_dpbusd_epi32(acc[r][2 * e], lo, x0);
        acc[r][2 * e + 1] = _mm512_dpbusd_epi32(acc[r][2 * e + 1], hi, x1);
      }
    };
    const int64_t t1 = (g + 1) * G / 8;
    int64_t t = g * G / 8;
    for (; t + 1 < t1; t += 2) {
      step(t, std::integral_constant<int, 0>());
      step(t + 1, std::integral_constant<int, 1>());
    }
    if (t < t1) step(t, std::integral_constant<int, 0>());  // per-channel G: K / 8 may be odd
    const int64_t meta = meta0 + g * 16;
    const __m512 s =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
    const __m512i z = a.zero ? _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                   reinterpret_cast<const __m128i*>(a.zero + meta)))
                             : _mm512_set1_epi32(8);
    const __m512 zf = _mm512_cvtepi32_ps(z);
TERSOR_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(acc[r][0], acc[r][1]),
                                           _mm512_add_epi32(acc[r][2], acc[r][3]));
      accf[r] = _mm512_fmadd_ps(zero_term(c, sum, z, zf, r, g), s, accf[r]);
    }
  }
  const int64_t n = c.nb0 * 16;
  const __mmask16 mask = tail_mask16(a.N - n);
  const __m512 b = bias16(a.bias, n, mask);
TERSOR_UNROLL
  for (int r = 0; r < MR; ++r)
    half_io::store_y16(a, c.m0 + r, n, mask, _mm512_fmadd_ps(accf[r], _mm512_set1_ps(c.sx[r]), b));
}

using TileFn = void (*)(const TileCtx&);
TileFn pick(int mr, int nb) {  // up to 2 blocks
  switch (mr) {
    case 1: return nb == 1 ? tile<1, 1> : tile<1, 2>;
    case 2: return nb == 1 ? tile<2, 1> : tile<2, 2>;
    case 3: return nb == 1 ? tile<3, 1> : tile<3, 2>;
    default: return nb == 1 ? tile<4, 1> : tile<4, 2>;
  }
}

}  // namespace

void run_avx512(const PackedW4LinearArgs& a) {
  const int64_t G = a.group_size, Kp = a.ngroups * G;
  const int64_t n_blocks = round_up(a.N, 16) / 16;
  const int64_t m_panels = (a.M + kMR - 1) / kMR;
  const int64_t panel_bytes = Kp * kMR;

  auto apanel = alloc_scratch<uint8_t>(m_panels * panel_bytes);
  auto sx = alloc_scratch<float>(m_panels * kMR);
  auto gsum = alloc_scratch<int32_t>(m_panels * kMR * a.ngroups);
  const bool float_zero = G <= kExactFloatGroup;
  auto gsum_f = alloc_scratch<float>(float_zero ? m_panels * kMR * a.ngroups : 0);

  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  // Up to kMR rows while the weight streams from memory (common/weight_stream.h), the stream
  // tile: from DRAM it ran 1-2 rows 1.0-1.3x and 3-4 rows 1.15-1.35x faster than the register
  // tile (Zen 5, 4096x4096 / 2048x8192 / 8192x2048), from L3 0.8-0.95x as fast. On AMD only
  // (int8_decode_nta: on Intel the register tile with T0 was 1.09x faster).
  // (every call records its read: the reuse distance counts all weight bytes streamed)
  const bool stream =
      weight_stream_nta(a.w, n_blocks * Kp * 8) && a.M <= kMR && int8_decode_nta();
  static constexpr TileFn kStream[kMR] = {stream_tile<1>, stream_tile<2>, stream_tile<3>,
                                          stream_tile<4>};
  parallel_team(::tersor::team(nt), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      uint8_t* dst = apanel.get() + (m / kMR) * panel_bytes + (m % kMR) * 4;
      sx.get()[m] = quant_act::a8_grouped_row(a, m, quant_act::quantize_row_avx512,
                                              quant_act::quantize_row_lo_avx2, dst, kMR,
                                              gsum.get() + m * a.ngroups);
      for (int64_t g = 0; float_zero && g < a.ngroups; ++g)
        gsum_f.get()[m * a.ngroups + g] = float(gsum.get()[m * a.ngroups + g]);
    }
    TileCtx ctx;
    ctx.a = &a;
    ctx.block_bytes = Kp * 8;
    for_each_tile(n_blocks, stream ? 1 : 2, a.M, kMR, [&](int64_t nb0, int nb, int64_t m0, int mr) {
      ctx.nb0 = nb0;
      ctx.m0 = m0;
      ctx.apanel = apanel.get() + (m0 / kMR) * panel_bytes;
      ctx.sx = sx.get() + m0;
      ctx.gsum = gsum.get() + m0 * a.ngroups;
      ctx.gsum_f = float_zero ? gsum_f.get() + m0 * a.ngroups : nullptr;
      if (stream)
        kStream[mr - 1](ctx);
      else
        pick(mr, nb)(ctx);
    });
  });
}

}  // namespace tersor::gemm_w4a8
