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

// 2:4 conversion (formats/sparse24.py; kernel forms in common/formats.h): the pruning,
// compression and packing a layer's conversion ran as torch ops on every group of 4 (top-k,
// scatter, gather, permutes: ~20 M weights/s on Zen 3, a minute for a 1B Llama), in one pass.
//
// A group's meta byte (p0 | p1 << 2, p0 < p1) keeps its nonzeros, topped up with its lowest
// zero slots; the values are the group's entries at p0 and p1.
//
//   fp32 tiles (S24Group)   values [Np/16][G][2][16] fp32, meta [Np/16][G4][16] uint8
//   int8 tiles (S24I8Tile)  values [Np/16][K8][16][4] int8, meta [Np/16][K8][16] uint8
//   G = ceil(K / 4), G4 = 4 ceil(G / 4), K8 = ceil(G / 2); padding groups and rows: values 0,
//   positions (0, 1)
struct S24PruneArgs {
  const float* rows;   // [N][ld], the dense weight (k >= K read as 0)
  const float* score;  // [N][ld_score] (its magnitude ranks), or nullptr: |rows|
  int64_t ld, ld_score;
  float* values;  // fp32 tiles of ceil(N / 16) blocks
  uint8_t* meta;
  int64_t N, K;
  bool prune;  // groups of more than 2 nonzeros keep the 2 of largest score (else: refused)
  int nthreads;
};

struct S24Rows {
  int64_t nonfinite;  // the first row holding NaN / Inf, or -1
  int64_t dense;      // the first row with a group of > 2 nonzeros left unpruned, or -1
};

// rows -> fp32 tiles. With prune, a group of 3-4 nonzeros keeps the 2 positions of largest
// score, ties to the lower position, a NaN score above any number (torch's descending sort,
// stable); groups of 0-2 nonzeros stay as they are.
S24Rows s24_prune_to_tiles(const S24PruneArgs& a);

struct S24Int8Args {
  const float* values;  // fp32 tiles
  const uint8_t* meta;
  int8_t* values8;  // int8 tiles
  uint8_t* meta8;
  int32_t* colsum;  // [Np]: each row's sum of codes (0 past N)
  float* scale;     // [Np]: amax / 127 of each row's kept values (0 past N)
  int64_t N, K;
  int nthreads;
};

// fp32 tiles -> int8 tiles: symmetric per-row codes round(v / scale) in [-127, 127] (round half
// to even, scale 1 where the row is all zero), the meta of the codes' own nonzeros (a kept
// value that rounds to 0 frees its slot). Returns the first row whose values are not all
// finite, or -1.
int64_t s24_tiles_to_int8(const S24Int8Args& a);

}  // namespace tersor::repack
