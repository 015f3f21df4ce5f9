// The large-M driver shared by the W8A8 register tiles that read their rows through one pointer
// per row (tile_avx2.h, and the AVX-512 VNNI direct convolution): the GEMM's quantized rows, or
// a convolution's output pixels read in place from its int8 input. ISA-neutral; included from
// the ISA files (every function here is a template or static: see common/parallel.h).
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/linear_args.h"
#include "common/parallel.h"

namespace tersor::gemm_w8a8 {

// Where the codes of a row come from, for every tile of one row block:
//   row r's k-th 4-code group lies at  row[r] + run_offset[i] + 4 * g
//   for run i in [0, n_runs), group g in [0, run_groups), k = (i * run_groups + g) * 4.
//   - GEMM: row[r] = the row's Kp quantized codes, one run.
//   - direct conv: row[r] = the output pixel's first tap in the int8 NHWC input, one run per
//     kernel row (kw * C contiguous codes) or per tap when dilated.
struct RowRuns {
  const int64_t* run_offset;
  int64_t n_runs, run_groups;
};

// Codes out instead of fp32 (the static int8 pipeline, conv/requant.h after fold_output_scale:
// a.w_scale / a.bias hold the folded factors m / c, the input scale is 1):
//   t = fma(float(acc), m[n], c[n]);  res: t = fma(float(res), res_scale, t)
//   q = cvt(min(max(t, lo), hi))      (round half to even; finite factors: t is never NaN)
struct CodesOut {
  int8_t* q;  // [M][ldq]
  int64_t ldq;
  const int8_t* res;  // [M][ldres] or null
  int64_t ldres;
  float res_scale, lo, hi;
};

constexpr int64_t kRowsPerBlock = 64;

// The rows of one block of kRowsPerBlock, with tiles of MR rows.
template <int MR>
struct RowBlock {
  const uint8_t* row[kRowsPerBlock] = {};  // a short tile copies the entries past its rows
                                           // (null or stale) but never reads through them
  float sx[kRowsPerBlock];
  bool non_negative[kRowsPerBlock / MR];  // per tile: every code >= 0, the plain u8 x s8 tile
  bool biased = false;  // the codes are stored as u8 a + 128 (narrow weights, tile_avx2.h)
  // Signed rows split into |a| and sign masks, with their sums of |a| over the negative codes
  // (the AVX2 GEMM: tile_avx2.h kXorA).
  bool split = false;
  int32_t neg_sum[kRowsPerBlock];
  RowRuns runs{nullptr, 0, 0};            // shared by every row
  const CodesOut* codes = nullptr;        // codes out (the static pipeline), or fp32 to a.y
  // A grouped convolution: column block b reads its rows group_bytes * (16 b / group_cols)
  // further on (its group's channels); group_cols 0: every block reads the rows as given.
  int64_t group_cols = 0, group_bytes = 0;
};

// Large M, inside an OpenMP parallel region: threads split the rows in blocks of
// kRowsPerBlock; prepare(m0, m1, block) fills a block's row sources, then every column block
// runs over it while its codes sit in L1/L2:
//   tile(block, m, mr, blk, nb, shift): rows m .. m + mr (mr <= MR) of the block, column blocks
//   blk .. blk + nb (nb <= NB, all in one group), each row pointer `shift` bytes further on.
// The whole weight streams once per block: 64 MACs per weight byte, far below what L3
// delivers. When there are fewer row blocks than 8 per thread (a 7x7 layer at batch 1 is one
// block, at batch 8 seven), a row block's columns may be split between threads, so no thread
// idles long at the end; a thread's work is then one consecutive run: prepare runs once per row
// block and thread (the GEMM quantizes the block's rows there), and the weight still streams
// once per row block. With 8 row blocks per thread or more, threads take whole row blocks in
// turn (below).
//
// kRowSpans: tile is called once per row block and column step with mr = the block's row count
// (m its first row), and runs the block's row tiles itself (the AVX2 tiles: tile_avx2.h).
template <int MR, int NB, bool kRowSpans = false, typename Prepare, typename Tile>
static inline void run_row_blocks(const PackedW8LinearArgs& a, Prepare&& prepare, Tile&& tile) {
  static_assert(kRowsPerBlock % MR == 0, "a row block holds whole tiles");
  const int64_t n_blocks = (a.N + 15) / 16;
  const int64_t row_blocks = (a.M + kRowsPerBlock - 1) / kRowsPerBlock;
#if defined(_OPENMP)
  const int64_t nt = omp_get_num_threads();
#else
  const int64_t nt = 1;
#endif
  RowBlock<MR> block;
  int64_t prepared = -1;  // the row block `block` holds
  // column blocks [b0, b1) of row block rb
  const auto run_span = [&](int64_t rb, int64_t b0, int64_t b1) {
    const int64_t m0 = rb * kRowsPerBlock, m1 = std::min(a.M, m0 + kRowsPerBlock);
    if (rb != prepared) prepare(m0, m1, block);
    prepared = rb;
    const int64_t group_blocks = block.group_cols ? block.group_cols / 16 : n_blocks;
    for (int64_t blk = b0; blk < b1;) {
      const int64_t group = blk / group_blocks;  // a tile never straddles two groups
      const int nb =
          static_cast<int>(std::min<int64_t>({NB, b1 - blk, (group + 1) * group_blocks - blk}));
      const int64_t shift = block.group_cols ? group * block.group_bytes : 0;
      if constexpr (kRowSpans) {
        tile(block, m0, static_cast<int>(m1 - m0), blk, nb, shift);
      } else {
        for (int64_t m = m0; m < m1; m += MR)
          tile(block, m, static_cast<int>(std::min<int64_t>(MR, m1 - m)), blk, nb, shift);
      }
      blk += nb;
    }
  };
  // Many row blocks (8 or more per thread), or one tile's columns: threads take whole row blocks
  // one at a time, so a thread whose core is slowed (a neighbour on the host, interrupts on the
  // first vCPU) does fewer. With a fixed split the other thread waited at the region's end:
  // ResNet-18 at batch 8 on Zen 3 spent 10% of its CPU time spinning in libgomp, 5% taking the
  // blocks in turn.
  if (row_blocks >= 8 * nt || n_blocks <= NB) {
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t rb = 0; rb < row_blocks; ++rb) run_span(rb, 0, n_blocks);
    return;
  }
  // Fewer: each thread takes one run of the (row block, column block) pairs in order, balanced
  // by work (a pair is its row block's rows), so a row block's columns may be split between two
  // threads. Items of a third of a row block's columns each left a 7x7 layer at batch 8 (six row
  // blocks of 64 rows, one of 8) 640 rows' work on one thread and 536 on the other: two threads
  // ran it 1.77x as fast as one, now 1.97x (Zen 5).
  const int64_t head = (row_blocks - 1) * kRowsPerBlock, last = a.M - head;
  const auto pair_at = [&](int64_t w) {  // the first pair with w work before it
    const bool in_head = w < head * n_blocks;
    const int64_t rb = in_head ? w / (kRowsPerBlock * n_blocks) : row_blocks - 1;
    const int64_t rows = in_head ? kRowsPerBlock : last, rem = w - rb * kRowsPerBlock * n_blocks;
    return rb * n_blocks + std::min(n_blocks, (rem + rows / 2) / rows);
  };
  int64_t w0, w1;
  thread_range(a.M * n_blocks, &w0, &w1);
  const int64_t p1 = w1 == a.M * n_blocks ? row_blocks * n_blocks : pair_at(w1);
  for (int64_t p = pair_at(w0); p < p1;) {
    const int64_t rb = p / n_blocks, b0 = p % n_blocks, b1 = std::min(n_blocks, b0 + p1 - p);
    run_span(rb, b0, b1);
    p += b1 - b0;
  }
}

}  // namespace tersor::gemm_w8a8
