// The operations between convolutions of the static int8 pipeline (int8_ops.h).
#include "bindings/bind.h"
#include "conv/requant.h"
#include "int8_ops/int8_ops.h"

namespace tersor::bindings {

void bind_int8_ops(py::module_& m) {
  auto pool = [](void (*fn)(const int8_ops::PoolArgs&)) {
    return [fn](addr x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo,
                addr h0, addr h1, addr w0, addr w1, addr div_h, addr div_w, addr y,
                int nthreads) {
      fn({ptr<const int8_t>(x), B, H, W, C, Ho, Wo, ptr<const int64_t>(h0),
          ptr<const int64_t>(h1), ptr<const int64_t>(w0), ptr<const int64_t>(w1),
          ptr<const int64_t>(div_h), ptr<const int64_t>(div_w), ptr<int8_t>(y), nthreads});
    };
  };
#define TERSOR_POOL_ARGS                                                                    \
  py::arg("x"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("Ho"),      \
      py::arg("Wo"), py::arg("h0"), py::arg("h1"), py::arg("w0"), py::arg("w1"),            \
      py::arg("div_h"), py::arg("div_w"), py::arg("y"), py::arg("nthreads")
  m.def("max_pool_s8", pool(int8_ops::max_pool), TERSOR_POOL_ARGS, nogil(),
        "Max pooling of s8 NHWC codes: output (oh, ow) = max over rows [h0[oh], h1[oh]) x "
        "columns [w0[ow], w1[ow]) (int64 arrays); div_h / div_w unused.");
  m.def("avg_pool_s8", pool(int8_ops::avg_pool), TERSOR_POOL_ARGS, nogil(),
        "Average pooling of s8 NHWC codes: nearbyint(window sum / (div_h[oh] * div_w[ow])).");
#undef TERSOR_POOL_ARGS
  m.def(
      "add_s8",
      [](addr a, float sa, addr b, float sb, int64_t n, float inv_scale, float lo, float hi,
         addr y, int nthreads) {
        int8_ops::add({ptr<const int8_t>(a), sa, ptr<const int8_t>(b), sb, n, inv_scale, lo, hi,
                       ptr<int8_t>(y), nthreads});
      },
      py::arg("a"), py::arg("sa"), py::arg("b"), py::arg("sb"), py::arg("n"),
      py::arg("inv_scale"), py::arg("lo"), py::arg("hi"), py::arg("y"), py::arg("nthreads"),
      nogil(),
      "y = nearbyint(clamp(fma(b, sb, a * sa) * inv_scale, lo, hi)) over n s8 codes (b = 0: "
      "a * sa alone, a change of scale); NaN -> 0.");
  m.def(
      "quantize_static",
      [](addr x, int64_t n, float inv_scale, float lo, float hi, addr q, int nthreads) {
        conv::quantize_codes(ptr<const float>(x), n, inv_scale, lo, hi, ptr<int8_t>(q), nthreads);
      },
      py::arg("x"), py::arg("n"), py::arg("inv_scale"), py::arg("lo"), py::arg("hi"),
      py::arg("q"), py::arg("nthreads"), nogil(),
      "n fp32 values -> s8 codes at a fixed scale: nearbyint(clamp(x * inv_scale, lo, hi)), "
      "NaN -> 0 (conv/requant.h).");
}

}  // namespace tersor::bindings
