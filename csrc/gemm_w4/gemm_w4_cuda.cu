// W4 GEMM on NVIDIA tensor cores in the manner of Marlin (sm_80+): fp16 activations x int4
// group-wise weights, fp32 accumulation.
//
// Weights are shuffled once at conversion (formats/int4.py shuffle_w4_mma) so that each
// thread's mma.m16n8k16 B fragments for two adjacent 8-column tiles arrive as ONE 32-bit word:
//
//   word of lane (g, t), column block cb (32 columns), k16 block kb, tile pair p:
//     nibble i = 0..7 at bits 4i:   v0 v1 v2 v3 v4 v5 v6 v7
//       tile 2p   (column cb*32 + 16p + g):      v0 = k0, v4 = k0+1, v1 = k0+8, v5 = k0+9
//       tile 2p+1 (column cb*32 + 16p + 8 + g):  v2 = k0, v6 = k0+1, v3 = k0+8, v7 = k0+9
//     with k0 = 16 kb + 2t;  words ordered [cb][kb][p][lane] (a warp reads 256 contiguous bytes)
//
// and one lop3 per fp16 pair dequantizes: (w >> 4j) & 0x000F000F | 0x64006400 is the fp16 pair
// {1024 + v_j, 1024 + v_j+4} exactly; subtracting 1024 + z (exact in fp16) leaves q - z, and one
// multiply by the group scale gives the weight (the "magic number" trick). Weights are streamed
// with evict-first loads; the activations of 64 rows stay in shared memory, loaded by cp.async one
// 64-k slice ahead. Split-K (grid.y) gives small-M calls enough blocks: each split owns whole
// groups and adds its partial sums into y atomically (y zeroed by the caller).
// Requires K % G == 0, G % 16 == 0, ldx % 8 == 0.
#include "common/cuda_common.cuh"
#include "gemm_w4/gemm_w4_cuda.h"

namespace tersor::gemm_w4 {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMT = 4;     // m16 tiles per block pass: 64 rows
constexpr int kBKA = 64;   // k per activation slice
constexpr int kLdA = kBKA + 8;  // halfs per shared row (144 B: conflict-free, 16-B aligned)

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));  // (a&b)|c
  return r;
}

__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, int j, __half2 zf, __half2 s) {
  uint32_t h = lop3_and_or(w >> (4 * j), 0x000F000Fu, 0x64006400u);
  __half2 v = __hmul2(__hsub2(*reinterpret_cast<__half2*>(&h), zf), s);
  return *reinterpret_cast<uint32_t*>(&v);
}

