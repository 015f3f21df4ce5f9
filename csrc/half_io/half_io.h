// bf16 / fp16 activations at the edges of the fp32 kernels.
//
// The GEMM kernels read fp32 rows and write fp32 rows. A bf16 / fp16 model's layer call would
// otherwise cost two torch ops per call (x.float(), y.to(dtype)), each an allocation and a
// dispatch (~4 us at M = 1, ~1 ms per decoded token of a 1B LLM). Instead the binding hands
// the kernel fp32 rows staged here, in a per-thread scratch buffer, a block of rows at a time:
//
//   x half [M, K] --widen (exact)--> scratch fp32 [rows, K] --kernel--> scratch fp32 [rows, N]
//                                                         --narrow (round to nearest even)--> y half
//
// Widening is exact (every bf16 / fp16 value is an fp32 value), and narrowing rounds exactly as
// torch's .to(dtype) does (nearest even; NaN stays NaN; fp16 overflows to Inf), so a half call
// returns bit for bit `layer(x.float()).to(dtype)`, on every ISA path.
#pragma once
#include <cstdint>

namespace tersor::half_io {

enum Dtype : int { F32 = 0, BF16 = 1, F16 = 2 };  // the `io` argument of the GEMM bindings

struct RowsArgs {  // M x K elements, row strides in elements
  const void* src;
  int64_t M, K, lds;
  void* dst;
  int64_t ldd;
  int dtype;  // BF16 or F16: the half side
};

// half src -> fp32 dst
void widen_ref(const RowsArgs& a);
void widen_avx2(const RowsArgs& a);
void widen(const RowsArgs& a);
// fp32 src -> half dst
void narrow_ref(const RowsArgs& a);
void narrow_avx2(const RowsArgs& a);
void narrow(const RowsArgs& a);

// Rows per block of a staged call: the fp32 scratch holds rows x (K + N) floats, at most
// kScratchFloats (16 MiB), and at least one row.
inline constexpr int64_t kScratchFloats = int64_t(1) << 22;
float* scratch(int64_t floats);  // this thread's buffer, grown on demand to <= kScratchFloats
                                 // (or one row's K + N when that is larger)

// Runs `kernel(args)` on fp32 staging rows when io is BF16 / F16, else directly. Args is a
// GEMM argument struct with x, M, K, ldx, N, y, ldy (common/linear_args.h).
template <typename Args, typename Kernel>
void run_staged(const Args& a, int io, Kernel kernel) {
  if (io == F32 || a.M == 0) return kernel(a);
  const int64_t per_row = a.K + a.N;
  int64_t rows = kScratchFloats / per_row;
  if (rows < 1) rows = 1;
  if (rows > a.M) rows = a.M;
  float* xs = scratch(rows * per_row);
  float* ys = xs + rows * a.K;
  const int64_t bytes = 2;  // both halves are 2-byte types
  for (int64_t m0 = 0; m0 < a.M; m0 += rows) {
    const int64_t mb = a.M - m0 < rows ? a.M - m0 : rows;
    widen({static_cast<const char*>(static_cast<const void*>(a.x)) + m0 * a.ldx * bytes, mb, a.K,
           a.ldx, xs, a.K, io});
    Args b = a;
    b.x = xs;
    b.ldx = a.K;
    b.M = mb;
    b.y = ys;
    b.ldy = a.N;
    kernel(b);
    narrow({ys, mb, a.N, a.N, static_cast<char*>(static_cast<void*>(a.y)) + m0 * a.ldy * bytes,
            a.ldy, io});
  }
}

}  // namespace tersor::half_io
