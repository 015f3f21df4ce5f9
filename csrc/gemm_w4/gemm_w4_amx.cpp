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
#include <type_traits>

#include "common/bf16_tiles.h"
#include "common/formats.h"
#include "common/simd.h"
#include "common/weight_stream.h"
#include "gemm_w4/bf16_pairs.h"
#include "gemm_w4/gemm_w4.h"
#include "half_io/half_avx512.h"

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

// ---- A few rows: the group form on the tiles (run_amx_bf16_rows, run_amx_fp32_rows) -----------
//
// One row against a W4 weight is a GEMV: per 16 weights the register kernel spends a shift, a
// vpermps and an FMA on ports 0 / 5. Here W4Pairs widens 128 weights in 8 instructions into
// bf16(q - 8) pairs, and the tile unit does the multiply-adds: a tile product whose A and C
// tiles have as few rows as the call (configured so) costs about as much for 1 as for 4 rows
// (~3 ns against ~5 ns for 16 rows, family 6 model 167). Per 32-k step, up to four 16-column
// blocks side by side:
//
//   A (tmm4):        the rows' bf16 values of the step, M rows of 64 bytes (A16 rows)
//   B (tmm5..7):     a block's 16 pair rows, just widened into L1 (two buffers by step parity)
//
//                    pair row kk (64 bytes) = bf16(q - 8) of k = 32 s + 2kk, 2kk + 1, 16 columns
//
//   C (tmm0..3):     part[r][n] = sum_{k in g} xb[r][k] (q[k][n] - 8), zeroed per group
//
// and each group closes in fp32 as gemm_w4.h's group form does, t = fma(8 - z, X_g, part),
// acc = fma(t, s, acc): only the order of the fp32 additions inside a group is the tile unit's.
// bf16 rows are read as they are (no staging), and half outputs rounded in the epilogue.
//
// fp32 rows (run_amx_fp32_rows, kFewRowsMax / 3 rows a pass): each row as three exact bf16 parts
// x = hi + mid + lo (bf16_tiles.h split_row_tiled), the parts' rows one above the other in the
// A and C tiles (rows p P + r, P rows a part), so every product is exact; a group's part is
// then (C[r] + C[P + r]) + C[2P + r], and X_g the sum of the fp32 values.
namespace few_rows {

constexpr int kBlocks = 4;       // column blocks side by side (C tiles 0..3)
constexpr int kMaxPasses = 3;    // kFp32FewRowsMax rows of fp32 in passes of kFewRowsMax / 3
constexpr int64_t kAhead = 32;   // W4Tiles prefetched ahead on each block's stream
constexpr int64_t kChunkABytes = 512 << 10;  // a k chunk's A rows, kept in L2

// One pass of rows through the tiles: `rows` rows of the call from m0, each part's rows
// part_rows apart in the A and C tiles (parts x part_rows tile rows; the last pass of fp32
// rows may leave some of them zero).
struct Rows {
  const uint16_t* a16;  // the pass's A rows (tile row i at i * lda), bf16, zero past K
  int64_t lda;
  const float* X;  // the pass's group sums, rows ngroups apart (zero points only)
  int parts;       // 1 (bf16 rows) or 3 (fp32 rows: hi, mid, lo)
  int64_t m0, rows, part_rows;
};

// P passes share each step's widened pairs (fp32 rows past kFewRowsMax / 3: the widening
// costs more than the tile products, so it is done once for every pass). The tiles, by P:
//
//   P = 1: C (block j) tmm j (j < 4)      A tmm4                  B tmm5, 6, 7, 5
//   P = 2: C (pass p, block j) tmm 2p + j  A tmm4 / tmm7 (pass 0 / 1)  B tmm5, 6   (2 blocks)
//   P = 3: C (pass p) tmm p                A tmm4 / tmm7 / tmm3        B tmm5      (1 block)
//
// so every step runs four (P = 3: three) independent C tiles. Family 6 model 167, 2 threads,
// fp32 rows, g128, one pass at a time over a block group / the passes sharing the pairs (and
// k chunks, run below): 4096x4096 L3-resident 0.76 / 0.62, 0.79 / 0.57, 1.14 / 0.89 ms at 6 /
// 8 / 13 rows; 28672x8192 from DRAM 11.8 / 8.7 ms at 8 rows, 17.0 / 12.9 at 13.
template <int P>
constexpr int blocks_side_by_side() { return P == 1 ? kBlocks : P == 2 ? 2 : 1; }

// GCC's tile intrinsics take the tile numbers as literals (they are pasted into the asm)
#define TERSOR_PRODUCT(J, B, pairs16) \
  _tile_loadd(B, pairs16, 64);        \
  _tile_dpbf16ps(J, 4, B)  // C_J += A x the block's pair rows
#define TERSOR_TAKE_PART(J, part) \
  _tile_stored(J, part, 64);      \
  _tile_zero(J)  // C_J -> part (rows of 64 bytes), then zeroed

// The sums of a block group between k chunks (zeroed before the first, to y after the last)
template <int P>
using Acc = float[P][blocks_side_by_side<P>()][kFewRowsMax][16];

// Blocks nb0 .. nb0 + nb - 1 (nb <= blocks_side_by_side<P>()) for the P passes' rows, groups
// [g0, g1) of K into acc.
template <int P>
void blocks(const PackedW4LinearArgs& a, const Rows* rows, int64_t Kp, int64_t nb0, int nb,
            int64_t g0, int64_t g1, Acc<P>& acc, uint32_t (*bufs)[kBlocks][256]) {
  constexpr int NB = blocks_side_by_side<P>();
  const W4Pairs pairs_of;
  const int64_t G = a.group_size, steps = G / 32;
  const uint8_t* w[NB];
  alignas(64) float part[2][P][NB][kFewRowsMax][16];  // by group parity
  for (int j = 0; j < nb; ++j) {
    w[j] = a.w + (nb0 + j) * Kp * 8;
    for (int p = 0; g0 == 0 && p < P; ++p)
      for (int64_t r = 0; r < rows[p].rows; ++r) _mm512_store_ps(acc[p][j][r], _mm512_setzero_ps());
  }
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  if constexpr (P < 3) { _tile_zero(3); }
  // step s's pairs into bufs[s & 1], widened one step ahead of its tile products so that
  // the stores are in L1 when the tiles load them
  auto widen = [&](int64_t s) {
    uint32_t(*b)[256] = bufs[s & 1];
    for (int j = 0; j < nb; ++j) {
      const uint8_t* t = w[j] + s * 256;  // the step's 4 W4Tiles
      for (int u = 0; u < 4; ++u) {
        // past the block's end: the next block's start, or nothing (a prefetch never faults)
        _mm_prefetch(reinterpret_cast<const char*>(t + (u + kAhead) * 64), _MM_HINT_T0);
        __m512i q[4];
        pairs_of(t + u * 64, q);
        for (int i = 0; i < 4; ++i) _mm512_store_si512(b[j] + (4 * u + i) * 16, q[i]);
      }
    }
  };
  // acc (+)= group g's sums (part[g & 1]) closed: t = fma(8 - z, X_g, part), acc = fma(t, s, acc)
  auto close = [&](int64_t g) {
    for (int j = 0; j < nb; ++j) {
      const int64_t meta = ((nb0 + j) * a.ngroups + g) * 16;
      const __m512 sc =
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.scale + meta)));
      const __m512 zc =  // 8 - z
          a.zero ? _mm512_cvtepi32_ps(_mm512_sub_epi32(
                       _mm512_set1_epi32(8), _mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                 reinterpret_cast<const __m128i*>(a.zero + meta)))))
                 : _mm512_setzero_ps();
      for (int p = 0; p < P; ++p) {
        const Rows& pass = rows[p];
        const float(*c)[16] = part[g & 1][p][j];
        const int64_t R = pass.part_rows;
        for (int64_t r = 0; r < pass.rows; ++r) {
          __m512 sum = _mm512_load_ps(c[r]);
          if (pass.parts == 3)
            sum = _mm512_add_ps(_mm512_add_ps(sum, _mm512_load_ps(c[R + r])),
                                _mm512_load_ps(c[2 * R + r]));
          const __m512 X = _mm512_set1_ps(a.zero ? pass.X[r * a.ngroups + g] : 0.0f);
          const __m512 t = _mm512_fmadd_ps(zc, X, sum);
          _mm512_store_ps(acc[p][j][r], _mm512_fmadd_ps(t, sc, _mm512_load_ps(acc[p][j][r])));
        }
      }
    }
  };
  const int64_t last_step = g1 * steps - 1;
  widen(g0 * steps);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t s = g * steps; s < (g + 1) * steps; ++s) {
      if (s < last_step) widen(s + 1);
      uint32_t(*b)[256] = bufs[s & 1];
      const uint16_t* a0 = rows[0].a16 + s * 32;
      const int64_t lda_bytes = rows[0].lda * 2;
      if constexpr (P == 1) {
        _tile_loadd(4, a0, lda_bytes);
        TERSOR_PRODUCT(0, 5, b[0]);
        if (nb > 1) { TERSOR_PRODUCT(1, 6, b[1]); }
        if (nb > 2) { TERSOR_PRODUCT(2, 7, b[2]); }
        if (nb > 3) { TERSOR_PRODUCT(3, 5, b[3]); }
      } else if constexpr (P == 2) {
        _tile_loadd(5, b[0], 64);
        if (nb > 1) { _tile_loadd(6, b[1], 64); }
        _tile_loadd(4, a0, lda_bytes);
        _tile_dpbf16ps(0, 4, 5);
        if (nb > 1) { _tile_dpbf16ps(1, 4, 6); }
        _tile_loadd(7, rows[1].a16 + s * 32, lda_bytes);
        _tile_dpbf16ps(2, 7, 5);
        if (nb > 1) { _tile_dpbf16ps(3, 7, 6); }
      } else {
        _tile_loadd(5, b[0], 64);
        _tile_loadd(4, a0, lda_bytes);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(7, rows[1].a16 + s * 32, lda_bytes);
        _tile_dpbf16ps(1, 7, 5);
        _tile_loadd(3, rows[2].a16 + s * 32, lda_bytes);
        _tile_dpbf16ps(2, 3, 5);
      }
    }
    // group g - 1 closes now, while the tile unit works on group g's products; its sums were
    // stored one group ago (a tile store read back at once stalls: g32 ran 1.6x slower)
    if (g > g0) close(g - 1);
    float(*q)[NB][kFewRowsMax][16] = part[g & 1];
    if constexpr (P == 1) {
      TERSOR_TAKE_PART(0, q[0][0][0]);
      if (nb > 1) { TERSOR_TAKE_PART(1, q[0][1][0]); }
      if (nb > 2) { TERSOR_TAKE_PART(2, q[0][2][0]); }
      if (nb > 3) { TERSOR_TAKE_PART(3, q[0][3][0]); }
    } else if constexpr (P == 2) {
      TERSOR_TAKE_PART(0, q[0][0][0]);
      if (nb > 1) { TERSOR_TAKE_PART(1, q[0][1][0]); }
      TERSOR_TAKE_PART(2, q[1][0][0]);
      if (nb > 1) { TERSOR_TAKE_PART(3, q[1][1][0]); }
    } else {
      TERSOR_TAKE_PART(0, q[0][0][0]);
      TERSOR_TAKE_PART(1, q[1][0][0]);
      TERSOR_TAKE_PART(2, q[2][0][0]);
    }
  }
  close(g1 - 1);
  if (g1 < a.ngroups) return;
  for (int j = 0; j < nb; ++j) {
    const int64_t n = (nb0 + j) * 16;
    const __mmask16 mask = tail_mask16(a.N - n);
    const __m512 bias = bias16(a.bias, n, mask);
    for (int p = 0; p < P; ++p)
      for (int64_t r = 0; r < rows[p].rows; ++r)
        half_io::store_y16(a, rows[p].m0 + r, n, mask,
                           _mm512_add_ps(_mm512_load_ps(acc[p][j][r]), bias));
  }
}

