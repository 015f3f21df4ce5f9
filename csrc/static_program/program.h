// A static int8 network run as one native call (tersor.static_int8's native program): the
// steps of the converted graph in order, each a kernel the graph's modules call one by one
// from Python, over buffers in one arena. A MobileNetV2 makes 55 such calls per inference;
// from Python each costs 4-5 us besides the kernel (the module call, its checks, the output
// tensor), 15% of the whole network at batch 1 (Zen 5, 2 threads).
//
//   steps:  quantize (fp32 NHWC input -> codes), conv (a StaticConvPlan, residual optional),
//           expand_dw (below), max / avg pool (windows per output row / column), add,
//           dequantize (codes -> fp32)
//   buffers: byte offsets into the arena, laid out by the builder (python/tersor/static_int8/
//           program.py) so that a buffer's bytes are reused once its last reader has run;
//           kInput / kOutput: the caller's input and output; kNone: no buffer
//
// Every step calls the same kernel with the same arguments as the module it replaces: the
// same bits. expand_dw runs an inverted residual block's 1x1 expansion and the depthwise
// convolution that alone reads it (MobileNetV2: 16 -> 96 channels at 112x112, 9.6 MB of codes
// per batch of 8) band by band, each thread on its own bands:
//
//   for each (image, band of `band` output rows):
//     buf[rows][W][Ce] = the expansion of the input rows the band's windows read (rows outside
//                        the image: zero codes, the depthwise layer's padding written out)
//     out[band rows]   = the depthwise convolution of buf with no row padding
//
// so the expanded codes stay in L2 instead of going to memory and back. The same kernels on
// sub-images: each output is the same sum of the same codes, the same bits. The arena is kept between calls (a fresh one of ~10 MB would fault its pages in
// on every call); a second caller while one runs gets its own.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "conv/static_plan.h"

namespace tersor::static_program {

enum class Op { kQuantize, kConv, kExpandDw, kMaxPool, kAvgPool, kAdd, kDequantize };

constexpr int64_t kInput = -1, kOutput = -2, kNone = -3;

struct Step {
  Op op;
  int64_t in = kInput, in2 = kNone, out = kOutput;  // byte offsets in the arena
  int64_t B = 0, H = 0, W = 0, C = 0, Ho = 0, Wo = 0, n = 0;
  std::shared_ptr<const conv::StaticConvPlan> plan;  // conv; expand_dw: the 1x1 expansion
  std::shared_ptr<const conv::StaticConvPlan> plan2;  // expand_dw: the depthwise convolution
  int64_t band = 0;                                   // expand_dw: output rows per band
  std::vector<int64_t> h0, h1, w0, w1, div_h, div_w;  // pools
  float a = 0, b = 0, inv = 0, lo = 0, hi = 0;        // quantize: inv, lo, hi; add: a, b
                                                      // (scales), inv, lo, hi; dequantize: a
};

class Program {
 public:
  std::vector<Step> steps;
  int64_t arena_bytes = 0;

  // step_seconds, when given, receives each step's wall time (profile_static's table).
  void run(const float* x, void* y, int nthreads, double* step_seconds = nullptr);
  // One line per step: its op and shapes ("conv 3x3/1 64->64 8x56x56", "add 8x56x56x64").
  std::vector<std::string> describe() const;

 private:
  std::mutex arena_mutex_;
  Scratch<int8_t> arena_;
  int64_t arena_size_ = 0;
  void run_on(int8_t* arena, const float* x, void* y, int nthreads, double* step_seconds) const;
};

}  // namespace tersor::static_program
