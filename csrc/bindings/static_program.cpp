// The static program (static_program/program.h): built step by step by
// python/tersor/static_int8/program.py, then run in one call.
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "static_program/program.h"

namespace tersor::bindings {

void bind_static_program(py::module_& m) {
  using static_program::Op;
  using static_program::Program;
  using static_program::Step;
  py::class_<Program>(m, "StaticProgram",
                      "A static int8 network's steps over one arena, run in one call. Buffer "
                      "offsets: bytes into the arena, -1 the input, -2 the output, -3 none.")
      .def(py::init<>(), "An empty program: add_* its steps in order, then set_arena_bytes.")
      .def(
          "set_arena_bytes", [](Program& p, int64_t bytes) { p.arena_bytes = bytes; },
          py::arg("bytes"), "The arena's size, from the builder's layout of the buffers.")
      .def(
          "arena_bytes", [](const Program& p) { return p.arena_bytes; },
          "The arena's size in bytes (the buffers' layout).")
      .def(
          "num_steps", [](const Program& p) { return p.steps.size(); },
          "How many steps the program has (a fused expand_dw counts once).")
      .def(
          "add_quantize",
          [](Program& p, int64_t in, int64_t out, int64_t n, float inv_scale, float lo, float hi) {
            Step s{Op::kQuantize};
            s.in = in, s.out = out, s.n = n, s.inv = inv_scale, s.lo = lo, s.hi = hi;
            p.steps.push_back(std::move(s));
          },
          py::arg("x"), py::arg("out"), py::arg("n"), py::arg("inv_scale"), py::arg("lo"),
          py::arg("hi"), "fp32 [n] -> s8 codes (tersor.static_int8 Quantize).")
      .def(
          "add_conv",
          [](Program& p, const conv::StaticConvPlan& plan, int64_t in, int64_t res, int64_t out,
             int64_t B, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
            Step s{Op::kConv};
            s.plan = std::make_shared<const conv::StaticConvPlan>(plan);
            s.in = in, s.in2 = res, s.out = out, s.B = B, s.H = H, s.W = W, s.Ho = Ho, s.Wo = Wo;
            p.steps.push_back(std::move(s));
          },
          py::arg("plan"), py::arg("x"), py::arg("res"), py::arg("out"), py::arg("B"),
          py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"),
          "StaticConvPlan.run on arena buffers (the plan is copied: it holds the layer's "
          "tensor addresses, which must outlive the program).")
      .def(
          "add_expand_dw",
          [](Program& p, const conv::StaticConvPlan& expand, const conv::StaticConvPlan& dw,
             int64_t in, int64_t out, int64_t B, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
             int64_t band) {
            Step s{Op::kExpandDw};
            s.plan = std::make_shared<const conv::StaticConvPlan>(expand);
            s.plan2 = std::make_shared<const conv::StaticConvPlan>(dw);
            s.in = in, s.out = out, s.B = B, s.H = H, s.W = W, s.Ho = Ho, s.Wo = Wo;
            s.band = band;
            p.steps.push_back(std::move(s));
          },
          py::arg("expand"), py::arg("dw"), py::arg("x"), py::arg("out"), py::arg("B"),
          py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"), py::arg("band"),
          "A 1x1 expansion (stride 1, no padding) and the depthwise convolution that alone "
          "reads it, band rows of the output at a time (program.h): x [B, H, W] pixels in, "
          "out [B, Ho, Wo] pixels of the depthwise layer's codes.")
      .def(
          "add_pool",
          [](Program& p, bool max, int64_t in, int64_t out, int64_t B, int64_t H, int64_t W,
             int64_t C, std::vector<int64_t> h0, std::vector<int64_t> h1, std::vector<int64_t> w0,
             std::vector<int64_t> w1, std::vector<int64_t> div_h, std::vector<int64_t> div_w) {
            Step s{max ? Op::kMaxPool : Op::kAvgPool};
            s.in = in, s.out = out, s.B = B, s.H = H, s.W = W, s.C = C;
            s.Ho = static_cast<int64_t>(h0.size()), s.Wo = static_cast<int64_t>(w0.size());
            s.h0 = std::move(h0), s.h1 = std::move(h1), s.w0 = std::move(w0);
            s.w1 = std::move(w1), s.div_h = std::move(div_h), s.div_w = std::move(div_w);
            p.steps.push_back(std::move(s));
          },
          py::arg("max"), py::arg("x"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"),
          py::arg("C"), py::arg("h0"), py::arg("h1"), py::arg("w0"), py::arg("w1"),
          py::arg("div_h"), py::arg("div_w"),
          "max_pool_s8 / avg_pool_s8 with the windows of ops.int8_static.pool_windows.")
      .def(
          "add_add",
          [](Program& p, int64_t a, float sa, int64_t b, float sb, int64_t out, int64_t n,
             float inv_scale, float lo, float hi) {
            Step s{Op::kAdd};
            s.in = a, s.a = sa, s.in2 = b, s.b = sb, s.out = out, s.n = n;
            s.inv = inv_scale, s.lo = lo, s.hi = hi;
            p.steps.push_back(std::move(s));
          },
          py::arg("a"), py::arg("sa"), py::arg("b"), py::arg("sb"), py::arg("out"), py::arg("n"),
          py::arg("inv_scale"), py::arg("lo"), py::arg("hi"), "add_s8 on arena buffers.")
      .def(
          "add_dequantize",
          [](Program& p, int64_t in, int64_t out, int64_t n, float scale) {
            Step s{Op::kDequantize};
            s.in = in, s.out = out, s.n = n, s.a = scale;
            p.steps.push_back(std::move(s));
          },
          py::arg("x"), py::arg("out"), py::arg("n"), py::arg("scale"),
          "s8 codes [n] -> fp32 float(q) * scale (tersor.static_int8 Dequantize).")
      .def(
          "run",
          [](Program& p, addr x, addr y, int nthreads) {
            p.run(ptr<const float>(x), ptr<void>(y), nthreads);
          },
          py::arg("x"), py::arg("y"), py::arg("nthreads"), nogil(),
          "Every step in order: x the fp32 input (NHWC for an image), y the output.")
      .def(
          "run_timed",
          [](Program& p, addr x, addr y, int nthreads) {
            std::vector<double> seconds(p.steps.size());
            {
              py::gil_scoped_release release;
              p.run(ptr<const float>(x), ptr<void>(y), nthreads, seconds.data());
            }
            return seconds;
          },
          py::arg("x"), py::arg("y"), py::arg("nthreads"),
          "run(), returning each step's wall time in seconds (describe() names the steps).")
      .def("describe", &Program::describe,
           "One line per step: its op and shapes, e.g. 'conv 3x3/1 64->64 8x56x56 +res'.");
}

}  // namespace tersor::bindings
