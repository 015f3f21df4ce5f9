// The model around the linear layers of an LLM: decode-step attention with rotary embedding
// and an in-place KV cache write (attention/attention.h), RMSNorm (norm/norm.h), SwiGLU's
// silu(g) * u (act/act.h).
#include "act/act.h"
#include "attention/attention.h"
#include "bindings/bind.h"
#include "norm/norm.h"

namespace tersor::bindings {

void bind_attention(py::module_& m) {
  m.def(
      "attention_decode",
      [](addr q, int64_t ldq, addr k, int64_t ldk, addr v, int64_t ldv, addr cos, addr sin,
         int64_t ldcs, int64_t ldcs_t, addr kcache, addr vcache, int64_t B, int64_t T, int64_t H,
         int64_t Hkv, int64_t D, int64_t cap, int64_t pos, addr start, float scaling, addr out,
         int64_t ldo, int dtype, int nthreads) {
        attention::decode({ptr<const void>(q), ptr<const void>(k), ptr<const void>(v), ldq, ldk,
                           ldv, ptr<const void>(cos), ptr<const void>(sin), ldcs, ldcs_t,
                           ptr<void>(kcache), ptr<void>(vcache), B, T, H, Hkv, D, cap, pos,
                           ptr<const int64_t>(start), scaling,
                           ptr<void>(out), ldo, dtype, nthreads});
      },
      py::arg("q"), py::arg("ldq"), py::arg("k"), py::arg("ldk"), py::arg("v"), py::arg("ldv"),
      py::arg("cos"), py::arg("sin"), py::arg("ldcs"), py::arg("ldcs_t"), py::arg("kcache"),
      py::arg("vcache"), py::arg("B"), py::arg("T"), py::arg("H"), py::arg("Hkv"), py::arg("D"),
      py::arg("cap"), py::arg("pos"), py::arg("start"), py::arg("scaling"), py::arg("out"),
      py::arg("ldo"), py::arg("dtype"), py::arg("nthreads"), nogil(),
      "Grouped-query attention over T new rows per sequence (a decode step: T = 1; a causal "
      "prefill chunk): q [B][T][H*D], new k / v [B][T][Hkv*D] (row (b, t) at (b T + t) ld, in "
      "elements); k roped with cos / sin [B][T][D] (row (b, t) at b ldcs + t ldcs_t; 0: no "
      "rotary) and written with v into rows pos .. pos+T-1 of kcache / vcache [B][Hkv][cap][D]; "
      "out [B][T][H*D]: row t = softmax(rope(q) K^T * scaling) V over rows start[b]..pos+t "
      "(start int64 [B], 0: none: left padding), query head h reading kv head h / (H / Hkv). "
      "dtype 0 fp32, 1 bf16, 2 fp16 for every tensor; fp32 arithmetic. D % 8 == 0, "
      "H / Hkv <= 64.");
  m.def(
      "rms_norm",
      [](addr x, int64_t M, int64_t N, int64_t ldx, addr w, float eps, addr y, int64_t ldy,
         int dtype, int nthreads) {
        norm::rms_norm({ptr<const void>(x), M, N, ldx, ptr<const void>(w), eps, ptr<void>(y), ldy,
                        dtype, nthreads});
      },
      py::arg("x"), py::arg("M"), py::arg("N"), py::arg("ldx"), py::arg("w"), py::arg("eps"),
      py::arg("y"), py::arg("ldy"), py::arg("dtype"), py::arg("nthreads"), nogil(),
      "y[m] = w * (x[m] / sqrt(mean(x[m]^2) + eps)) over M rows of N (row strides in elements); "
      "dtype 0 fp32, 1 bf16, 2 fp16 for x, w, y; fp32 arithmetic, each product rounded to the "
      "dtype as HF's RMSNorm does.");
  m.def(
      "silu_mul",
      [](addr g, addr u, int64_t M, int64_t N, int64_t ldg, int64_t ldu, addr y, int64_t ldy,
         int dtype, int nthreads) {
        act::silu_mul({ptr<const void>(g), ptr<const void>(u), M, N, ldg, ldu, ptr<void>(y), ldy,
                       dtype, nthreads});
      },
      py::arg("g"), py::arg("u"), py::arg("M"), py::arg("N"), py::arg("ldg"), py::arg("ldu"),
      py::arg("y"), py::arg("ldy"), py::arg("dtype"), py::arg("nthreads"), nogil(),
      "y = silu(g) * u over M rows of N (row strides in elements); dtype 0 fp32, 1 bf16, 2 "
      "fp16 for g, u, y; fp32 arithmetic, a half result rounded once.");
}

}  // namespace tersor::bindings