__global__ void __launch_bounds__(kThreads)
gemm_w4_kernel(const __half* __restrict__ x, int64_t ldx, const uint32_t* __restrict__ wq,
               const __half* __restrict__ scale, const __half* __restrict__ zf, int64_t np,
               const float* __restrict__ bias, float* __restrict__ y, int M, int N, int K, int G,
               int groups_per_split, bool atomic) {
  __shared__ __align__(16) __half sA[2][kMT * 16][kLdA];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int cb = blockIdx.x * kWarps + warp;  // this warp's 32 columns
  const bool live = cb * 32 < N;  // the last block's spare warps still join every barrier
  const int kblocks = K / 16;
  const int m_base = blockIdx.z * kMT * 16;
  const int kbeg = blockIdx.y * groups_per_split * G;
  const int kend = min(K, kbeg + groups_per_split * G);
  if (kbeg >= kend) return;
  const int slices = (kend - kbeg + kBKA - 1) / kBKA;

  auto load_a = [&](int buf, int k0) {
    for (int c = tid; c < kMT * 16 * (kBKA / 8); c += kThreads) {
      const int r = c / (kBKA / 8), kc = (c % (kBKA / 8)) * 8;
      const bool ok = m_base + r < M && k0 + kc < kend;
      cuda::cp_async16(&sA[buf][r][kc], ok ? x + int64_t(m_base + r) * ldx + k0 + kc : x, ok);
    }
  };

  float acc[kMT][4][4] = {};
  load_a(0, kbeg);
  cuda::cp_async_commit();
  for (int s = 0; s < slices; ++s) {
    const int k0 = kbeg + s * kBKA;
    if (s + 1 < slices) load_a((s + 1) & 1, k0 + kBKA);
    cuda::cp_async_commit();
    uint32_t w[kBKA / 16][2];  // issue this slice's weight loads before waiting on activations
#pragma unroll
    for (int kk = 0; kk < kBKA / 16; ++kk)
#pragma unroll
      for (int p = 0; p < 2; ++p)
        w[kk][p] = (k0 + 16 * kk < kend && live)
                       ? cuda::ld_stream(wq + ((int64_t(cb) * kblocks + k0 / 16 + kk) * 2 + p) * 32 + lane)
                       : 0u;
    cuda::cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBKA / 16; ++kk) {
      const int k = k0 + 16 * kk;
      if (k >= kend || !live) break;
      const int grp = k / G;
      uint32_t b[4][2];
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // tile 2p + h: nibbles j = 2h (k0, k0+1), 2h+1 (+8)
          const int n = cb * 32 + (2 * p + h) * 8 + g;
          const __half2 s2 = __half2half2(scale[int64_t(grp) * np + n]);
          const __half2 z2 = __half2half2(zf[int64_t(grp) * np + n]);
          b[2 * p + h][0] = dequant_pair(w[kk][p], 2 * h, z2, s2);
          b[2 * p + h][1] = dequant_pair(w[kk][p], 2 * h + 1, z2, s2);
        }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if (m_base + mt * 16 >= M) break;
        uint32_t a[4];
        const __half* r0 = &sA[s & 1][mt * 16 + g][16 * kk + 2 * t];
        a[0] = *reinterpret_cast<const uint32_t*>(r0);
        a[1] = *reinterpret_cast<const uint32_t*>(r0 + 8 * kLdA);
        a[2] = *reinterpret_cast<const uint32_t*>(r0 + 8);
        a[3] = *reinterpret_cast<const uint32_t*>(r0 + 8 * kLdA + 8);
#pragma unroll
        for (int j = 0; j < 4; ++j) cuda::mma_f16_16816(acc[mt][j], a, b[j]);
      }
    }
    __syncthreads();  // the next iteration's cp.async overwrites the other buffer
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = m_base + mt * 16 + g + (e / 2) * 8;
        const int n = cb * 32 + j * 8 + t * 2 + e % 2;
        if (m >= M || n >= N) continue;  // (a spare warp has n >= N throughout)
        const float v = acc[mt][j][e] + (bias && blockIdx.y == 0 ? bias[n] : 0.0f);
        if (atomic)
          atomicAdd(y + int64_t(m) * N + n, v);
        else
          y[int64_t(m) * N + n] = v;
      }
}

}  // namespace

void run_cuda(const void* x, int64_t ldx, const uint32_t* wq, const void* scale, const void* zf,
              int64_t np, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
              int64_t G, int split_k, cudaStream_t stream) {
  if (K % G != 0 || G % 16 != 0 || ldx % 8 != 0)
    throw std::invalid_argument("tersor gemm_w4 (cuda): needs K % G == 0, G % 16 == 0 and an "
                                "activation row stride that is a multiple of 8");
  if (M == 0 || N == 0) return;
  const int groups = int(K / G);
  split_k = split_k < 1 ? 1 : (split_k > groups ? groups : split_k);
  const int per_split = (groups + split_k - 1) / split_k;
  split_k = (groups + per_split - 1) / per_split;
  const dim3 grid(unsigned((N + 32 * kWarps - 1) / (32 * kWarps)), unsigned(split_k),
                  unsigned((M + kMT * 16 - 1) / (kMT * 16)));
  gemm_w4_kernel<<<grid, kThreads, 0, stream>>>(
      static_cast<const __half*>(x), ldx, wq, static_cast<const __half*>(scale),
      static_cast<const __half*>(zf), np, bias, y, int(M), int(N), int(K), int(G), per_split,
      split_k > 1);
  cuda::check(cudaGetLastError(), "tersor gemm_w4 (cuda)");
}

}  // namespace tersor::gemm_w4
