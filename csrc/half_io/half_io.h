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
//
// The same staging applies a layer's input scale for the fp32-activation kernels (AWQ /
// SmoothQuant, x_scale [K]: the x multiplier a layer keeps when no preceding op could absorb
// it): the staged rows are x[m][k] * x_scale[k], one IEEE multiply each, so the call returns bit
// for bit `layer_without_scale(x * x_scale)` without a torch op or an allocation per call. The
// int8-activation kernels take the scale in their arguments instead and apply it row by row
// as they quantize (quant_act::a8_row), with the same products.
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
  int nthreads = 1;  // widen / narrow split large blocks over this many threads
};

// half src -> fp32 dst
void widen_ref(const RowsArgs& a);
void widen_avx2(const RowsArgs& a);
void widen_avx512(const RowsArgs& a);
void widen(const RowsArgs& a);
// fp32 src -> half dst
void narrow_ref(const RowsArgs& a);
void narrow_avx2(const RowsArgs& a);
void narrow_avx512(const RowsArgs& a);
void narrow(const RowsArgs& a);

// The active ISA's single-threaded converters, resolved once (active_isa() reads the
// environment: once per kernel call is fine, once per row of a kernel that converts thousands of
// short rows was not). Conversions are exact, so every ISA path of a kernel may use them.
using RowsFn = void (*)(const RowsArgs&);
struct Converters {
  RowsFn widen_rows, narrow_rows;
  // n elements of dtype <-> fp32 (a plain copy for F32)
  void widen(const void* src, int64_t n, float* dst, int dtype) const;
  void narrow(const float* src, int64_t n, void* dst, int dtype) const;
};
Converters converters();

struct ScaleArgs {  // dst[m][k] = src[m][k] * s[k] (fp32; dst may be src)
  const float* src;
  int64_t M, K, lds;
  float* dst;
  int64_t ldd;
  const float* s;
};
void scale_columns_ref(const ScaleArgs& a);
void scale_columns_avx2(const ScaleArgs& a);
void scale_columns(const ScaleArgs& a);

// Rows per block of a staged call: the fp32 scratch holds rows x (K + N) floats, about
// kScratchFloats (32 MiB) at most, and at least one row. Where M needs several blocks they are
// balanced and a multiple of the tile paths' 32-row blocks (staged_rows): each block is a
// kernel call that widens the weights again, so 113 + 15 rows (16 MiB at 8192x28672, bf16
// rows) cost as much as two full passes, 41.6 ms against 32.3 for one call of 128 rows.
inline constexpr int64_t kScratchFloats = int64_t(1) << 23;
inline int64_t staged_rows(int64_t M, int64_t per_row) {
  const int64_t most = kScratchFloats / per_row;
  if (M <= most) return M;
  if (most < 32) return most > 0 ? most : 1;
  const int64_t blocks = (M + most - 1) / most;
  return ((M + blocks - 1) / blocks + 31) / 32 * 32;
}
float* scratch(int64_t floats);  // this thread's buffer, grown on demand

// Runs `kernel(args)` on fp32 staging rows when io is BF16 / F16 or x_scale is given, else
// directly. Args is a GEMM argument struct with x, M, K, ldx, N, y, ldy
// (common/linear_args.h). fp32 outputs go straight to y; half ones through the scratch.
//
// a8: an int8-activation kernel (gemm_w8a8 / gemm_w4a8). It reads x one row at a time as it
// quantizes it, so half rows go to it as they are (Args::x_io, each row widened in cache by
// quant_act::a8_row): no pass over x. Where a8_writes_half_rows(), its epilogue rounds the
// outputs to half itself (Args::y_io): no scratch at all. Same bits as staging.
//
// half_rows: the kernel reads and writes half rows itself on this call (x_io, x_widen and y_io
// set; gemm_w4's register tiles, gemm_w4::takes_half_rows): every thread widens the rows it
// reads and rounds the outputs it writes, so that no fp32 copy of x or y crosses between the
// cores (at one bf16 row of 1536x384, 2 threads, the staged call took ~1 us more than an fp32
// one). Same bits as staging.
bool a8_writes_half_rows();  // the A8 kernels' active path is AVX-512 or AMX
template <typename Args, typename Kernel>
void run_staged(const Args& a, int io, const float* x_scale, Kernel kernel, bool a8 = false,
                bool half_rows = false) {
  if ((io == F32 && x_scale == nullptr) || a.M == 0) return kernel(a);
  const bool half = io != F32;
  if (half && half_rows && x_scale == nullptr) {
    Args b = a;
    b.x_io = b.y_io = io;
    b.x_widen = converters().widen_rows;
    return kernel(b);
  }
  const bool stage_x = !(half && a8 && x_scale == nullptr);
  const bool stage_y = half && !(a8 && a8_writes_half_rows());
  Args b = a;
  if (!stage_x) {
    b.x_io = io;  // half rows (the pointer's type aside)
    b.x_widen = converters().widen_rows;
    if (!stage_y) {
      b.y_io = io;
      return kernel(b);
    }
  }
  const int64_t per_row = (stage_x ? a.K : 0) + (stage_y ? a.N : 0);
  const int64_t rows = staged_rows(a.M, per_row);
  float* xs = scratch(rows * per_row);
  float* ys = xs + (stage_x ? rows * a.K : 0);
  const int64_t bytes = half ? 2 : 4;
  for (int64_t m0 = 0; m0 < a.M; m0 += rows) {
    const int64_t mb = a.M - m0 < rows ? a.M - m0 : rows;
    const void* x0 = static_cast<const char*>(static_cast<const void*>(a.x)) + m0 * a.ldx * bytes;
    void* y0 = static_cast<char*>(static_cast<void*>(a.y)) + m0 * a.ldy * bytes;
    if (!stage_x) {
      b.x = static_cast<const float*>(x0);
    } else {
      if (half) {
        widen({x0, mb, a.K, a.ldx, xs, a.K, io, a.nthreads});
        if (x_scale) scale_columns({xs, mb, a.K, a.K, xs, a.K, x_scale});
      } else {
        scale_columns({static_cast<const float*>(x0), mb, a.K, a.ldx, xs, a.K, x_scale});
      }
      b.x = xs;
      b.ldx = a.K;
    }
    b.M = mb;
    if (a.row_amax) b.row_amax = a.row_amax + m0;
    if (stage_y) {
      b.y = ys;
      b.ldy = a.N;
    } else {
      b.y = static_cast<float*>(y0);  // fp32 rows, or half ones (y_io)
    }
    kernel(b);
    if (stage_y) narrow({ys, mb, a.N, a.N, y0, a.ldy, io, a.nthreads});
  }
}

}  // namespace tersor::half_io
