// W4 GEMM: fp32 activations x int4 group-wise weights (common/formats.h, W4Tile) dequantized in
// registers. (q - z) * s is factored so the per-weight work is one table lookup and one FMA:
//
//   for each run c of kChunk = 32 consecutive k (never straddling a group g):
//     part = sum_{k in c} x[k] * (q[k] - 8)          fp32 FMAs in k order; q - 8 exact
//     X_c  = sum_{k in c} x[k]                        fp32 adds in k order, once per row
//     t    = fma(8 - z_g, X_c, part)                  == sum x * (q - z), rounded once more
//     acc  = fma(t, s_g, acc)
//   y = acc + bias
//
// Weights enter exactly ((q - 8) and s are exact in fp32); the only rounding is fp32
// accumulation, two-level (32-k chunks), which tests hold to within 3x of torch's F.linear on
// the dequantized weight. All ISA paths agree bit for bit.
//
// Rows in batches (dequantized_rows): the AVX2 kernel from 7 rows on machines without an
// AVX-512 path, the AVX-512 kernel from 16 rows, widen slabs of the dequantized weight into L1
// once for all rows (common/slab_gemm_avx2.h, slab_gemm_avx512.h), and there the dequantized
// weight costs nothing more than q - 8, while the chunk closes above cost the fp32 tile 10-20%.
// So there the rules are those of F.linear on the dequantized weight:
//
//     w[n][k] = (q - z_g) * s_g      exact in fp32 (|q - z| <= 15 times an fp16 scale: at
//                                    most 15 significant bits)
//     acc = 0;  for k in order: acc = fma(x[k], w[n][k], acc);     y = acc + bias
//
// one fp32 FMA chain per output. Chosen by the machine and the rows, not by the forced ISA
// path, so that every path of one machine gives the same bits (the ref computes these rules
// there too); a row's result may differ in the last bits between a call of fewer rows and one
// of more, as it does where the ops switch to the dense panels (ops/dense_path.py).
#pragma once
#include "common/linear_args.h"

