// Decode-step attention with rotary embedding and an in-place KV cache write (attention.h).
#include "attention/attention.h"
#include "bindings/bind.h"

namespace tersor::bindings {

void bind_attention(py::module_& m) {
  m.def(
      "attention_decode",
      [](addr q, int64_t ldq, addr k, int64_t ldk, addr v, int64_t ldv, addr cos, addr sin,
         int64_t ldcs, addr kcache, addr vcache, int64_t B, int64_t H, int64_t Hkv, int64_t D,
         int64_t cap, int64_t pos, float scaling, addr out, int64_t ldo, int dtype,
         int nthreads) {
        attention::decode({ptr<const void>(q), ptr<const void>(k), ptr<const void>(v), ldq, ldk,
                           ldv, ptr<const void>(cos), ptr<const void>(sin), ldcs,
                           ptr<void>(kcache), ptr<void>(vcache), B, H, Hkv, D, cap, pos, scaling,
                           ptr<void>(out), ldo, dtype, nthreads});
      },
      py::arg("q"), py::arg("ldq"), py::arg("k"), py::arg("ldk"), py::arg("v"), py::arg("ldv"),
      py::arg("cos"), py::arg("sin"), py::arg("ldcs"), py::arg("kcache"), py::arg("vcache"),
      py::arg("B"), py::arg("H"), py::arg("Hkv"), py::arg("D"), py::arg("cap"), py::arg("pos"),
      py::arg("scaling"), py::arg("out"), py::arg("ldo"), py::arg("dtype"), py::arg("nthreads"),
      nogil(),
      "One decode step of grouped-query attention: q [B][H*D], new k / v [B][Hkv*D] (row "
      "strides in elements); k roped with cos / sin [B][D] (0: no rotary) and written with v "
      "into row pos of kcache / vcache [B][Hkv][cap][D]; out [B][H*D] = softmax(rope(q) K^T * "
      "scaling) V over rows 0..pos, query head h reading kv head h / (H / Hkv). dtype 0 fp32, "
      "1 bf16, 2 fp16 for every tensor; fp32 arithmetic. D % 8 == 0, H / Hkv <= 64.");
}

}  // namespace tersor::bindings
