// Per-row int8 activation quantization on the GPU, by the rules of quant_act.h (same amax,
// same single fp32 division, round half to even, NaN/Inf rows -> scale NaN and codes 0).
// One block per row.
#include "common/cuda_common.cuh"
#include "quant_act/quant_act_cuda.h"

namespace tersor::quant_act {
namespace {

template <typename T>
__device__ __forceinline__ float to_f32(T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

template <typename T>
__global__ void quantize_rows_kernel(const T* __restrict__ x, int64_t K, int64_t ldx,
                                     int8_t* __restrict__ q, int64_t ldq, float* __restrict__ s) {
  const T* row = x + blockIdx.x * ldx;
  float amax = 0.0f;
  bool bad = false;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = to_f32(row[k]);
    bad |= !isfinite(v);
    amax = fmaxf(amax, fabsf(v));
  }
  __shared__ float red[32];
  __shared__ int red_bad[32];
  for (int o = 16; o > 0; o /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    bad |= __shfl_xor_sync(0xffffffffu, static_cast<int>(bad), o);
  }
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = amax, red_bad[threadIdx.x / 32] = bad;
  __syncthreads();
  amax = 0.0f;
  bad = false;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
    amax = fmaxf(amax, red[w]);
    bad |= red_bad[w] != 0;
  }
  const float inv = (!bad && amax > 0.0f) ? __fdiv_rn(127.0f, amax) : 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = bad ? 0.0f : __fmul_rn(to_f32(row[k]), inv);
    q[blockIdx.x * ldq + k] = static_cast<int8_t>(fminf(fmaxf(rintf(v), -127.0f), 127.0f));
  }
  if (threadIdx.x == 0) s[blockIdx.x] = bad ? __int_as_float(0x7fc00000) : __fdiv_rn(amax, 127.0f);
}

}  // namespace

void quantize_rows_cuda(const void* x, bool half, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        int64_t ldq, float* scales, cudaStream_t stream) {
  if (M == 0) return;
  if (half)
    quantize_rows_kernel<<<M, 256, 0, stream>>>(static_cast<const __half*>(x), K, ldx, q, ldq,
                                                scales);
  else
    quantize_rows_kernel<<<M, 256, 0, stream>>>(static_cast<const float*>(x), K, ldx, q, ldq,
                                                scales);
  cuda::check(cudaGetLastError(), "tersor quantize_rows (cuda)");
}

}  // namespace tersor::quant_act