namespace tersor::gemm_w4 {

constexpr int64_t kChunk = 32;
constexpr int64_t kDequantMinRows = 7;  // the AVX2 kernel's slabs, from 7 rows
// The AVX-512 slabs, from 16 rows: there they match the register tile (1.02x), from 32 rows
// 1.10-1.12x faster, from 64 rows 1.15-1.22x: 510-540 GFLOP/s where gemm_w8's register tile
// reads 530-563 (Zen 5, 2 threads, g128, 2048x512 .. 8192x2048).
constexpr int64_t kDequantMinRowsAvx512 = 16;

// Whether a call of M rows follows the dequantized rules above: M >= kDequantMinRows on a
// machine whose best path is AVX2 (or the portable ref alone), M >= kDequantMinRowsAvx512 on
// one with an AVX-512 path.
bool dequantized_rows(int64_t M);

// Whether run() over M rows reads bf16 / fp16 rows (a.x_io) and writes them (a.y_io) itself
// (half_io::run_staged's half_rows): where it takes the AVX-512 register tiles.
bool takes_half_rows(int64_t M);

// Chunk sums X[m][c] of x (row stride ceil(K / kChunk)), the same arithmetic in every path.
void chunk_sums(const float* x, int64_t K, float* out);

void run_ref(const PackedW4LinearArgs& a);
void run_avx2(const PackedW4LinearArgs& a);
void run_avx512(const PackedW4LinearArgs& a);
void run(const PackedW4LinearArgs& a);

// The bf16 dot-product path, for CPUs with AVX512-BF16 (vdpbf16ps), used from one row on where
// there is no AMX (ops/gemm_w4.py BF16_MIN_ROWS): the activations rounded to bf16 (nearest even),
// the weights exact ((q - 8) is a small integer), two products per step, exact in fp32 and
// added in fp32 as vdpbf16ps adds them (odd k, then even k, each add rounded; denormals
// flushed), one partial sum per group:
//   xb = bf16(x),  X_g = sum_{k in g} xb[k]   (fp32 adds in k order; zero points only)
//   part_g = sum over pairs of g of  xb[2i+1] (q - 8) then xb[2i] (q - 8)
//   acc = fma(fma(8 - z_g, X_g, part_g), s_g, acc)        (symmetric: 8 - z = 0)
//   y = acc + bias
// Against the fp32 path the only change is the rounding of x (relative 2^-9 per value).
// On AMX-BF16 CPUs (amx_bf16_available(), group_size % 32 == 0, up to kFewRowsMax rows) the
// tile unit sums each group's products instead (run_amx_bf16_rows: part_g in its order, the
// rest as above; tests hold it to the fp64 sum of the rounded operands).
constexpr int64_t kFewRowsMax = 16;  // an A tile's rows
void run_bf16_ref(const PackedW4LinearArgs& a);
void run_avx512bf16(const PackedW4LinearArgs& a);
void run_amx_bf16_rows(const PackedW4LinearArgs& a);
// run_bf16: run_amx_bf16_rows where bf16_rows_on_tiles(M, group_size), else avx512bf16 where
// bf16_dot_available(), else the ref
void run_bf16(const PackedW4LinearArgs& a);
bool bf16_rows_on_tiles(int64_t M, int64_t group_size);

// The scaled form, for batches of rows: the scales go into the widened weights,
//   w = bf16((q - z) * s)     the exact fp32 product rounded to nearest even (relative 2^-9)
//   y = sum_k bf16(x[k]) w[k] (fp32) + bias
// so besides the rounding of x the weights are rounded too, and no group closes the sums.
// run_bf16_tiles runs it, per machine:
// - AMX-BF16 tiles where amx_bf16_available() and group_size % 32 == 0 (gemm_w4_amx.cpp): the
//   tile unit orders the fp32 additions; tests hold it to the fp64 product of the rounded
//   operands (2^-13 relative) and the fp32 path to 2^-8.
// - else one vdpbf16ps chain per output over all of K in pair order (odd k, then even k, each
//   add rounded; products exact) where bf16_dot_available() (run_avx512bf16_scaled), and the
//   C ref of exactly that elsewhere (run_bf16_scaled_ref): bit for bit the same.
void run_amx_bf16(const PackedW4LinearArgs& a);
void run_avx512bf16_scaled(const PackedW4LinearArgs& a);
void run_bf16_scaled_ref(const PackedW4LinearArgs& a);
void run_bf16_tiles(const PackedW4LinearArgs& a);

// fp32 rows on AMX-BF16 tiles (the grouped fp32 form of common/bf16_tiles.h): x = hi + mid +
// lo, three exact bf16 parts, against the exact integers q - z, so every product is exact;
// the tiles add a group's products in fp32 in the tile unit's order, and the group's scale
// closes them in fp32, in group order (tests hold it to the fp64 sum, within the register
// kernel's error):
//   acc = sum_g s_g * (sum_{k in g} sum_xp x_xp[k] (q[k] - z_g)),    y = acc + bias
// Up to kFp32FewRowsMax rows the few-row kernel runs them instead (run_amx_fp32_rows), its A
// tiles holding the three parts' rows of up to kFewRowsMax / 3 rows a pass, against the exact
// q - 8 with the zero points' term (8 - z) X_g, X_g the fp32 sum of the group's x (as the
// register kernel closes its 32-k chunks): family 6 model 167, 2 threads, g128 384x1536 /
// 2048x2048 / 4096x4096, the grouped form's time / the few-row kernel's 1.64-1.74 at 6 rows,
// 1.05-1.13 at 13, 1.01-1.05 at 16 (g32 1.02-1.03).
// run_fp32_tiles: these where amx_bf16_available() and group_size % 32 == 0, else run.
constexpr int64_t kFp32FewRowsMax = 15;  // three passes
void run_amx_fp32(const PackedW4LinearArgs& a);
void run_amx_fp32_rows(const PackedW4LinearArgs& a);
void run_fp32_tiles(const PackedW4LinearArgs& a);

}  // namespace tersor::gemm_w4
