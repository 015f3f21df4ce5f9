// Weight repacking between a format's canonical (checkpoint) form and its kernel form, for
// save_pretrained / load_pretrained / imports: byte shuffles that torch can only do as a chain
// of full-size temporaries (a 1B LLM's int4 codes took ~5 s to save and ~4 s to load that way
// on a slow 2-core VM). Portable code only: the loops are memory-bound and the compiler
// vectorizes them well enough at the baseline ISA.
#pragma once
#include <cstdint>

namespace tersor::repack {

// int4 codes, canonical rows <-> W4Tile codes (formats/int4.py, csrc/common/formats.h):
//
//   rows   [N][ld] bytes, either two codes per byte along K (nibbles: k even in the low
//          nibble, ld >= ceil(K / 2)) or one code per byte (ld >= K)
//   tiles  [Np/16][Kp/8][16][4], Np = 16 * ceil(N / 16), Kp >= K a multiple of 8:
//          byte j of lane c of tile t = q[n][8t + j] | q[n][8t + 4 + j] << 4, n = 16 nb + c
//
//   canonical nibble bytes B0..B3 of one tile's 8 k      tile bytes o0..o3
//     B0 = k0 | k1 << 4    B1 = k2 | k3 << 4               o0 = k0 | k4 << 4   o1 = k1 | k5 << 4
//     B2 = k4 | k5 << 4    B3 = k6 | k7 << 4               o2 = k2 | k6 << 4   o3 = k3 | k7 << 4
struct Int4Args {
  uint8_t* tiles;
  uint8_t* rows;
  int64_t N, K, Kp, ld;
  bool nibbles;  // rows hold two codes per byte (else one)
  int nthreads;
};

// rows -> tiles; codes at k >= K and rows n >= N are 0 (what pack_int4 writes).
void int4_rows_to_tiles(const Int4Args& a);
// tiles -> rows over k < K; with nibbles, an odd K's last high nibble is 0.
void int4_tiles_to_rows(const Int4Args& a);

// int8 codes, canonical rows <-> W8Tile ("VNNI4") blocks (formats/int8.py):
//
//   rows   int8 [N][ld], ld >= K
//   tiles  int8 [Np/16][Kp/4][16][4], Kp = 4 ceil(K / 4): lane c of tile t holds
//          q[16 nb + c][4t .. 4t + 3], zeros past K and past N
struct Int8Args {
  int8_t* tiles;
  int32_t* colsum;  // [Np]: each row's sum (0 past N), the VNNI kernels' offset term
  int8_t* rows;
  int64_t N, K, Kp, ld;
  int nthreads;
};

struct Int8Range {
  int min, max;  // over the rows' codes (0, 0 when there are none)
};

// rows -> tiles and colsum, in one pass; returns the codes' range (the caller checks -128
// and finds 7-bit weights from it, with no second pass over the weight).
Int8Range int8_rows_to_tiles(const Int8Args& a);
// tiles -> rows over k < K (colsum unused).
void int8_tiles_to_rows(const Int8Args& a);

// Activations of an act-order layer (GPTQ's input permutation, formats/int4.py):
// y[m][k] = x[m][perm[k]] for M rows of K elements of `bytes` (2 or 4) each, row strides ldx /
// ldy in elements, rows split over the threads. torch's index_select along the last dimension
// ran at ~4 GB/s here (a MiniLM act-order GPTQ variant spent ~7 ms of 28 in it per batch).
// perm must hold K indices in [0, K) (the caller checks it once, when the layer is built).
void gather_columns(const void* x, int64_t M, int64_t K, int64_t ldx, const int64_t* perm,
                    void* y, int64_t ldy, int bytes, int nthreads);

}  // namespace tersor::repack
