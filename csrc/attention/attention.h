// One decode step of grouped-query attention with rotary position embedding, the new key and
// value written into the caller's cache in place:
//
//   for each sequence b, kv head j, and query head h of j's group (h = j*G .. j*G + G-1,
//   G = H / Hkv, the repeat_kv order of Hugging Face models):
//     K[b][j][pos] = rope(k[b][j]),  V[b][j][pos] = v[b][j]        (cache rows, in place)
//     s[p]   = (rope(q[b][h]) . K[b][j][p]) * scaling,   p = start[b] .. pos
//     out[b][h] = sum_p softmax(s)[p] * V[b][j][p]
//
//   rope(x)[i] = x[i] * cos[i] + rotate_half(x)[i] * sin[i],
//   rotate_half(x) = (-x[D/2 ..], x[.. D/2])                    (HF's apply_rotary_pos_emb)
//
// Why a kernel: a 1B Llama's decode step calls attention 16 times on one query row; in eager
// PyTorch each call is ~25 ops (views, rotary, two torch.cat into the cache, SDPA), ~0.4 ms
// against ~20 us of arithmetic here.
//
// start (null: all 0) skips a sequence's first cache rows: the left padding of a batch whose
// prompts differ in length (start[b] <= pos).
//
// Tensors are fp32, bf16 or fp16 (`dtype`, half_io::Dtype), all the same; the arithmetic is
// fp32 (halves widened exactly, results rounded once to nearest even). The cache is
// [B][Hkv][cap][D] with rows 0 .. pos - 1 already filled. Every sum runs in 8 fp32 lanes then a
// fixed tree (attention_impl.h), so the portable and the AVX2 builds give the same bits.
#pragma once
#include <cstdint>

namespace tersor::attention {

struct DecodeArgs {
  const void* q;  // [B][H * D], row stride ldq (elements)
  const void* k;  // [B][Hkv * D] the new keys, before rotary
  const void* v;  // [B][Hkv * D]
  int64_t ldq, ldk, ldv;
  const void* cos;  // [B][D], row stride ldcs; null: no rotary
  const void* sin;
  int64_t ldcs;
  void* kcache;  // [B][Hkv][cap][D]
  void* vcache;
  int64_t B, H, Hkv, D, cap, pos;  // D % 8 == 0, pos < cap
  const int64_t* start;             // [B] or null
  float scaling;
  void* out;  // [B][H * D], row stride ldo
  int64_t ldo;
  int dtype;
  int nthreads;
};

void decode(const DecodeArgs& a);  // per-call ISA dispatch
void decode_ref(const DecodeArgs& a);
void decode_avx2(const DecodeArgs& a);

}  // namespace tersor::attention