// Row m into `row` (Kp bf16, zero past K): one part, bf16 rows as they are and fp32 rows
// rounded to nearest even (round_row_bf16), with zero points X[g] = the group's sum of those
// values in fp32, k order; three parts (fp32 rows) part_stride apart, X[g] the sum of the fp32
// values.
void stage_row(const PackedW4LinearArgs& a, int parts, int64_t m, int64_t Kp, uint16_t* row,
               int64_t part_stride, float* X) {
  if (parts == 3) {
    const float* x = a.x + m * a.ldx;
    bf16_tiles::split_row_tiled(x, a.K, Kp, row, part_stride, bf16_tiles::kStep);
    for (int64_t g = 0; X && g < a.ngroups; ++g) {
      float sum = 0.0f;
      for (int64_t k = g * a.group_size; k < std::min(a.K, (g + 1) * a.group_size); ++k)
        sum += x[k];
      X[g] = sum;
    }
    return;
  }
  if (a.x_io == half_io::BF16) {
    const uint16_t* x = reinterpret_cast<const uint16_t*>(a.x) + m * a.ldx;
    std::memcpy(row, x, a.K * 2);
    std::memset(row + a.K, 0, (Kp - a.K) * 2);
  } else {
    round_row_bf16(a.x + m * a.ldx, a.K, Kp, row);
  }
  if (X) group_sums_bf16(row, a.ngroups, a.group_size, X);
}

