// gptq: the column pass of one block (gptq/gptq.h), for python/tersor/calibration/gptq.py.
#include "bindings/bind.h"
#include "gptq/gptq.h"

namespace tersor::bindings {

void bind_gptq(py::module_& m) {
  m.def(
      "gptq_block",
      [](addr w, int64_t ldw, addr u, int64_t ldu, addr err, addr q, addr deq, int64_t ldq,
         addr keep, int64_t ldk, int64_t B, int64_t n, int64_t group, bool symmetric, addr safe,
         addr zero, float qlo, float qhi, addr group_scale, addr group_zero, int mode,
         int nthreads) {
        gptq::block_pass(gptq::BlockArgs{
            ptr<float>(w), ldw, ptr<const float>(u), ldu, ptr<float>(err), ptr<float>(q),
            ptr<float>(deq), ldq, ptr<const uint8_t>(keep), ldk, B, n, group, symmetric,
            ptr<const float>(safe), ptr<const float>(zero), qlo, qhi, ptr<float>(group_scale),
            ptr<float>(group_zero), mode, nthreads});
      },
      py::arg("w"), py::arg("ldw"), py::arg("u"), py::arg("ldu"), py::arg("err"), py::arg("q"),
      py::arg("deq"), py::arg("ldq"), py::arg("keep"), py::arg("ldk"), py::arg("B"), py::arg("n"),
      py::arg("group"), py::arg("symmetric"), py::arg("safe"), py::arg("zero"), py::arg("qlo"),
      py::arg("qhi"), py::arg("group_scale"), py::arg("group_zero"), py::arg("mode"), py::arg("nthreads"), nogil(),
      "GPTQ's column pass over one block of B columns of W, held as rows of W^T (fp32 w "
      "[B][ldw], n used, updated in place; u the block's square of the upper factor U [B][ldu]); "
      "writes err [B][n] = (w - value) / u_ii, codes q and values deq [B][ldq]. keep: uint8 "
      "[B][ldk] (0: pruned, code 0) or 0. group > 0: int4 groups, each row's grid from the "
      "current weights at the group's first column (symmetric or not), scales (fp16 values) "
      "and zero points written to group_scale / group_zero [B/group][n]; group == 0: the fixed "
      "grid safe, zero [n]. Codes clamp(round(w / safe) + zero, qlo, qhi). mode 0: that grid; 1: "
      "prune where keep is 0 (values w or 0, no grid); 2: prune 2 of every 4 columns by w^2 / "
      "u_jj^2 (SparseGPT); q may be 0 and deq may be w. gptq/gptq.h.");
  m.def(
      "rtn_int4",
      [](addr w, int64_t N, int64_t K, int64_t group, bool symmetric, addr out, int nthreads) {
        gptq::rtn_int4(ptr<const float>(w), N, K, group, symmetric, ptr<float>(out), nthreads);
      },
      py::arg("w"), py::arg("N"), py::arg("K"), py::arg("group"), py::arg("symmetric"),
      py::arg("out"), py::arg("nthreads"), nogil(),
      "Round to nearest on the int4 grid, dequantized: w fp32 [N][K] -> out fp32 [N][K], groups "
      "of `group` columns (the last may be shorter), fp16-rounded scales; what quantize_int4 "
      "then dequantize_int4 give (gptq/gptq.h).");
  m.def("round_to_fp16", &gptq::round_to_fp16, py::arg("f"),
        "float(fp16(f)), nearest even, overflow to inf (the GPTQ pass's scale rounding).");
}

}  // namespace tersor::bindings
