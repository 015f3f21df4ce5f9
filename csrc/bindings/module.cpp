// tersor._C: thin pybind11 layer over the torch-free kernels. Tensors cross as integer data
// addresses (t.data_ptr()) plus sizes and strides: that costs ~1 us per call, against 10+ us
// for a torch custom op in eager mode (DESIGN decision 2). All validation happens in
// python/tersor/ops/; these functions trust their arguments.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/cpu_features.h"
#include "conv/conv_w8a8.h"
#include "dequant/dequant.h"
#include "gemm_w4/gemm_w4.h"
#include "gemm_w4a8/gemm_w4a8.h"
#include "gemm_w8/gemm_w8.h"
#include "gemm_w8a8/gemm_w8a8.h"
#include "quant_act/quant_act.h"
#include "spmm_24/spmm_24.h"
#include "spmm_block/spmm_block.h"
#include "spmm_csr/spmm_csr.h"

namespace py = pybind11;
using tersor::PackedW4LinearArgs;
using tersor::PackedW8LinearArgs;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

PackedW8LinearArgs linear_args(std::uintptr_t x, int64_t M, int64_t K, int64_t ldx,
                               std::uintptr_t w, std::uintptr_t colsum, std::uintptr_t w_scale,
                               int64_t N, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
                               int nthreads) {
  return PackedW8LinearArgs{ptr<const float>(x), M, K, ldx, ptr<const int8_t>(w),
                            ptr<const int32_t>(colsum), ptr<const float>(w_scale), N,
                            ptr<const float>(bias), ptr<float>(y), ldy, nthreads};
}

PackedW4LinearArgs w4_args(std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t w,
                           std::uintptr_t scale, std::uintptr_t zero, int64_t group_size,
                           int64_t ngroups, int64_t N, std::uintptr_t bias, std::uintptr_t y,
                           int64_t ldy, int nthreads) {
  return PackedW4LinearArgs{ptr<const float>(x), M, K, ldx, ptr<const uint8_t>(w),
                            ptr<const uint16_t>(scale), ptr<const uint8_t>(zero), group_size,
                            ngroups, N, ptr<const float>(bias), ptr<float>(y), ldy, nthreads};
}

void bind_cpu(py::module_& m) {
  m.def("cpu_info", [] {
    using namespace tersor;
    const CpuFeatures& f = cpu_features();
    py::dict features;
    features["avx2"] = f.avx2; features["fma"] = f.fma; features["f16c"] = f.f16c;
    features["avx512f"] = f.avx512f; features["avx512bw"] = f.avx512bw;
    features["avx512vl"] = f.avx512vl; features["avx512dq"] = f.avx512dq;
    features["avx512vnni"] = f.avx512vnni;
    features["amx_tile"] = f.amx_tile; features["amx_int8"] = f.amx_int8;
    features["os_amx"] = f.os_amx;
    features["os_ymm"] = f.os_ymm; features["os_zmm"] = f.os_zmm;
    py::list avail;
    for (Isa i : {Isa::Ref, Isa::Avx2, Isa::Avx512, Isa::Amx})
      if (isa_available(i)) avail.append(isa_name(i));
    py::dict d;
    d["features"] = features;
    d["available"] = avail;
    d["best"] = isa_name(best_isa());
    d["active"] = isa_name(active_isa());
#if defined(_OPENMP)
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    return d;
  }, "CPU features (CPUID + XCR0), the ISA paths available, and the one TERSOR_CPU_ISA selects.");
}

void bind_quant_act(py::module_& m) {
  m.def("quantize_rows",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t q,
           std::uintptr_t scales, int nthreads) {
          tersor::quant_act::quantize_rows(ptr<const float>(x), M, K, ldx, ptr<int8_t>(q),
                                           ptr<float>(scales), nthreads);
        },
        py::call_guard<py::gil_scoped_release>());
}

void bind_gemm_w8a8(py::module_& m) {
  m.def("gemm_w8a8",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t w,
           std::uintptr_t colsum, std::uintptr_t w_scale, int64_t N, std::uintptr_t bias,
           std::uintptr_t y, int64_t ldy, int nthreads) {
          tersor::gemm_w8a8::run(
              linear_args(x, M, K, ldx, w, colsum, w_scale, N, bias, y, ldy, nthreads));
        },
        py::call_guard<py::gil_scoped_release>());
}

void bind_gemm_w8(py::module_& m) {
  m.def("gemm_w8",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t w,
           std::uintptr_t colsum, std::uintptr_t w_scale, int64_t N, std::uintptr_t bias,
           std::uintptr_t y, int64_t ldy, int nthreads) {
          // colsum is unused; the signature matches gemm_w8a8 so callers can swap kernels
          tersor::gemm_w8::run(
              linear_args(x, M, K, ldx, w, colsum, w_scale, N, bias, y, ldy, nthreads));
        },
        py::call_guard<py::gil_scoped_release>());
}

