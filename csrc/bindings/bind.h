// Shared by the per-family binding files of tersor._C. Tensors cross as integer data
// addresses (t.data_ptr()) plus sizes and strides: that costs ~1 us per call, against 10+ us
// for a torch custom op in eager mode (DESIGN decision 2). Every function names its arguments
// (py::arg) and says what it expects; all validation happens in python/tersor/ops/, so these
// functions trust their arguments. The kernels of the layers' eager calls are bound with
// def_int_function (int_call.h), a lighter dispatcher for all-integer arguments. After changing
// a signature, regenerate python/tersor/_C.pyi (python -m tersor._stub; CI checks it is
// current).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace tersor::bindings {

namespace py = pybind11;
using addr = std::uintptr_t;  // a tensor's data_ptr(); 0 for an absent optional tensor

template <typename T>
T* ptr(addr p) { return reinterpret_cast<T*>(p); }

// The GIL is released for every kernel: they run on OpenMP threads and touch no Python object.
using nogil = py::call_guard<py::gil_scoped_release>;

void bind_cpu(py::module_& m);
void bind_half_io(py::module_& m);
void bind_quant_act(py::module_& m);
void bind_gemm_w8a8(py::module_& m);
void bind_gemm_w4(py::module_& m);
void bind_dequant(py::module_& m);
void bind_conv(py::module_& m);
void bind_int8_ops(py::module_& m);
void bind_static_program(py::module_& m);
void bind_attention(py::module_& m);
void bind_decoder_layer(py::module_& m);
void bind_spmm_24(py::module_& m);
void bind_spmm_csr(py::module_& m);
void bind_spmm_block(py::module_& m);
void bind_repack(py::module_& m);
void bind_gptq(py::module_& m);

}  // namespace tersor::bindings
