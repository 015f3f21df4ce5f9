// A decoder layer's decode step in one call (decoder_layer/decoder_layer.h): the layer is built
// once (python/tersor/llm/layer.py) and stepped per token; a stack of them in one call too
// (python/tersor/llm/stack.py).
#include <pybind11/stl.h>

#include <stdexcept>

#include "bindings/bind.h"
#include "decoder_layer/decoder_layer.h"

namespace tersor::bindings {

namespace {

// A projection crosses as 15 integers: kind, w, scale, aux, bias, x_scale, K, N, group_size,
// ngroups, col, bf16_tiles_from, fp32_tiles_from, meta, perm (Projection's fields, in order).
std::vector<decoder_layer::Projection> projections(const std::vector<int64_t>& flat) {
  std::vector<decoder_layer::Projection> out;
  if (flat.size() % 15) throw std::invalid_argument("projections: 15 integers each");
  for (size_t i = 0; i + 15 <= flat.size(); i += 15) {
    const int64_t* f = flat.data() + i;
    auto at = [&](int i) { return static_cast<addr>(f[i]); };
    out.push_back({static_cast<decoder_layer::Projection::Kind>(f[0]), ptr<const void>(at(1)),
                   ptr<const void>(at(2)), ptr<const void>(at(3)), ptr<const float>(at(4)),
                   ptr<const float>(at(5)), f[6], f[7], f[8], f[9], f[10], f[11], f[12],
                   ptr<const uint8_t>(at(13)), ptr<const int64_t>(at(14))});
  }
  return out;
}

}  // namespace

void bind_decoder_layer(py::module_& m) {
  using decoder_layer::Layer;
  py::class_<Layer>(m, "DecoderLayer",
                    "A pre-norm decoder layer's decode step in one call: rms_norm, q/k/v, "
                    "attention with the cache write, o + residual, rms_norm, gate/up, "
                    "silu(g) * u, down + residual (decoder_layer/decoder_layer.h). "
                    "Projections: flat lists of 15 integers each (kind 0 W8A8 / 1 W4A8 / 2 W4 / "
                    "3 W8A8 with every |w| <= 64 / 4 W4 whose bf16 rows take gemm_w4_bf16 / "
                    "5 2:4 W8A8 / 6 2:4 fp32 / 7 W8 (float activations) / 8 W4A8 with two "
                    "activation planes (16-bit), w (or the 2:4 "
                    "values), scale, aux (colsum / zero points), bias, x_scale, K, N, "
                    "group_size, ngroups, first output column, the rows from which W4's (W8's) "
                    "bf16 rows take gemm_w4_bf16 (gemm_w8_bf16) and W4's float rows "
                    "gemm_w4_fp32_tiles, the 2:4 meta (else 0), the act-order permutation (int64 "
                    "[K], else 0)). Addresses must outlive the object.")
      .def(py::init([](int64_t hidden, addr norm1, float eps1, addr norm2, float eps2,
                       const std::vector<int64_t>& qkv, int64_t nq, int64_t nkv,
                       const std::vector<int64_t>& o, const std::vector<int64_t>& gate_up,
                       int64_t inter, const std::vector<int64_t>& down, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, float scaling, addr q_norm,
                       float q_eps, addr k_norm, float k_eps) {
             return Layer{hidden, ptr<const void>(norm1), eps1, ptr<const void>(norm2), eps2,
                          projections(qkv), nq, nkv, projections(o), projections(gate_up),
                          inter, projections(down), heads, kv_heads, head_dim, scaling,
                          ptr<const void>(q_norm), ptr<const void>(k_norm), q_eps, k_eps};
           }),
           py::arg("hidden"), py::arg("norm1"), py::arg("eps1"), py::arg("norm2"),
           py::arg("eps2"), py::arg("qkv"), py::arg("nq"), py::arg("nkv"), py::arg("o"),
           py::arg("gate_up"), py::arg("inter"), py::arg("down"), py::arg("heads"),
           py::arg("kv_heads"), py::arg("head_dim"), py::arg("scaling"), py::arg("q_norm") = 0,
           py::arg("q_eps") = 0.0f, py::arg("k_norm") = 0, py::arg("k_eps") = 0.0f,
           "hidden H; norm1 / norm2 fp32 [H] with their eps; qkv projections writing [q | k | "
           "v] (nq = heads * head_dim, nkv = kv_heads * head_dim columns), o (nq -> H), gate_up "
           "writing [gate | up] (2 * inter columns), down (inter -> H); scaling: the attention "
           "scores' factor; q_norm / k_norm: [head_dim] weights of per-head RMSNorms on q and "
           "k before rope (Qwen3), or 0.")
      .def(
          "step",
          [](const Layer& layer, addr x, addr y, int64_t B, addr cos, addr sin, int64_t ldcs,
             addr kcache, addr vcache, int64_t cap, int64_t pos, addr start, int dtype,
             int nthreads) {
            decoder_layer::step(layer, {ptr<const void>(x), ptr<void>(y), B, ptr<const void>(cos),
                                        ptr<const void>(sin), ldcs, ptr<void>(kcache),
                                        ptr<void>(vcache), cap, pos, ptr<const int64_t>(start),
                                        dtype, nthreads});
          },
          py::arg("x"), py::arg("y"), py::arg("B"), py::arg("cos"), py::arg("sin"),
          py::arg("ldcs"), py::arg("kcache"), py::arg("vcache"), py::arg("cap"), py::arg("pos"),
          py::arg("start"), py::arg("dtype"), py::arg("nthreads"), nogil(),
          "y [B][H] = the layer on x [B][H] (one new row per sequence), its k / v rows written "
          "at pos of the caches [B][Hkv][cap][D]; cos / sin rows of D at b * ldcs (0: no "
          "rotary); start int64 [B] or 0 (left padding). dtype 0 fp32, 1 bf16, 2 fp16 for x, "
          "y, cos, sin, the caches and the norm weights. y may be x.");
  m.def(
      "decoder_layers_step",
      [](const std::vector<const Layer*>& layers, addr x, addr y, int64_t B, addr cos, addr sin,
         int64_t ldcs, const std::vector<addr>& kcache, const std::vector<addr>& vcache,
         const std::vector<int64_t>& cap, int64_t pos, addr start, int dtype, int nthreads) {
        const size_t n = layers.size();
        if (kcache.size() != n || vcache.size() != n || cap.size() != n)
          throw std::invalid_argument("decoder_layers_step: one kcache, vcache and cap per layer");
        std::vector<void*> ks(n), vs(n);
        for (size_t i = 0; i < n; ++i) ks[i] = ptr<void>(kcache[i]), vs[i] = ptr<void>(vcache[i]);
        py::gil_scoped_release nogil_here;
        decoder_layer::step_layers(layers,
                                   {ptr<const void>(x), ptr<void>(y), B, ptr<const void>(cos),
                                    ptr<const void>(sin), ldcs, nullptr, nullptr, 0, pos,
                                    ptr<const int64_t>(start), dtype, nthreads},
                                   ks, vs, cap);
      },
      py::arg("layers"), py::arg("x"), py::arg("y"), py::arg("B"), py::arg("cos"), py::arg("sin"),
      py::arg("ldcs"), py::arg("kcache"), py::arg("vcache"), py::arg("cap"), py::arg("pos"),
      py::arg("start"), py::arg("dtype"), py::arg("nthreads"),
      "A decoder stack's decode step: DecoderLayer.step of each layer in order, layer i on its "
      "caches kcache[i] / vcache[i] of capacity cap[i], x's rows in and y's out (y may be x: "
      "the rows are stepped in place); the other arguments as DecoderLayer.step's.");
}

}  // namespace tersor::bindings
