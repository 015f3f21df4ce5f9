// tersor._C_cuda: the optional CUDA kernels (built when TERSOR_CUDA finds nvcc), loaded lazily
// by python/tersor/ops/device.py. Like tersor._C it never sees a torch tensor: device pointers,
// sizes and the caller's current stream (cudaStream_t as an integer) cross as integers.
// Validation happens in Python; CUDA errors come back as RuntimeError naming the kernel.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "gemm_w4/gemm_w4_cuda.h"
#include "gemm_w8a8/gemm_w8a8_cuda.h"
#include "quant_act/quant_act_cuda.h"
#include "spmm_24/spmm_24_cuda.h"

namespace py = pybind11;

namespace {

template <typename T>
T* p(std::uintptr_t v) { return reinterpret_cast<T*>(v); }
cudaStream_t stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "tersor CUDA kernels (sm_80+; raw device pointers and streams)";
  m.def("quantize_rows",
        [](std::uintptr_t x, bool half, int64_t M, int64_t K, int64_t ldx, std::uintptr_t q,
           int64_t ldq, std::uintptr_t scales, std::uintptr_t s) {
          tersor::quant_act::quantize_rows_cuda(p<const void>(x), half, M, K, ldx, p<int8_t>(q),
                                                ldq, p<float>(scales), stream(s));
        });
  m.def("gemm_w8a8",
        [](std::uintptr_t a, std::uintptr_t sa, std::uintptr_t b, std::uintptr_t sb,
           std::uintptr_t bias, std::uintptr_t y, bool half_out, int64_t M, int64_t N, int64_t K,
           std::uintptr_t s) {
          tersor::gemm_w8a8::run_cuda(p<const int8_t>(a), p<const float>(sa), p<const int8_t>(b),
                                      p<const float>(sb), p<const float>(bias), p<void>(y),
                                      half_out, M, N, K, stream(s));
        });
  m.def("gemm_w4",
        [](std::uintptr_t x, int64_t ldx, std::uintptr_t wq, std::uintptr_t scale,
           std::uintptr_t zf, int64_t np, std::uintptr_t bias, std::uintptr_t y, int64_t M,
           int64_t N, int64_t K, int64_t G, int split_k, std::uintptr_t s) {
          tersor::gemm_w4::run_cuda(p<const void>(x), ldx, p<const uint32_t>(wq),
                                    p<const void>(scale), p<const void>(zf), np,
                                    p<const float>(bias), p<float>(y), M, N, K, G, split_k,
                                    stream(s));
        });
  m.def("spmm_24",
        [](std::uintptr_t x, int64_t ldx, std::uintptr_t values, std::uintptr_t meta,
           std::uintptr_t bias, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
           std::uintptr_t s) {
          tersor::spmm_24::run_cuda(p<const void>(x), ldx, p<const uint32_t>(values),
                                    p<const uint32_t>(meta), p<const void>(bias), p<void>(y), M,
                                    N, K, stream(s));
        });
}