// gemm_w4 and gemm_w4a8 share one signature so callers can swap kernels:
// (x, M, K, ldx, w, scale, zero, group_size, ngroups, N, bias, y, ldy, nthreads)
void bind_gemm_w4(py::module_& m) {
  m.def("gemm_w4",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t w,
           std::uintptr_t scale, std::uintptr_t zero, int64_t group_size, int64_t ngroups,
           int64_t N, std::uintptr_t bias, std::uintptr_t y, int64_t ldy, int nthreads) {
          tersor::gemm_w4::run(w4_args(x, M, K, ldx, w, scale, zero, group_size, ngroups, N,
                                       bias, y, ldy, nthreads));
        },
        py::call_guard<py::gil_scoped_release>());
  m.def("gemm_w4a8",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t w,
           std::uintptr_t scale, std::uintptr_t zero, int64_t group_size, int64_t ngroups,
           int64_t N, std::uintptr_t bias, std::uintptr_t y, int64_t ldy, int nthreads) {
          tersor::gemm_w4a8::run(w4_args(x, M, K, ldx, w, scale, zero, group_size, ngroups, N,
                                         bias, y, ldy, nthreads));
        },
        py::call_guard<py::gil_scoped_release>());
}

void bind_dequant(py::module_& m) {
  m.def("dequant_w4t",
        [](std::uintptr_t w, std::uintptr_t scale, std::uintptr_t zero, int64_t group_size,
           int64_t ngroups, int64_t N, int64_t K, std::uintptr_t out, int64_t ldo, int nthreads) {
          tersor::dequant::w4t({ptr<const uint8_t>(w), ptr<const uint16_t>(scale),
                                ptr<const uint8_t>(zero), group_size, ngroups, N, K,
                                ptr<float>(out), ldo, nthreads});
        },
        py::call_guard<py::gil_scoped_release>());
  m.def("dequant_w8",
        [](std::uintptr_t w, std::uintptr_t w_scale, int64_t N, int64_t K, std::uintptr_t out,
           int nthreads) {
          tersor::dequant::w8({ptr<const int8_t>(w), ptr<const float>(w_scale), N, K,
                               ptr<float>(out), nthreads});
        },
        py::call_guard<py::gil_scoped_release>());
}

void bind_conv(py::module_& m) {
  auto conv = [](tersor::conv::Path path) {
    return [path](std::uintptr_t x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t kh,
                  int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                  int64_t dw, int64_t Ho, int64_t Wo, std::uintptr_t w, std::uintptr_t colsum,
                  std::uintptr_t w_scale, int64_t N, std::uintptr_t bias, std::uintptr_t y,
                  int nthreads) {
      tersor::conv::run_w8a8({ptr<const float>(x), B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw,
                              Ho, Wo, ptr<const int8_t>(w), ptr<const int32_t>(colsum),
                              ptr<const float>(w_scale), N, ptr<const float>(bias),
                              ptr<float>(y), nthreads},
                             path);
    };
  };
  m.def("conv_w8a8", conv(tersor::conv::Path::Auto), py::call_guard<py::gil_scoped_release>());
  // test hook: the AMX implicit GEMM's addressing over emulated tiles, on any machine
  m.def("conv_w8a8_implicit_emulated", conv(tersor::conv::Path::EmulatedImplicit),
        py::call_guard<py::gil_scoped_release>());
}

void bind_spmm_24(py::module_& m) {
  m.def("spmm_24",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t values,
           std::uintptr_t meta, int64_t N, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
           int nthreads) {
          tersor::spmm_24::run({ptr<const float>(x), M, K, ldx, ptr<const float>(values),
                                ptr<const uint8_t>(meta), N, ptr<const float>(bias), ptr<float>(y),
                                ldy, nthreads});
        },
        py::call_guard<py::gil_scoped_release>());
  m.def("decompress_24",
        [](std::uintptr_t values, std::uintptr_t meta, int64_t N, int64_t K, std::uintptr_t out,
           int nthreads) {
          tersor::spmm_24::decompress(ptr<const float>(values), ptr<const uint8_t>(meta), N, K,
                                      ptr<float>(out), nthreads);
        },
        py::call_guard<py::gil_scoped_release>());
  m.def("spmm_24_w8a8",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, std::uintptr_t values,
           std::uintptr_t meta, std::uintptr_t colsum, std::uintptr_t w_scale, int64_t N,
           std::uintptr_t bias, std::uintptr_t y, int64_t ldy, int nthreads) {
          tersor::spmm_24::run_w8a8({ptr<const float>(x), M, K, ldx, ptr<const int8_t>(values),
                                     ptr<const uint8_t>(meta), ptr<const int32_t>(colsum),
                                     ptr<const float>(w_scale), N, ptr<const float>(bias),
                                     ptr<float>(y), ldy, nthreads});
        },
        py::call_guard<py::gil_scoped_release>());
}

