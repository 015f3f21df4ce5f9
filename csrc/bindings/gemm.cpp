// The dense GEMM families: quant_act (row quantizer), gemm_w8a8 / gemm_w8 (int8 weights),
// gemm_w4 / gemm_w4a8 (int4 weights), dequant (packed weights -> fp32, the large-batch path).
#include <stdexcept>

#include "bindings/bind.h"
#include "bindings/int_call.h"
#include "common/cpu_features.h"
#include "dequant/dequant.h"
#include "gemm_w4/gemm_w4.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "gemm_w8/gemm_w8.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "half_io/half_io.h"
#include "quant_act/quant_act.h"

namespace tersor::bindings {
namespace {

PackedW8LinearArgs w8_args(addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr colsum,
                           addr w_scale, int64_t N, addr bias, addr y, int64_t ldy,
                           int nthreads, addr row_amax = 0, addr x_scale = 0) {
  return PackedW8LinearArgs{ptr<const float>(x), M, K, ldx, ptr<const int8_t>(w),
                            ptr<const int32_t>(colsum), ptr<const float>(w_scale), N,
                            ptr<const float>(bias), ptr<float>(y), ldy, nthreads,
                            ptr<const float>(row_amax), ptr<const float>(x_scale)};
}

PackedW4LinearArgs w4_args(addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr scale,
                           addr zero, int64_t group_size, int64_t ngroups, int64_t N, addr bias,
                           addr y, int64_t ldy, int nthreads, addr row_amax = 0,
                           addr x_scale = 0) {
  return PackedW4LinearArgs{ptr<const float>(x), M, K, ldx, ptr<const uint8_t>(w),
                            ptr<const uint16_t>(scale), ptr<const uint8_t>(zero), group_size,
                            ngroups, N, ptr<const float>(bias), ptr<float>(y), ldy, nthreads,
                            ptr<const float>(row_amax), ptr<const float>(x_scale)};
}

// The weight-only kernels' entry: float rows (io: fp32, bf16 or fp16; x_scale) staged through
// half_io around the kernel.
template <void (*kKernel)(const PackedW8LinearArgs&)>
void w8_staged(addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr colsum, addr w_scale,
               int64_t N, addr bias, addr y, int64_t ldy, int nthreads, int io, addr x_scale) {
  half_io::run_staged(w8_args(x, M, K, ldx, w, colsum, w_scale, N, bias, y, ldy, nthreads), io,
                      ptr<const float>(x_scale), kKernel);
}
template <void (*kKernel)(const PackedW4LinearArgs&)>
void w4_staged(addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr scale, addr zero,
               int64_t group_size, int64_t ngroups, int64_t N, addr bias, addr y, int64_t ldy,
               int nthreads, int io, addr x_scale) {
  half_io::run_staged(
      w4_args(x, M, K, ldx, w, scale, zero, group_size, ngroups, N, bias, y, ldy, nthreads), io,
      ptr<const float>(x_scale), kKernel);
}

// The argument lists shared by the kernels of one weight form (int_call.h specs).
#define TERSOR_W8_ARGS \
  "x, M, K, ldx, w, colsum, w_scale, N, bias, y, ldy, nthreads, io=0, x_scale=0"
#define TERSOR_W4_ARGS                                                                   \
  "x, M, K, ldx, w, scale, zero, group_size, ngroups, N, bias, y, ldy, nthreads, io=0, " \
  "x_scale=0"

constexpr const char* kW8Doc =
    "y[M, N] (fp32, row stride ldy) = x[M, K] (fp32, row stride ldx) W^T + bias. w: int8 "
    "VNNI4 tiles [Np/16][Kp/4][16][4] (formats/int8.py), colsum int32 [Np], w_scale fp32 "
    "[Np], bias fp32 [N] or 0. ";
// io: 0 fp32 x and y; 1 bf16, 2 fp16 x and y, staged through fp32 rows (half_io/half_io.h)
constexpr const char* kIoDoc =
    " io: 0 (fp32 x, y), 1 (bf16 x, y) or 2 (fp16 x, y; strides in elements); half rows are "
    "widened exactly and the output rounded to nearest even, as torch's .to() does. x_scale: "
    "0, or fp32 [K] multiplied into x's columns (a layer's input scale: AWQ / SmoothQuant), "
    "by the row quantizer in the int8-activation kernels, while the rows are staged in the "
    "others.";
// the int8-activation kernels' extra argument
constexpr const char* kRowAmaxDoc =
    " row_amax: 0, or fp32 [M] floors under each row's amax (the rows of a tensor-parallel "
    "shard quantize with the whole row's scale: quant_act.h).";
// the W8A8 kernels' speed hint
constexpr const char* kNarrowDoc =
    " narrow_w: every |w| <= 64 (W8A8Config(weight_bits=7)); the AVX2 kernel then runs u8 x s8 "
    "multiplies with no sign handling. The result is the same either way.";
constexpr const char* kW4Doc =
    "y[M, N] = x[M, K] W^T + bias, W int4 group-wise: w uint8 W4Tile codes "
    "[Np/16][Kp/8][16][4], scale fp16 [Np/16][ngroups][16], zero uint8 (same shape) or 0 "
    "(symmetric, z = 8), group_size the effective G (formats/int4.py). ";

}  // namespace

void bind_half_io(py::module_& m) {
  m.def(
      "convert_rows",
      [](addr src, int64_t M, int64_t K, int64_t lds, addr dst, int64_t ldd, int dtype,
         bool to_half) {
        const half_io::RowsArgs a{ptr<const void>(src), M, K, lds, ptr<void>(dst), ldd, dtype};
        to_half ? half_io::narrow(a) : half_io::widen(a);
      },
      py::arg("src"), py::arg("M"), py::arg("K"), py::arg("lds"), py::arg("dst"), py::arg("ldd"),
      py::arg("dtype"), py::arg("to_half"), nogil(),
      "The staging conversions of the GEMMs' io argument: to_half, fp32 src -> dtype (1 bf16, "
      "2 fp16) dst rounded to nearest even; else dtype src -> fp32 dst exactly. M x K "
      "elements, row strides lds / ldd in elements.");
}

void bind_quant_act(py::module_& m) {
  m.def(
      "quantize_rows",
      [](addr x, int64_t M, int64_t K, int64_t ldx, addr q, addr scales, int nthreads) {
        quant_act::quantize_rows(ptr<const float>(x), M, K, ldx, ptr<int8_t>(q),
                                 ptr<float>(scales), nthreads);
      },
      py::arg("x"), py::arg("M"), py::arg("K"), py::arg("ldx"), py::arg("q"), py::arg("scales"),
      py::arg("nthreads"), nogil(),
      "Per-row symmetric int8: q int8 [M, K] (contiguous), scales fp32 [M] = amax / 127 "
      "(NaN for a row holding NaN/Inf) from x fp32 [M, K] (row stride ldx).");
}

void bind_gemm_w8a8(py::module_& m) {
  def_int_function(
      m, "gemm_w8a8",
      +[](addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr colsum, addr w_scale, int64_t N,
          addr bias, addr y, int64_t ldy, int nthreads, int io, addr x_scale, addr row_amax,
          bool narrow_w) {
        // the row quantizer applies x_scale (quant_act::a8_row): no staging pass for it
        PackedW8LinearArgs a =
            w8_args(x, M, K, ldx, w, colsum, w_scale, N, bias, y, ldy, nthreads, row_amax, x_scale);
        a.narrow_w = narrow_w;
        half_io::run_staged(a, io, nullptr, gemm_w8a8::run, true);
      },
      TERSOR_W8_ARGS ", row_amax=0, narrow_w: bool=False",
      (std::string(kW8Doc) + "x is quantized per row to int8 inside (dynamic W8A8)." + kIoDoc +
       kRowAmaxDoc + kNarrowDoc));
  def_int_function(
      m, "gemm_w8", &w8_staged<gemm_w8::run>, TERSOR_W8_ARGS,
      std::string(kW8Doc) + "fp32 activations (weight-only); colsum is unused (pass 0)." + kIoDoc);
  def_int_function(
      m, "gemm_w8_bf16", &w8_staged<gemm_w8::run_bf16>, TERSOR_W8_ARGS,
      (std::string(kW8Doc) +
       "activations rounded to bf16, vdpbf16ps on CPUs with AVX512-BF16 (the C ref elsewhere; "
       "gemm_w8.h states the arithmetic); colsum is unused (pass 0)." +
       kIoDoc));
  def_int_function(
      m, "gemm_w8_bf16_tiles", &w8_staged<gemm_w8::run_bf16_tiles>, TERSOR_W8_ARGS,
      (std::string(kW8Doc) +
       "activations rounded to bf16, AMX-BF16 tiles where the CPU has them and the active path "
       "is amx, gemm_w8_bf16 otherwise (gemm_w8.h states both); colsum is unused (pass 0)." +
       kIoDoc));
  def_int_function(
      m, "gemm_w8_fp32_tiles", &w8_staged<gemm_w8::run_fp32_tiles>, TERSOR_W8_ARGS,
      (std::string(kW8Doc) +
       "fp32 activations in three exact bf16 parts on AMX-BF16 tiles where the CPU has them and "
       "the active path is amx (products exact, fp32 sums in the tile unit's order), gemm_w8 "
       "otherwise (gemm_w8.h states both); colsum is unused (pass 0)." +
       kIoDoc));
}

void bind_gemm_w4(py::module_& m) {
  m.def("gemm_w4_dequantized_rows", &gemm_w4::dequantized_rows, py::arg("M"),
        "Whether gemm_w4 over M rows follows the dequantized rules on this machine (one fp32 "
        "FMA chain per output over w = (q - z) * s; gemm_w4.h), not the 32-k chunk rules.");
  def_int_function(
      m, "gemm_w4",
      +[](addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr scale, addr zero,
          int64_t group_size, int64_t ngroups, int64_t N, addr bias, addr y, int64_t ldy,
          int nthreads, int io, addr x_scale) {
        half_io::run_staged(
            w4_args(x, M, K, ldx, w, scale, zero, group_size, ngroups, N, bias, y, ldy, nthreads),
            io, ptr<const float>(x_scale), gemm_w4::run, false, gemm_w4::takes_half_rows(M));
      },
      TERSOR_W4_ARGS,
      (std::string(kW4Doc) +
       "fp32 activations, weights dequantized in registers (or, for rows in batches where "
       "gemm_w4_dequantized_rows says so, into L1 slabs; gemm_w4.h states both rules)." +
       kIoDoc));
  def_int_function(
      m, "gemm_w4_bf16",
      +[](addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr scale, addr zero,
          int64_t group_size, int64_t ngroups, int64_t N, addr bias, addr y, int64_t ldy,
          int nthreads, int io, addr x_scale) {
        // bf16 rows go to the AMX few-row kernel as they are (it reads and writes them)
        const bool half_rows = io == half_io::BF16 && gemm_w4::bf16_rows_on_tiles(M, group_size);
        half_io::run_staged(
            w4_args(x, M, K, ldx, w, scale, zero, group_size, ngroups, N, bias, y, ldy, nthreads),
            io, ptr<const float>(x_scale), gemm_w4::run_bf16, false, half_rows);
      },
      TERSOR_W4_ARGS,
      (std::string(kW4Doc) +
       "activations rounded to bf16, each group's sums closed in fp32: up to 16 rows on AMX-BF16 "
       "tiles where the CPU has them, the active path is amx and group_size % 32 == 0 "
       "(gemm_w4_bf16_on_tiles), else vdpbf16ps on CPUs with AVX512-BF16 (the C ref elsewhere; "
       "gemm_w4.h states the arithmetic)." +
       kIoDoc));
  def_int_function(
      m, "gemm_w4_bf16_tiles", &w4_staged<gemm_w4::run_bf16_tiles>, TERSOR_W4_ARGS,
      (std::string(kW4Doc) +
       "activations rounded to bf16, weights widened to bf16 with their scales (the scaled "
       "form): AMX-BF16 tiles where the CPU has them, the active path is amx and group_size % "
       "32 == 0; else one vdpbf16ps chain per output (its C ref below AVX512-BF16 / AVX-512); "
       "gemm_w4.h states the arithmetic." +
       kIoDoc));
  def_int_function(
      m, "gemm_w4_fp32_tiles", &w4_staged<gemm_w4::run_fp32_tiles>, TERSOR_W4_ARGS,
      (std::string(kW4Doc) +
       "fp32 activations in three exact bf16 parts against the exact integer weights, on "
       "AMX-BF16 tiles where the CPU has them, the active path is amx and group_size % 32 == 0 "
       "(products exact, fp32 sums in the tile unit's order, each group's closed by its "
       "scales); gemm_w4 otherwise (gemm_w4.h states both)." +
       kIoDoc));
  m.def("gemm_w4_bf16_on_tiles", &gemm_w4::bf16_rows_on_tiles, py::arg("M"),
        py::arg("group_size"),
        "Whether gemm_w4_bf16 over M rows of this group size runs on the AMX-BF16 tiles here "
        "(the group form with the tile unit's fp32 sums; gemm_w4.h), not vdpbf16ps / its C ref.");
  m.def("has_amx_bf16", &amx_bf16_available,
        "True when this CPU has AMX-BF16 and the active ISA path is amx: gemm_w4_bf16_tiles then "
        "runs the tiles (for group sizes that are multiples of 32).");
  m.def("has_bf16_dot", &bf16_dot_available,
        "True when this CPU has AVX512-BF16 and the active ISA path is AVX-512 or above: "
        "gemm_w4_bf16 / gemm_w8_bf16 then run vdpbf16ps instead of their C refs.");
  def_int_function(
      m, "gemm_w4a8",
      +[](addr x, int64_t M, int64_t K, int64_t ldx, addr w, addr scale, addr zero,
          int64_t group_size, int64_t ngroups, int64_t N, addr bias, addr y, int64_t ldy,
          int nthreads, int io, addr x_scale, addr row_amax, int x_planes) {
        if (x_planes != 1 && x_planes != 2)
          throw std::invalid_argument("gemm_w4a8: x_planes must be 1 or 2");
        PackedW4LinearArgs a = w4_args(x, M, K, ldx, w, scale, zero, group_size, ngroups, N,
                                       bias, y, ldy, nthreads, row_amax, x_scale);
        a.x_planes = x_planes;
        half_io::run_staged(a, io, nullptr, gemm_w4a8::run, true);
      },
      TERSOR_W4_ARGS ", row_amax=0, x_planes=1",
      (std::string(kW4Doc) + "x quantized per row to int8 inside; exact integer group sums." +
       kIoDoc + kRowAmaxDoc +
       " x_planes: 1, or 2 for 16-bit activations as two int8 planes (quant_act.h), each row's "
       "two outputs added."));
}

void bind_dequant(py::module_& m) {
  m.def(
      "dequant_w4t",
      [](addr w, addr scale, addr zero, int64_t group_size, int64_t ngroups, int64_t N,
         int64_t K, addr out, int64_t ldo, int nthreads) {
        dequant::w4t({ptr<const uint8_t>(w), ptr<const uint16_t>(scale),
                      ptr<const uint8_t>(zero), group_size, ngroups, N, K, ptr<float>(out), ldo,
                      nthreads});
      },
      py::arg("w"), py::arg("scale"), py::arg("zero"), py::arg("group_size"),
      py::arg("ngroups"), py::arg("N"), py::arg("K"), py::arg("out"), py::arg("ldo"),
      py::arg("nthreads"), nogil(),
      "Packed int4 (gemm_w4's w / scale / zero) -> out fp32 W^T [K, N] (row stride ldo), "
      "exactly (q - z) * s.");
  m.def(
      "dequant_w8",
      [](addr w, addr w_scale, int64_t N, int64_t K, addr out, int nthreads) {
        dequant::w8({ptr<const int8_t>(w), ptr<const float>(w_scale), N, K, ptr<float>(out),
                     nthreads});
      },
      py::arg("w"), py::arg("w_scale"), py::arg("N"), py::arg("K"), py::arg("out"),
      py::arg("nthreads"), nogil(),
      "Packed int8 (gemm_w8a8's w / w_scale) -> out fp32 W [N, K] (contiguous), q * s.");
}

}  // namespace tersor::bindings
