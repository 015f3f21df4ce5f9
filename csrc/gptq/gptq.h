// GPTQ's column pass over one block of columns (python/tersor/calibration/gptq.py has the
// method): quantize column i, push its error onto the block's later columns through row i of
// U (the upper Cholesky factor of H^-1). Rows of W are independent given U, so each thread
// takes its own rows and the pass needs no synchronization; the update of the columns after
// the block stays one GEMM in torch.
//
// Done natively because the pass is a chain of tiny steps: one column of a 384-row layer is
// ~0.1 us of arithmetic, while each torch call of the Python loop costs 5-60 us of dispatch on
// a slow core (~2.5 s of a MiniLM GPTQ variant, ~20 s of a 1B LLM's).
//
// Layout: the block as rows of W^T (a column of W is one contiguous row of n floats):
//
//   w    [B][ldw]  the block's columns, updated in place      (W^T rows i1 .. i2 - 1)
//   u    [B][ldu]  the block's square of U: u[i][j], j > i, and the diagonal
//   err  [B][n]    (w - value) / u[i][i]: what the caller spreads over the later columns
//   q    [B][ldq]  codes (as floats), deq [B][ldq] their values
//
// Grid, the rules of round-to-nearest (formats/int4.py group_grid, formats/int8.py):
//   code  = clamp(round_half_even(w / safe) + zero, qlo, qhi)   (0 where keep says pruned)
//   value = (code - zero) * safe
// group > 0: int4 groups of `group` columns; at a group's first column each row's scale and
// zero point come from the current (already updated) weights of the group's columns:
//   symmetric: scale = fp16(max(-min, max) / 7), zero = 8
//   else:      lo = min(min, 0), hi = max(max, 0), scale = fp16((hi - lo) / 15),
//              zero = clamp(round_half_even(-lo / safe), 0, 15)
//   safe = scale > 0 ? scale : 1; written to group_scale / group_zero [B / group][n].
// group == 0: the fixed grid safe[n], zero[n] (int8 per channel, or one int4 group per row).
//
// Pruning (SparseGPT, python/tersor/calibration/sparsegpt.py), prune != kQuantize: no grid;
// a weight either stays (value = w, no error) or goes (value 0, error w / u_ii):
//   kPruneKept:     `keep` says which stay;
//   kPruneTwoOfFour: at every 4th column each row drops the 2 of its next 4 weights with the
//                    smallest w^2 / u_jj^2 (ties: the lower column first; a 3-column tail drops
//                    1, shorter tails none), from the current weights.
// q may be nullptr, and deq may be w itself (each value is written after its weight is read).
//
// Arithmetic is plain fp32 with no contraction (CMake builds _C with -ffp-contract=off), so
// every machine gives the same bits.
#pragma once
#include <cstdint>

namespace tersor::gptq {

enum Mode : int { kQuantize = 0, kPruneKept = 1, kPruneTwoOfFour = 2 };

struct BlockArgs {
  float* w;
  int64_t ldw;
  const float* u;
  int64_t ldu;
  float* err;
  float* q;
  float* deq;
  int64_t ldq;
  const uint8_t* keep;  // [B][ldk] bool, or nullptr (nothing pruned)
  int64_t ldk;
  int64_t B, n;
  int64_t group;
  bool symmetric;
  const float* safe;  // [n] (group == 0)
  const float* zero;  // [n] (group == 0)
  float qlo, qhi;
  float* group_scale;  // [B / group][n] (group > 0)
  float* group_zero;   // [B / group][n] (group > 0)
  int mode;            // Mode
  int nthreads;
};

void block_pass(const BlockArgs& a);

// Round to nearest on the int4 grid, dequantized: out [N][K] = (q - z) * scale with each
// row's groups of `group` columns (the last may be shorter) gridded as above (scale fp16, z =
// 8 when symmetric), q = clamp(round_half_even(w / safe) + z, 0, 15). Exactly what
// formats/int4.py quantize_int4 then dequantize_int4 give, in one pass: AWQ's searches call it
// a thousand times per model.
void rtn_int4(const float* w, int64_t N, int64_t K, int64_t group, bool symmetric, float* out,
              int nthreads);

// float(fp16(f)): round to nearest even, overflow to inf (torch's .half() on the CPU).
float round_to_fp16(float f);

}  // namespace tersor::gptq