// parts = 1: up to kFewRowsMax bf16 rows in one pass; 3: fp32 rows in passes of up to
// kFewRowsMax / 3 rows, all of them over each step's widened pairs (blocks<P>), so the weights
// are read from memory and widened once, as the register kernel reads them.
void run(const PackedW4LinearArgs& a, int parts) {
  const int64_t Kp = a.ngroups * a.group_size;  // a multiple of 32 (bf16_rows_on_tiles)
  const int64_t n_blocks = (a.N + 15) / 16;
  const int64_t part_rows = parts == 1 ? a.M : std::min<int64_t>(a.M, kFewRowsMax / 3);
  const int passes = static_cast<int>((a.M + part_rows - 1) / part_rows);
  const int64_t tile_rows = parts * part_rows;
  const int nt = threads_for_work(double(a.M) * a.N * a.K, a.nthreads);
  // T0 prefetches even for a weight that streams (the call only records the read): AMX CPUs
  // are Intel's, where prefetchnta fills L1 past the L2 streamer (weight_stream.h). W4 g128
  // 28672x8192 from DRAM, family 6 model 167, 2 threads: bf16 rows at 2 / 8 rows 10.2 / 12.5 ms
  // with NTA, 4.9 / 5.6 with T0; fp32 rows at 2 rows 12.0 ms against 5.2.
  weight_stream_nta(a.w, n_blocks * Kp * 8);
  const int team_size = ::tersor::team(nt);
  // k chunks of whole groups whose A rows (all passes) take at most kChunkABytes
  const int64_t chunk_groups =
      std::max<int64_t>(1, kChunkABytes / (passes * tile_rows * a.group_size * 2));
  // per thread: its own copy of the rows (no barrier), their group sums, two step buffers,
  // the sums of its block groups between k chunks (room for every block: a thread touches only
  // its share, at most 3 KiB a block)
  const int64_t a16_bytes = round_up(passes * tile_rows * Kp * 2, 64);
  const int64_t X_bytes = round_up(a.M * a.ngroups * 4, 64);
  const int64_t state_bytes = (n_blocks + kBlocks) * kMaxPasses * kFewRowsMax * 64;
  const int64_t per_thread = a16_bytes + X_bytes + 2 * kBlocks * 1024 + state_bytes;
  auto scratch = alloc_scratch<char>(team_size * per_thread);
  parallel_team(team_size, [&] {
    char* mine = scratch.get() + thread_index() * per_thread;
    uint16_t* a16 = reinterpret_cast<uint16_t*>(mine);
    float* X = a.zero ? reinterpret_cast<float*>(mine + a16_bytes) : nullptr;
    auto bufs = reinterpret_cast<uint32_t(*)[kBlocks][256]>(mine + a16_bytes + X_bytes);
    char* state = mine + a16_bytes + X_bytes + 2 * kBlocks * 1024;
    std::memset(a16 + (passes - 1) * tile_rows * Kp, 0, tile_rows * Kp * 2);  // a short pass
    for (int64_t m = 0; m < a.M; ++m) {
      uint16_t* row = a16 + (m / part_rows * tile_rows + m % part_rows) * Kp;
      stage_row(a, parts, m, Kp, row, part_rows * Kp, X ? X + m * a.ngroups : nullptr);
    }
    Rows pass[kMaxPasses];
    for (int p = 0; p < passes; ++p) {
      const int64_t m0 = p * part_rows;
      pass[p] = Rows{a16 + p * tile_rows * Kp, Kp, X ? X + m0 * a.ngroups : X, parts, m0,
                     std::min(part_rows, a.M - m0), part_rows};
    }
    // C and A tiles of the passes' rows, B tiles of 16 pair rows (the map above blocks<P>)
    const uint8_t r = static_cast<uint8_t>(tile_rows), r7 = passes > 1 ? r : 16;
    const uint8_t shape_rows[8] = {r, r, r, r, r, 16, 16, r7};
    const uint16_t shape_colsb[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    gemm_w8a8::amx_configure_tile_shapes(shape_rows, shape_colsb);
    int64_t b0, b1;
    thread_range(n_blocks, &b0, &b1);
    // k chunk by k chunk, each over all of the thread's block groups, so that the chunk's A
    // rows stay in L2 (a long K's rows did not: 28672 k of 3 passes are 2.6 MiB)
    auto sweep = [&](auto p_passes) {
      constexpr int P = decltype(p_passes)::value, NB = blocks_side_by_side<P>();
      auto* acc = reinterpret_cast<Acc<P>*>(state);
      for (int64_t g0 = 0; g0 < a.ngroups; g0 += chunk_groups) {
        const int64_t g1 = std::min(a.ngroups, g0 + chunk_groups);
        for (int64_t nb0 = b0, i = 0; nb0 < b1; nb0 += NB, ++i)
          blocks<P>(a, pass, Kp, nb0, static_cast<int>(std::min<int64_t>(NB, b1 - nb0)), g0, g1,
                    acc[i], bufs);
      }
    };
    if (passes == 1) sweep(std::integral_constant<int, 1>());
    else if (passes == 2) sweep(std::integral_constant<int, 2>());
    else sweep(std::integral_constant<int, 3>());
    _tile_release();
  });
}

#undef TERSOR_PRODUCT
#undef TERSOR_TAKE_PART

}  // namespace few_rows

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

void run_amx_bf16_rows(const PackedW4LinearArgs& a) { few_rows::run(a, 1); }

void run_amx_fp32_rows(const PackedW4LinearArgs& a) { few_rows::run(a, 3); }

}  // namespace tersor::gemm_w4