void bind_spmm_csr(py::module_& m) {
  m.def("spmm_csr",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, int64_t N, std::uintptr_t rowptr,
           std::uintptr_t col, std::uintptr_t val, std::uintptr_t ell_val, std::uintptr_t ell_col,
           std::uintptr_t ell_cnt, std::uintptr_t ell_off, std::uintptr_t perm,
           std::uintptr_t bias, std::uintptr_t y, int64_t ldy, int nthreads) {
          tersor::spmm_csr::run({ptr<const float>(x), M, K, ldx, N, ptr<const int64_t>(rowptr),
                                 ptr<const int32_t>(col), ptr<const float>(val),
                                 ptr<const float>(ell_val), ptr<const uint16_t>(ell_col),
                                 ptr<const uint16_t>(ell_cnt), ptr<const int64_t>(ell_off),
                                 ptr<const int32_t>(perm), ptr<const float>(bias), ptr<float>(y),
                                 ldy, nthreads});
        },
        py::call_guard<py::gil_scoped_release>());
  m.def("spmm_csr_w8a8",
        [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, int64_t N, std::uintptr_t rowptr,
           std::uintptr_t col, std::uintptr_t val, std::uintptr_t ell_val, std::uintptr_t ell_col,
           std::uintptr_t ell_cnt, std::uintptr_t ell_off, std::uintptr_t perm,
           std::uintptr_t w_scale, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
           int nthreads) {
          tersor::spmm_csr::run_w8a8(
              {ptr<const float>(x), M, K, ldx, N, ptr<const int64_t>(rowptr),
               ptr<const int32_t>(col), ptr<const int8_t>(val), ptr<const int8_t>(ell_val),
               ptr<const uint16_t>(ell_col), ptr<const uint16_t>(ell_cnt),
               ptr<const int64_t>(ell_off), ptr<const int32_t>(perm), ptr<const float>(w_scale),
               ptr<const float>(bias), ptr<float>(y), ldy, nthreads});
        },
        py::call_guard<py::gil_scoped_release>());
}

// spmm_block_f32 and spmm_block_w8a8 share one signature (colsum / w_scale are 0 for fp32):
// (x, M, K, ldx, N, ptr, kidx, values, colsum, w_scale, bias, y, ldy, nthreads)
void bind_spmm_block(py::module_& m) {
  auto args = [](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, int64_t N, std::uintptr_t p,
                 std::uintptr_t kidx, std::uintptr_t values, std::uintptr_t colsum,
                 std::uintptr_t w_scale, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
                 int nthreads) {
    return tersor::spmm_block::Args{ptr<const float>(x), M, K, ldx, N, ptr<const int64_t>(p),
                                    ptr<const uint16_t>(kidx), ptr<const void>(values),
                                    ptr<const int32_t>(colsum), ptr<const float>(w_scale),
                                    ptr<const float>(bias), ptr<float>(y), ldy, nthreads};
  };
  m.def("spmm_block_f32",
        [args](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, int64_t N, std::uintptr_t p,
               std::uintptr_t kidx, std::uintptr_t values, std::uintptr_t colsum,
               std::uintptr_t w_scale, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
               int nthreads) {
          tersor::spmm_block::run_f32(
              args(x, M, K, ldx, N, p, kidx, values, colsum, w_scale, bias, y, ldy, nthreads));
        },
        py::call_guard<py::gil_scoped_release>());
  m.def("spmm_block_w8a8",
        [args](std::uintptr_t x, int64_t M, int64_t K, int64_t ldx, int64_t N, std::uintptr_t p,
               std::uintptr_t kidx, std::uintptr_t values, std::uintptr_t colsum,
               std::uintptr_t w_scale, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
               int nthreads) {
          tersor::spmm_block::run_w8a8(
              args(x, M, K, ldx, N, p, kidx, values, colsum, w_scale, bias, y, ldy, nthreads));
        },
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tersor native kernels (torch-free)";
  bind_cpu(m);
  bind_quant_act(m);
  bind_gemm_w8a8(m);
  bind_gemm_w8(m);
  bind_gemm_w4(m);
  bind_dequant(m);
  bind_conv(m);
  bind_spmm_24(m);
  bind_spmm_csr(m);
  bind_spmm_block(m);
}
