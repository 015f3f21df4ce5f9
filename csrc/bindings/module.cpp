// tersor._C: the torch-free native core. PYBIND11_MODULE only calls one bind_<family> per
// kernel family (csrc/bindings/<family>.cpp); see bind.h for the calling convention.
#include "bindings/bind.h"
#include "bindings/int_call.h"

namespace b = tersor::bindings;

PYBIND11_MODULE(_C, m) {
  m.doc() = "tersor native kernels (torch-free): raw tensor addresses, sizes and strides";
  b::bind_cpu(m);
  b::bind_half_io(m);
  b::bind_quant_act(m);
  b::bind_gemm_w8a8(m);
  b::bind_gemm_w4(m);
  b::bind_dequant(m);
  b::bind_conv(m);
  b::bind_int8_ops(m);
  b::bind_static_program(m);
  b::bind_attention(m);
  b::bind_decoder_layer(m);
  b::bind_spmm_24(m);
  b::bind_spmm_csr(m);
  b::bind_spmm_block(m);
  b::bind_repack(m);
  b::bind_gptq(m);
  b::int_call::bind_partial(m);
}
