// The W8A8 convolution family.
#include <memory>

#include "bindings/bind.h"
#include "conv/conv_dw_w8a8.h"
#include "conv/conv_w8a8.h"
#include "conv/requant.h"
#include "conv/static_plan.h"

namespace tersor::bindings {

using conv::StaticConvPlan;

void bind_conv(py::module_& m) {
  auto conv = [](conv::Path path) {
    return [path](addr x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                  int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                  int64_t Ho, int64_t Wo, addr w, addr colsum, addr w_scale, int64_t N,
                  addr bias, addr y, int nthreads, int64_t groups, bool narrow_w) {
      conv::ConvW8A8Args c{ptr<const float>(x), B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho,
                           Wo, ptr<const int8_t>(w), ptr<const int32_t>(colsum),
                           ptr<const float>(w_scale), N, ptr<const float>(bias), ptr<float>(y),
                           nthreads};
      c.groups = groups;
      c.narrow_w = narrow_w;
      conv::run_w8a8(c, path);
    };
  };
  // 22 arguments: named, so a Python caller can (and ops/conv.py does) check them by name
#define TERSOR_CONV_ARGS                                                                     \
  py::arg("x"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("kh"),       \
      py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),             \
      py::arg("dh"), py::arg("dw"), py::arg("Ho"), py::arg("Wo"), py::arg("w"),              \
      py::arg("colsum"), py::arg("w_scale"), py::arg("N"), py::arg("bias"), py::arg("y"),    \
      py::arg("nthreads")
  m.def("conv_w8a8", conv(conv::Path::Auto), TERSOR_CONV_ARGS, py::arg("groups") = 1,
        py::arg("narrow_w") = false, nogil(),
        "W8A8 Conv2d: x fp32 NHWC [B, H, W, C] (contiguous), kernel (kh, kw), stride (sh, sw), "
        "zero padding (ph, pw), dilation (dh, dw) -> y fp32 NHWC [B, Ho, Wo, N]. w / colsum / "
        "w_scale: gemm_w8a8's packed int8 weight with K in (kh, kw, C / groups) order; bias "
        "fp32 [N] or 0. x is quantized once per image. groups: a grouped convolution (group g "
        "reads channels g * C / groups.. and writes outputs g * N / groups..; N / groups a "
        "multiple of 16). narrow_w: every |w| <= 64 (gemm_w8a8's speed hint).");
  m.def("conv_w8a8_implicit_emulated", conv(conv::Path::EmulatedImplicit), TERSOR_CONV_ARGS,
        py::arg("groups") = 1, py::arg("narrow_w") = false, nogil(),
        "Test hook: conv_w8a8's AMX implicit GEMM run over scalar tiles with AMX semantics, on "
        "any CPU (stride 1, C % 64 == 0).");
  m.def(
      "conv_dw_w8a8",
      [](addr x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw, int64_t sh,
         int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t Ho, int64_t Wo,
         addr w, addr colsum, addr w_scale, int64_t N, addr bias, addr y, int nthreads) {
        conv::run_dw_w8a8({ptr<const float>(x), B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho,
                           Wo, ptr<const int8_t>(w), ptr<const int32_t>(colsum),
                           ptr<const float>(w_scale), N, ptr<const float>(bias), ptr<float>(y),
                           nthreads});
      },
      TERSOR_CONV_ARGS, nogil(),
      "W8A8 depthwise Conv2d (groups = C, N = mult * C; output channel n reads input channel "
      "n / mult): arguments as conv_w8a8, the packed weight's K = kh * kw; colsum unused. x is "
      "quantized once per image.");
#undef TERSOR_CONV_ARGS

  m.def(
      "conv_w8a8_static",
      [](addr xs, float xs_scale, int64_t xs_channels, int64_t B, int64_t H, int64_t W,
         int64_t C, int64_t kh,
         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         int64_t Ho, int64_t Wo, addr w, addr colsum, addr w_scale, int64_t N, addr bias,
         int64_t groups, addr y, addr q, float inv_scale, float lo, float hi, addr res,
         float res_scale, int path, int nthreads, bool narrow_w) {
        const conv::Requant out{ptr<int8_t>(q), N, inv_scale, lo, hi, ptr<const int8_t>(res), N,
                                res_scale};
        conv::ConvW8A8Args c{nullptr, B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo,
                             ptr<const int8_t>(w), ptr<const int32_t>(colsum),
                             ptr<const float>(w_scale), N, ptr<const float>(bias), ptr<float>(y),
                             nthreads};
        c.xs = ptr<const int8_t>(xs);
        c.xs_scale = xs_scale;
        c.xs_channels = xs_channels;
        c.out = q ? &out : nullptr;
        c.narrow_w = narrow_w;
        if (groups > 1 && groups == C) return conv::run_dw_w8a8(c);  // depthwise
        c.groups = groups;
        conv::run_w8a8(c, path == 1 ? conv::Path::EmulatedImplicit : conv::Path::Auto);
      },
      py::arg("xs"), py::arg("xs_scale"), py::arg("xs_channels"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("C"),
      py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
      py::arg("dh"), py::arg("dw"), py::arg("Ho"), py::arg("Wo"), py::arg("w"),
      py::arg("colsum"), py::arg("w_scale"), py::arg("N"), py::arg("bias"),
      py::arg("groups"), py::arg("y"), py::arg("q"), py::arg("inv_scale"), py::arg("lo"),
      py::arg("hi"), py::arg("res"), py::arg("res_scale"), py::arg("path"), py::arg("nthreads"),
      py::arg("narrow_w") = false, nogil(),
      "The static int8 pipeline's convolution (dense, grouped, or depthwise when groups == C: "
      "arguments as conv_w8a8 / conv_dw_w8a8): xs s8 NHWC codes at scale xs_scale, xs_channels <= C codes per pixel "
      "(the rest zero; 0: C). Output: y fp32 NHWC, or (q != 0) s8 "
      "codes q = nearbyint(clamp((y + res * res_scale) * inv_scale, lo, hi)) (res: s8 [M][N] "
      "codes or 0; NaN -> 0). path 1: the AMX implicit GEMM emulated (tests). narrow_w: "
      "every |w| <= 64 (gemm_w8a8's speed hint).");

  py::class_<StaticConvPlan>(m, "StaticConvPlan",
                             "conv_w8a8_static's fixed arguments (one layer's), for run().")
      .def(py::init([](float xs_scale, int64_t xs_channels, int64_t C, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                       addr w, addr colsum, addr w_scale, int64_t N, addr bias, int64_t groups,
                       float inv_scale, float lo, float hi, float res_scale, bool narrow_w) {
             StaticConvPlan p;
             p.c = conv::ConvW8A8Args{nullptr, 0, 0, 0, C, kh, kw, sh, sw, ph, pw, dh, dw, 0, 0,
                                      ptr<const int8_t>(w), ptr<const int32_t>(colsum),
                                      ptr<const float>(w_scale), N, ptr<const float>(bias),
                                      nullptr, 1};
             p.c.xs_scale = xs_scale;
             p.c.xs_channels = xs_channels;
             p.c.narrow_w = narrow_w;
             p.depthwise = groups > 1 && groups == C;
             p.c.groups = p.depthwise ? 1 : groups;
             if (p.depthwise)
               p.dw = std::make_shared<const conv::DwWeights>(conv::prepare_dw_weights(p.c));
             p.out = conv::Requant{nullptr, N, inv_scale, lo, hi, nullptr, N, res_scale};
             return p;
           }),
           py::arg("xs_scale"), py::arg("xs_channels"), py::arg("C"), py::arg("kh"),
           py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
           py::arg("dh"), py::arg("dw"), py::arg("w"), py::arg("colsum"), py::arg("w_scale"),
           py::arg("N"), py::arg("bias"), py::arg("groups"), py::arg("inv_scale"),
           py::arg("lo"), py::arg("hi"), py::arg("res_scale"), py::arg("narrow_w") = false,
           "xs_scale: the input codes' scale; C channels per pixel read of which xs_channels "
           "come from xs (the rest zero); the kernel geometry; the packed weight (w, colsum, "
           "w_scale) of N outputs, bias fp32 [N] or 0; groups (depthwise when C); inv_scale: "
           "1 / the output scale (0: fp32 out); lo / hi: the code bounds; res_scale: the residual codes' scale; narrow_w: every |w| <= 64 (gemm_w8a8's speed hint). The plan "
           "holds these addresses: the tensors must outlive it.")
      .def(
          "run",
          [](const StaticConvPlan& p, addr xs, int64_t B, int64_t H, int64_t W, int64_t Ho,
             int64_t Wo, addr out, addr res, int nthreads) {
            conv::run_static_plan(p, ptr<const int8_t>(xs), B, H, W, Ho, Wo, ptr<void>(out),
                                  ptr<const int8_t>(res), nthreads);
          },
          py::arg("xs"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"),
          py::arg("out"), py::arg("res"), py::arg("nthreads"), nogil(),
          "conv_w8a8_static with the plan's arguments: xs s8 NHWC codes [B, H, W, xs_channels] "
          "-> out (s8 codes [B, Ho, Wo, N], or fp32 when the plan's inv_scale is 0); res: s8 "
          "[B, Ho, Wo, N] residual codes or 0.");
}

}  // namespace tersor::bindings
