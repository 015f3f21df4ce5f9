// One decode step of a pre-norm LLM decoder layer (Llama, Qwen2, Phi-3, Mistral...) in one
// native call, from the same kernels in the same order as tersor.llm's per-module path, so the
// results are that path's bit for bit (python/tersor/llm/layer.py checks it at the swap):
//
//   h   = rms_norm(x, norm1)                      x [B][H], one new row per sequence
//   qkv = [q | k | v] = h Wqkv^T (+ b)            one packed call, or one per projection
//   q, k = rms_norm per head (Qwen3's q_norm / k_norm, where the layer has them)
//   a   = attention(q, k, v, cos, sin, cache)     rope, cache rows written at pos, GQA
//   x1  = x + (a Wo^T (+ b))                      adds in fp32, rounded to the dtype (torch's)
//   h   = rms_norm(x1, norm2)
//   gu  = [g | u] = h Wgu^T (+ b)                 one packed call, or two
//   y   = x1 + (silu(g) * u) Wdown^T (+ b)
//
// Why: from Python the step is ~12 calls through torch and pybind; on a 1B model at 2 threads
// (Zen 2) their overhead was ~4 ms of a ~34 ms token. Projections are int8 or int4 weights with
// int8 activations (gemm_w8a8 / gemm_w4a8): the kernels the layers' prepared calls use at any
// row count, or int4 weights with fp32 activations (gemm_w4's register kernel, or from the
// rows the projection names its AMX-BF16 tile forms: what the W4 layers' prepared calls run
// below the rows of their scaled bf16 and dense paths; the Python side steps natively only
// there), or 2:4 sparse weights (spmm_24: int8 values x int8 activations, or fp32 values;
// below the rows of an int8 layer's dense copy), or int8 weights with float activations
// (gemm_w8, where the layers' calls take its register or bf16 kernel). Every tensor of a step
// has the model's dtype (fp32, bf16 or fp16: the kernels' `dtype` / `io` codes), but biases
// and input scales, fp32 as the layers keep them.
#pragma once
#include <cstdint>
#include <vector>

#include "common/linear_args.h"

namespace tersor::decoder_layer {

// One projection: its packed weight, writing columns [col, col + N) of the stage's output.
struct Projection {
  // W4: fp32 activations (gemm_w4); W8A8Narrow: W8A8 with every |w| <= 64 (narrow_w);
  // W4Bf16: W4 whose bf16 rows take the bf16 group form (gemm_w4::run_bf16), as the layers'
  // own calls do on CPUs with AVX512-BF16 and no AMX (ops/gemm_w4.py BF16_MIN_ROWS)
  // S24W8A8 / S24: 2:4 sparse int8 values x int8 activations (spmm_24::run_w8a8) / fp32 values
  // (spmm_24::run), fp32 rows only in the kernels: half rows staged through fp32 (as the
  // layers' own calls widen them and round the output back). W8: int8 weights, float
  // activations (gemm_w8::run; bf16 rows without an input scale from bf16_tiles_from rows
  // gemm_w8::run_bf16, as ops/gemm_w8.py w8_form chooses)
  enum Kind {
    W8A8 = 0, W4A8 = 1, W4 = 2, W8A8Narrow = 3, W4Bf16 = 4, S24W8A8 = 5, S24 = 6, W8 = 7,
    W4A8Planes = 8  // W4A8 with 16-bit activations as two int8 planes (x_planes = 2)
  } kind;
  const void* w;      // W8Tile / W4Tile codes, or the 2:4 values (S24I8Tile / S24Group)
  const void* scale;  // fp32 [Np] (W8A8, W8, S24W8A8) or fp16 [Np/16][ngroups][16] (W4A8, W4)
  // colsum int32 [Np] (W8A8, S24W8A8) or zero points (W4A8, W4; null: symmetric)
  const void* aux;
  const float* bias;  // [N] or null
  const float* x_scale;  // [K] input scale or null
  int64_t K, N, group_size, ngroups, col;
  // W4: the rows from which bf16 rows without an input scale take the group form on the AMX
  // tiles (gemm_w4::run_bf16), and float rows the fp32 tiles (gemm_w4::run_fp32_tiles), as
  // the layers' prepared calls choose (ops/gemm_w4.py cpu_runner_w4); W8: bf16_tiles_from is
  // where bf16 rows take gemm_w8::run_bf16; 2^62: never
  int64_t bf16_tiles_from, fp32_tiles_from;
  const uint8_t* meta;  // S24W8A8 / S24: the 2:4 positions (spmm_24.h); else null
  // act-order (GPTQ's input permutation, formats/int4.py): int64 [K], or null. The layers'
  // call widens x to fp32, gathers x[:, perm] and runs on those fp32 rows (half outputs
  // rounded back once); run() does the same. Never with x_scale (the Python side declines).
  const int64_t* perm;
  // y columns [col, col + N) of rows ldy apart; x, y of dtype io (half_io::Dtype)
  void run(const void* x, int64_t M, int64_t ldx, void* y, int64_t ldy, int io,
           int nthreads) const;

 private:
  void run_permuted(const void* x, int64_t M, int64_t ldx, void* y, int64_t ldy, int io,
                    int nthreads) const;
};

struct Layer {
  int64_t hidden;  // H
  const void* norm1;  // [H], the model's dtype
  float eps1;
  const void* norm2;
  float eps2;
  std::vector<Projection> qkv;      // into [B][nq + 2 nkv]
  int64_t nq, nkv;                  // heads * D, kv_heads * D
  std::vector<Projection> o;        // one: [B][H]
  std::vector<Projection> gate_up;  // into [B][2 I]: gate columns [0, I), up [I, 2 I)
  int64_t inter;                    // I
  std::vector<Projection> down;     // one: [B][H]
  int64_t heads, kv_heads, head_dim;
  float scaling;
  const void* q_norm = nullptr;  // [D] per-head norms before rope (Qwen3), or null
  const void* k_norm = nullptr;
  float q_eps = 0, k_eps = 0;
};

// Step arguments: x, y [B][H] (contiguous; y may be x); cos / sin rows of D at b * ldcs (null: no
// rotary); the caches [B][Hkv][cap][D]; all of `dtype` (0 fp32, 1 bf16, 2 fp16); start int64
// [B] or null (left padding).
struct StepArgs {
  const void* x;
  void* y;
  int64_t B;
  const void* cos;
  const void* sin;
  int64_t ldcs;
  void* kcache;
  void* vcache;
  int64_t cap, pos;
  const int64_t* start;
  int dtype;
  int nthreads;
};

void step(const Layer& layer, const StepArgs& a);

// A whole decoder stack's step: layers[i] on its own caches kcache[i] / vcache[i] (capacity
// cap[i]), a.x's rows in, a.y's out (a.y may be a.x: a layer reads its x before it writes its
// y, so the rows are stepped in place, layer after layer). a.kcache / vcache / cap unused.
void step_layers(const std::vector<const Layer*>& layers, const StepArgs& a,
                 const std::vector<void*>& kcache, const std::vector<void*>& vcache,
                 const std::vector<int64_t>& cap);

}  // namespace tersor::decoder_layer
