// Packed weight layouts shared by the kernels. The Python side (python/tersor/formats/) builds
// them at conversion; the diagrams below and there must agree.
#pragma once
#include <cstdint>

namespace tersor {

// ---------------------------------------------------------------------------------------------
// int8 per-output-channel weight, "VNNI4" blocked layout (used by gemm_w8a8, gemm_w8, dequant).
//
//   W is N x K (y = x W^T). Pad N up to Np = 16*ceil(N/16), K up to Kp = 4*ceil(K/4) with zeros.
//
//   packed[Np/16][Kp/4]  of  W8Tile:        one W8Tile = 64 bytes = one zmm load
//
//            k4 = 0          k4 = 1                       byte j of lane c holds W[16*nb + c][4*k4 + j]
//   nb=0  | W8Tile | W8Tile | ... | W8Tile |     W8Tile:  lane c = 0       1             15
//   nb=1  | W8Tile | ...                   |              [k0 k1 k2 k3][k0 k1 k2 k3]...[k0 k1 k2 k3]
//   ...                                                    (4 consecutive k of one column = one
//                                                           32-bit lane of vpdpbusd)
//
//   A column block (16 outputs, all of K) is one contiguous stream of Kp*16 bytes, which is what
//   a bandwidth-bound M = 1 kernel wants; a compute-bound kernel reads NB blocks side by side.
//   AVX2 reads a tile as two ymm: columns 0-7 then 8-15.
//   Values are in [-127, 127] (symmetric; -128 is never produced) so that the AVX2 sign trick
//   (|a| * sign(w, a) with vpmaddubsw) cannot saturate.
//   Beside it: scale[Np] (fp32, 0 in the padding) and colsum[Np] (int32, sum_k W[n][k]) which
//   the VNNI kernel needs to undo its +128 activation offset.
struct W8Tile {
  int8_t q[16][4];
};
static_assert(sizeof(W8Tile) == 64, "W8Tile must be exactly one 64-byte vector");

constexpr int kW8BlockN = 16;  // output columns per tile
constexpr int kW8BlockK = 4;   // k values per 32-bit lane

static inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace tersor

namespace tersor {

// ---------------------------------------------------------------------------------------------
// int4 group-wise weight (used by gemm_w4, gemm_w4a8, dequant). Codes q in [0, 15], zero point z
// per (column, group) (symmetric: z = 8), W[n][k] = (q - z) * scale[n][k / G].
//
//   K padded to Kp = ngroups * G (G a multiple of 8), N to Np = 16 * ceil(N / 16).
//
//   codes[Np/16][Kp/8]  of  W4Tile            one W4Tile = 64 bytes = 16 columns x 8 k
//
//   W4Tile lane c (4 bytes) of tile t:  byte j = q[c][8t + j]  |  q[c][8t + 4 + j] << 4
//
//        byte:      0          1          2          3
//        low  4b:  k0         k1         k2         k3      <- (v & 0x0f): 4 consecutive k,
//        high 4b:  k4         k5         k6         k7      <- (v >> 4 & 0x0f): the next 4,
//                                                              each exactly one VNNI lane
//   so the int8 kernels need no shuffle (activations stay in natural k order), and the float
//   kernels get k = 8t + i of all 16 columns with one shift and one mask of the whole zmm.
//
//   scale[Np/16][ngroups][16]  fp16   (16 columns of one group: one vcvtph2ps)
//   zero [Np/16][ngroups][16]  uint8  (asymmetric only; absent for symmetric)
struct W4Tile {
  uint8_t q[16][4];
};
static_assert(sizeof(W4Tile) == 64, "W4Tile must be exactly one 64-byte vector");

constexpr int kW4TileK = 8;  // k values per W4Tile

}  // namespace tersor

namespace tersor {

// ---------------------------------------------------------------------------------------------
// 2:4 semi-structured sparse fp32 weight (used by spmm_24). In every group of 4 consecutive k
// of a column at most 2 weights are nonzero; we keep exactly 2 (a zero may be kept).
//
//   values[Np/16][K/4][2][16] fp32    per column block and group: the kept value at the lower
//                                     position (16 lanes), then the one at the higher position
//   meta  [Np/16][K4p][16]   uint8    lane c: p0 | p1 << 2 (positions 0..3, p0 < p1);
//                                     K4p = K/4 rounded up to 4 so one 64-byte load covers
//                                     4 groups = 16 k
//
//   y[n] += x[4g + p0] * v0 + x[4g + p1] * v1: the 16 lanes pick their x with one vpermps
//   from x[16 k] by index 4 (g % 4) + p. Half the weight bytes of dense fp32, plus 1/16.
struct S24Group {
  float v[2][16];
};
static_assert(sizeof(S24Group) == 128, "S24Group must be two 64-byte vectors");

}  // namespace tersor

namespace tersor {

// ---------------------------------------------------------------------------------------------
// 2:4 sparse int8 weight (used by spmm_24's W8A8 kernels). Same pattern as S24Group, values
// quantized symmetric per output channel (int8 in [-127, 127], scale[Np] fp32, colsum[Np]).
// Two groups of 4 k (8 k) of 16 columns make one 64-byte tile, one VNNI lane per column:
//
//   values[Np/16][K8][16][4] int8   (S24I8Tile; K8 = ceil(K / 8), K padded with zero groups)
//       lane c: [ v0(g)  v1(g)  v0(g+1)  v1(g+1) ]      g = 2 * k8
//   meta  [Np/16][K8][16]    uint8
//       lane c: p0 | p1 << 2 | p2 << 4 | p3 << 6       (p0 < p1 in group g, p2 < p3 in g + 1)
//
//   The kernel turns a lane's meta byte into the 4 byte indices p0, p1, 4 + p2, 4 + p3 (shifts
//   and one mask), broadcasts 8 activation bytes to every 64-bit slot and lets vpshufb hand
//   each lane its own 4 activations: one shuffle + one vpdpbusd per 8 k of 16 columns, and
//   80 bytes read where dense int8 reads 128.
struct S24I8Tile {
  int8_t v[16][4];
};
static_assert(sizeof(S24I8Tile) == 64, "S24I8Tile must be exactly one 64-byte vector");

}  // namespace tersor

namespace tersor {

// ---------------------------------------------------------------------------------------------
// Block-sparse weight (used by spmm_block): BSR over panels of 16 output channels, blocks of
// 16 channels x BK k (fp32: BK = 1, one zmm; int8: BK = 4, one W8Tile):
//
//   ptr [Np/16 + 1] int64        panel p owns blocks ptr[p] .. ptr[p+1]-1
//   kidx[blocks]    uint16       k / BK of each block, ascending within a panel
//   values                       fp32 BlockF32[blocks]  or  int8 W8Tile[blocks]
//
//   panel p:  [ blk @ k=3 ][ blk @ k=17 ][ blk @ k=18 ] ...      (only blocks holding a
//              16 lanes      16 lanes      16 lanes               nonzero are stored)
//
// A block costs what a dense GEMM's inner step costs (one broadcast of x + one FMA / vpdpbusd
// per row), so the kernel runs at dense efficiency per stored block.
struct BlockF32 {
  float v[16];
};
static_assert(sizeof(BlockF32) == 64, "BlockF32 must be exactly one 64-byte vector");

}  // namespace tersor
