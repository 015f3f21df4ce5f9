"""Implementations of y = x W^T + b to time side by side: ours and the named baselines.

Each ``Impl`` holds R copies of its weights in its own format and rotates through them, so that
on this machine's large L3 (hundreds of MiB) no implementation is timed on cache-resident
weights when the layer is big enough not to be (DESIGN, performance method).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import tersor
from tersor.bench.timing import has_vnni, quiet_baselines
from tersor.nn import QLinear


def _rotation_bytes() -> int:
    """Bytes of weight copies each implementation rotates through: twice this CPU's last-level
    cache (every call then reads its weights from DRAM, as inside a model far larger than the
    cache), at least 64 MiB; 640 MiB where the size is unknown (twice the 300 MiB L3 of the
    first reference machine). At most 1/48 of the RAM: a table holds some twenty
    implementations' copies at once, and a fixed 640 MiB ran a 2-core, 24 GiB host with a 32
    MiB L3 out of memory on 7B-size layers, as twice a 480 MiB L3 did on Falcon-7B's MLP
    (`--shapes real`)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            v = f.read().strip()
        want = max(64 << 20, 2 * int(v[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[v[-1]])
    except (OSError, KeyError, ValueError):
        want = 640 << 20
    try:
        with open("/proc/meminfo") as f:
            total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) << 10
        return min(want, max(64 << 20, total // 48))
    except (OSError, StopIteration, ValueError):
        return want


ROTATION_BYTES = _rotation_bytes()
MAX_COPIES = 32


@dataclass
class Impl:
    name: str
    fn: Callable  # fn(x, i) -> y, using weight copy i % copies
    weight_bytes: int  # bytes of weights (and scales) read by one call
    copies: int
    kind: str  # "ours" or "baseline"
    unavailable: str = ""  # reason when the baseline cannot run here
    vs: tuple = ()  # ours: the baselines its ratios are taken against (empty: all of them)
    tol: float = 0.0  # relative error tolerated against the family's reference (0: family's)
    # the activations the dot products take: "f32", "bf16", "i8" ("": a reference point that
    # every row is compared with, e.g. torch fp32). Ours are compared with baselines of the
    # same activation type (and with the untagged ones): the "same scheme" rule.
    act: str = ""
    # prepare(x): run before timing on each input shape, for baselines whose first call per
    # weight copy and shape builds their kernels (OpenVINO)
    prepare: Optional[Callable] = None


def copies_for(weight_bytes: int, rotate: bool) -> int:
    if not rotate:
        return 1
    return max(1, min(MAX_COPIES, math.ceil(ROTATION_BYTES / max(weight_bytes, 1))))


def make_linear(k: int, n: int, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / math.sqrt(k))
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def torch_fp32(lin: nn.Linear, rotate: bool) -> Impl:
    nbytes = lin.weight.numel() * 4
    r = copies_for(nbytes, rotate)
    ws = [lin.weight.detach().clone() for _ in range(r)]
    bs = [lin.bias.detach().clone() for _ in range(r)]
    return Impl("torch fp32", lambda x, i: F.linear(x, ws[i % r], bs[i % r]), nbytes, r, "baseline")


def torch_ao_dynamic(lin: nn.Linear, rotate: bool) -> Impl:
    nbytes = lin.weight.numel() + 4 * lin.out_features
    r = copies_for(nbytes, rotate)
    old = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86"
        mods = [
            torch.ao.quantization.quantize_dynamic(
                nn.Sequential(copy.deepcopy(lin)), {nn.Linear}, dtype=torch.qint8
            )[0]
            for _ in range(r)
        ]
    except Exception as e:  # pragma: no cover - depends on the torch build
        return Impl("torch.ao dyn int8", None, nbytes, 0, "baseline", f"unavailable: {e}")
    finally:
        torch.backends.quantized.engine = old

    def fn(x, i):
        return mods[i % r](x)

    return Impl("torch.ao dyn int8", fn, nbytes, r, "baseline", act="i8")


def ort_dynamic_int8(lin: nn.Linear, rotate: bool) -> Impl:
    """onnxruntime's dynamic int8 MatMul (the fused op its quantize_dynamic tool produces:
    DynamicQuantizeMatMul, per-column weight scales), one session per weight copy."""
    nbytes = lin.weight.numel() + 4 * lin.out_features
    try:
        import numpy as np
        import onnx  # noqa: F401  (availability: the graph helpers below need it)
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        return Impl(
            "onnxruntime dyn int8",
            None,
            nbytes,
            0,
            "baseline",
            f"onnxruntime/onnx not installed ({e.name}); pip install '.[bench]'",
        )
    from tersor.formats.int8 import quantize_per_channel_int8

    q, s = quantize_per_channel_int8(lin.weight)
    n, k = q.shape
    inits = [
        numpy_helper.from_array(q.t().contiguous().numpy(), "W"),
        numpy_helper.from_array(s.numpy(), "ws"),
        numpy_helper.from_array(np.zeros(n, np.int8), "wzp"),
        numpy_helper.from_array(lin.bias.detach().numpy().copy(), "b"),
    ]
    node = helper.make_node(
        "DynamicQuantizeMatMul", ["x", "W", "ws", "wzp", "b"], ["y"], domain="com.microsoft"
    )
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    blob = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # Its pool would otherwise keep spinning after each call and steal one of the two cores
    # from whatever is timed next (ours or torch's): measured, that made every other
    # implementation several times slower.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    r = copies_for(nbytes, rotate)
    sessions = [
        ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]) for _ in range(r)
    ]

    def fn(x, i):
        return torch.from_numpy(sessions[i % r].run(None, {"x": x.numpy()})[0])

    return Impl("onnxruntime dyn int8", fn, nbytes, r, "baseline", act="i8")


# OpenVINO's CPU plugin on one Linear: activations per variant (compile-time properties)
OPENVINO_ACTS = {
    # int8 activations: the plugin's dynamic quantization of compressed-weight matmuls (its
    # default, per group of 32 activations), the rest in fp32
    "i8": {"INFERENCE_PRECISION_HINT": "f32"},
    "f32": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
    # its default on CPUs with AVX512-BF16 / AMX: bf16 activations and fp32 accumulation
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
}


def openvino_linear(lin: nn.Linear, bits: int, group_size: int, act: str, rotate: bool) -> Impl:
    """OpenVINO's CPU plugin on the layer as a user would get it: an OpenVINO model of the
    Linear (MatMul + bias) whose weight NNCF compresses (int8 per output channel, or int4
    symmetric group-wise, every layer, ratio 1), compiled with the bench's thread count and
    the LATENCY hint, activations per OPENVINO_ACTS. One compiled model per weight copy: the
    plugin repacks the weight per compiled model (measured: R compiled models of one IR rotate
    like R distinct ones)."""
    tag = "INT8" if bits == 8 else f"INT4 g{group_size}"
    name = f"OpenVINO {tag} {act}"
    n, k = lin.weight.shape
    nbytes = n * k * bits // 8 + 2 * n * (1 if bits == 8 else k // group_size)
    try:
        import nncf
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError as e:
        why = f"openvino / nncf not installed ({e.name}); pip install openvino nncf"
        return Impl(name, None, nbytes, 0, "baseline", why, act=act)
    if act == "bf16" and not tersor.cpu_info()["features"].get("avx512bf16"):
        why = "this CPU has no AVX512-BF16 (OpenVINO would run the f32 variant)"
        return Impl(name, None, nbytes, 0, "baseline", why, act=act)
    x = ops.parameter([-1, k], ov.Type.f32, name="x")
    w = ops.constant(lin.weight.detach().numpy().copy())
    y = ops.add(ops.matmul(x, w, False, True), ops.constant(lin.bias.detach().numpy().copy()))
    mode = nncf.CompressWeightsMode
    opts = (  # int8 modes compress every layer already (and refuse all_layers)
        dict(mode=mode.INT8_SYM)
        if bits == 8
        else dict(mode=mode.INT4_SYM, group_size=group_size, ratio=1.0, all_layers=True)
    )
    nncf.set_log_level(logging.ERROR)  # its per-call bit-width table would split the bench's
    model = nncf.compress_weights(ov.Model([y], [x], "linear"), **opts)
    config = {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        **OPENVINO_ACTS[act],
    }
    core = ov.Core()
    r = copies_for(nbytes, rotate)
    requests = [core.compile_model(model, "CPU", config).create_infer_request() for _ in range(r)]

    def fn(x, i):
        return torch.from_numpy(requests[i % r].infer({0: x.numpy()})[0].copy())

    def prepare(x):  # the plugin repacks a weight and builds its kernels on the first call
        for req in requests:
            req.infer({0: x.numpy()})

    return Impl(name, fn, nbytes, r, "baseline", act=act, prepare=prepare)


def torchao_int8_dynamic(lin: nn.Linear, rotate: bool) -> Impl:
    """torchao's int8 dynamic activation x int8 weight (Int8DynamicActivationInt8WeightConfig),
    under torch.compile as torchao recommends (one compiled call per M, shared by the copies)."""
    name = "torchao int8 dyn (compiled)"
    nbytes = lin.weight.numel() + 4 * lin.out_features
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as e:
        why = f"torchao not installed ({e.name}); pip install torchao --no-deps"
        return Impl(name, None, nbytes, 0, "baseline", why, act="i8")
    r = copies_for(nbytes, rotate)
    mods = []
    with quiet_baselines():
        for _ in range(r):
            m = nn.Sequential(copy.deepcopy(lin))
            quantize_(m, Int8DynamicActivationInt8WeightConfig())
            mods.append(m)
    run = torch.compile(lambda x, m: m(x), dynamic=False)

    def fn(x, i):
        with torch.no_grad():
            return run(x, mods[i % r])

    return Impl(name, fn, nbytes, r, "baseline", act="i8")


def tersor_linear(lin: nn.Linear, config, rotate: bool, name: str, act: str = "") -> Impl:
    base = QLinear.from_float(lin, config)
    nbytes = base.nbytes
    r = copies_for(nbytes, rotate)
    mods = [base] + [copy.deepcopy(base) for _ in range(r - 1)]
    return Impl(name, lambda x, i: mods[i % r](x), nbytes, r, "ours", act=act)


def linear_impls(
    lin: nn.Linear,
    rotate: bool,
    which=("w8a8", "w7a8", "w8", "fp32", "ao", "ort", "torchao", "ov-i8", "ov-f32"),
):
    """tersor W7A8: W8A8Config(weight_bits=7), the grid OpenVINO's NNCF picks on CPUs without
    VNNI (torch.ao's fbgemm drops an activation bit there instead)."""
    makers = {
        "w8a8": lambda: tersor_linear(lin, tersor.W8A8Config(), rotate, "tersor W8A8", "i8"),
        "w7a8": lambda: tersor_linear(
            lin, tersor.W8A8Config(weight_bits=7), rotate, "tersor W7A8", "i8"
        ),
        "w8": lambda: tersor_linear(lin, tersor.W8Config(), rotate, "tersor W8", "f32"),
        "fp32": lambda: torch_fp32(lin, rotate),
        "ao": lambda: torch_ao_dynamic(lin, rotate),
        "ort": lambda: ort_dynamic_int8(lin, rotate),
        "torchao": lambda: torchao_int8_dynamic(lin, rotate),
        "ov-i8": lambda: openvino_linear(lin, 8, 0, "i8", rotate),
        "ov-f32": lambda: openvino_linear(lin, 8, 0, "f32", rotate),
    }
    return [makers[w]() for w in which]


# ---- int4 -------------------------------------------------------------------------------------


def _int4_weights(lin: nn.Linear, group_size: int):
    from tersor.formats.int4 import quantize_int4

    return quantize_int4(lin.weight, group_size, symmetric=False)


def bf16_rows(fn: Callable) -> Callable:
    """fn(xb, i) fed bf16 rows, as a bf16 model's layer is: the harness's fp32 x is converted
    once per input, outside the timed calls (inside them, the two conversions of a call, ~3 us,
    were timed as the layer's: most of what separated two int4 kernels on a 384x1536 layer at
    one row). Its output stays bf16."""
    held = [None, None]

    def run(x, i):
        if held[0] is not x:
            held[0], held[1] = x, x.to(torch.bfloat16)
        return fn(held[1], i)

    return run


def torch_int4pack(lin: nn.Linear, group_size: int, rotate: bool) -> Impl:
    """torch._weight_int4pack_mm_for_cpu (bf16 activations: torch's fastest int4 CPU path);
    its zero point is a float: w = (q - 8) * s + zf, so zf = (8 - z) * s."""
    name = f"torch int4pack g{group_size}"
    q, s, z, g = _int4_weights(lin, group_size)
    n, k = q.shape
    nbytes = n * k // 2 + 4 * n * (k // g)
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    except (AttributeError, RuntimeError) as e:
        return Impl(name, None, nbytes, 0, "baseline", f"unavailable in this torch: {e}")
    sf = s.to(torch.float32).t()
    sz = torch.stack([sf, (8.0 - z.to(torch.float32).t()) * sf], dim=-1).to(torch.bfloat16)
    r = copies_for(nbytes, rotate)
    ws = [(packed.clone(), sz.clone().contiguous()) for _ in range(r)]
    bias = lin.bias.detach().to(torch.bfloat16)

    def fn(xb, i):  # bf16 in and out, the bias added as torchao's int4 linear adds it
        p, sc = ws[i % r]
        return torch._weight_int4pack_mm_for_cpu(xb, p, g, sc) + bias

    return Impl(name, bf16_rows(fn), nbytes, r, "baseline", act="bf16")


def ort_matmul_nbits(lin: nn.Linear, group_size: int, accuracy_level: int, rotate: bool) -> Impl:
    """onnxruntime MatMulNBits (bits=4, block = group_size); accuracy_level 4 computes with
    int8 activations, 0 with float."""
    name = f"ort MatMulNBits g{group_size} acc{accuracy_level}"
    q, s, z, g = _int4_weights(lin, group_size)
    n, k = q.shape
    ng = k // g
    nbytes = n * k // 2 + n * ng * (4 + 1)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        return Impl(name, None, nbytes, 0, "baseline", f"onnxruntime/onnx not installed ({e.name})")
    from tersor.formats.int4 import to_nibbles

    blob = to_nibbles(q).view(n, ng, g // 2).numpy()
    zp = torch.zeros(n, (ng + 1) // 2 * 2, dtype=torch.uint8)
    zp[:, :ng] = z
    zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).numpy()
    inits = [
        numpy_helper.from_array(blob, "B"),
        numpy_helper.from_array(s.to(torch.float32).reshape(-1).numpy(), "scales"),
        numpy_helper.from_array(zp.reshape(-1), "zp"),
        numpy_helper.from_array(lin.bias.detach().numpy().copy(), "bias"),
    ]
    node = helper.make_node(
        "MatMulNBits",
        ["x", "B", "scales", "zp", "", "bias"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=g,
        accuracy_level=accuracy_level,
    )
    graph = helper.make_graph(
        [node],
        "linear4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    r = copies_for(nbytes, rotate)
    data = model.SerializeToString()
    try:
        sessions = [
            ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]) for _ in range(r)
        ]
    except Exception as e:  # pragma: no cover - depends on the onnxruntime build
        return Impl(name, None, nbytes, 0, "baseline", f"unavailable: {e}")

    def fn(x, i):
        return torch.from_numpy(sessions[i % r].run(None, {"x": x.numpy()})[0])

    return Impl(name, fn, nbytes, r, "baseline", act="i8" if accuracy_level == 4 else "f32")


def tersor_w4_bf16(lin: nn.Linear, group_size: int, rotate: bool) -> Impl:
    """The W4 layer fed bf16 activations (a bf16 model's), as torch int4pack is: on CPUs with
    AVX512-BF16 it takes the vdpbf16ps kernel from 8 rows, and with AMX-BF16 the tiles from 16
    (csrc/gemm_w4/gemm_w4.h)."""
    im = tersor_linear(lin, tersor.W4Config(group_size=group_size), rotate, "")
    run = im.fn
    im.name = f"tersor W4 g{group_size} bf16"
    im.fn = bf16_rows(run)
    im.act = "bf16"
    return im


def int4_impls(lin: nn.Linear, rotate: bool, group_sizes=(32, 128)):
    w8a8 = tersor_linear(lin, tersor.W8A8Config(), rotate, "tersor W8A8")
    w8a8.kind = "baseline"  # the reference point for the 4-bit schemes
    out = [torch_fp32(lin, rotate), w8a8]
    for g in group_sizes:
        if lin.in_features % g:  # GPT-2 XL's 1600 at g128: every g-group scheme, ours too
            why = f"group size {g} does not divide K={lin.in_features}"
            out.append(Impl(f"int4 g{g} (every implementation)", None, 0, 0, "ours", why))
            continue
        out += [
            tersor_linear(lin, tersor.W4Config(group_size=g), rotate, f"tersor W4 g{g}", "f32"),
            tersor_w4_bf16(lin, g, rotate),
            tersor_linear(lin, tersor.W4A8Config(group_size=g), rotate, f"tersor W4A8 g{g}", "i8"),
            # 16-bit activations (two int8 planes): against the float-activation peers
            tersor_linear(
                lin,
                tersor.W4A8Config(group_size=g, act_bits=16),
                rotate,
                f"tersor W4 g{g} a16",
                "f32",
            ),
            torch_int4pack(lin, g, rotate),
            ort_matmul_nbits(lin, g, 0, rotate),
            ort_matmul_nbits(lin, g, 4, rotate),
            *(openvino_linear(lin, 4, g, act, rotate) for act in OPENVINO_ACTS),
        ]
    return out


# ---- Conv2d -----------------------------------------------------------------------------------

# ResNet layers of the Conv2d issue: name -> (C_in, C_out, H = W, kernel, stride), batch 8.
CONV_LAYERS = {
    "res2.3x3": (64, 64, 56, 3, 1),
    "res3.3x3": (128, 128, 28, 3, 1),
    "res4.3x3": (256, 256, 14, 3, 1),
    "res5.3x3": (512, 512, 7, 3, 1),
    "res2.1x1.up": (64, 256, 56, 1, 1),
    "res2.1x1.down": (256, 64, 56, 1, 1),
    "stem.7x7": (3, 64, 224, 7, 2),
    # MobileNetV2's depthwise 3x3 layers (groups = channels), after a ReLU6
    "mbv2.dw32.112": (32, 32, 112, 3, 1, 32),
    "mbv2.dw144.56s2": (144, 144, 56, 3, 2, 144),
    "mbv2.dw192.28": (192, 192, 28, 3, 1, 192),
    "mbv2.dw576.14": (576, 576, 14, 3, 1, 576),
    "mbv2.dw960.7": (960, 960, 7, 3, 1, 960),
    # ResNeXt-50 32x4d's grouped 3x3 layers (32 groups of 4, 8, 16, 32 channels; groups of 4
    # and 8 run merged into groups of 16: QConv2d.kernel_groups)
    "rnx50.g32x4.56": (128, 128, 56, 3, 1, 32),
    "rnx50.g32x8.28": (256, 256, 28, 3, 1, 32),
    "rnx50.g32x16.14": (512, 512, 14, 3, 1, 32),
    "rnx50.g32x32.7": (1024, 1024, 7, 3, 1, 32),
}
CONV_BATCH = 8


def conv_case(name: str, signed: bool = False):
    """(conv, x) for a CONV_LAYERS entry, fed what the layer sees inside a ResNet: the body
    convolutions a ReLU's output (non-negative: on CPUs without VNNI our int8 tile then skips
    the sign trick), the stem a normalized image (signed); signed=True: signed everywhere."""
    ci, co, hw, k, s, *groups = CONV_LAYERS[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(ci, co, k, s, k // 2, groups=groups[0] if groups else 1).eval()
    x = torch.randn(CONV_BATCH, ci, hw, hw).contiguous(memory_format=torch.channels_last)
    if not name.startswith("stem") and not signed:
        x = x.relu()
    return conv, x


def conv_impls(conv: nn.Conv2d, x_example: torch.Tensor):
    """tersor W8A8 QConv2d, torch fp32 F.conv2d (oneDNN) and torch.ao's quantized conv (x86
    engine, channels_last), each fp32 in / fp32 out: torch.ao pays its quantize / dequantize
    of the activations like we do."""
    from tersor.nn import QConv2d

    q = QConv2d.from_float(conv, tersor.W8A8Config())
    out = [
        Impl("tersor W8A8 conv", lambda x, i: q(x), 0, 1, "ours"),
        Impl("torch fp32 conv", lambda x, i: conv(x), 0, 1, "baseline"),
    ]
    try:
        torch.backends.quantized.engine = "x86"
        qconv = torch.ao.nn.quantized.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        w = conv.weight.detach()
        ws = w.abs().amax(dim=(1, 2, 3)) / 127
        qw = torch.quantize_per_channel(
            w, ws, torch.zeros_like(ws, dtype=torch.int64), 0, torch.qint8
        )
        qconv.set_weight_bias(qw, conv.bias.detach() if conv.bias is not None else None)
        ref = conv(x_example).detach()
        qconv.scale, qconv.zero_point = float((ref.max() - ref.min()) / 255), 128
        # Without VNNI, fbgemm sums u8 x s8 pairs in saturating int16 (vpmaddubsw): activations
        # get 7 bits there, as torch.ao's own reduce_range does.
        levels = 255 if has_vnni() else 127
        xs = float((x_example.max() - x_example.min()) / levels)
        xz = int(round(-x_example.min().item() / xs))

        def ao(x, i):
            return qconv(torch.quantize_per_tensor(x, xs, xz, torch.quint8)).dequantize()

        out.append(Impl("torch.ao quantized conv", ao, 0, 1, "baseline"))
    except Exception as e:  # pragma: no cover - depends on the torch build
        out.append(Impl("torch.ao quantized conv", None, 0, 0, "baseline", f"unavailable: {e}"))
    return out


# ---- sparse ------------------------------------------------------------------------------------
# Every sparse family times ours and the baselines on the same pruned weight: fp32 formats against
# torch fp32 dense and torch's sparse matmul, int8 formats against our dense W8A8 (AMX here) and
# the same kernel restricted to AVX-512 VNNI (the CPUs without AMX the int8 figures assume).

DENSE = "torch fp32 dense (pruned)"
W8A8_DENSE = "tersor W8A8 dense (pruned)"
W8A8_VNNI = "tersor W8A8 dense, VNNI (no AMX)"
INT8_TOL = 0.05  # per-row int8 activations against the fp32 product


def _pruned_linear(lin: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    out = nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(lin.bias)
    return out


def _module_impl(base: nn.Module, rotate: bool, name: str, vs=(), tol=0.0) -> Impl:
    r = copies_for(base.nbytes, rotate)
    mods = [base] + [copy.deepcopy(base) for _ in range(r - 1)]
    return Impl(name, lambda x, i: mods[i % r](x), base.nbytes, r, "ours", vs=vs, tol=tol)


def _dense_w8a8(pruned: nn.Linear, rotate: bool) -> list:
    import os

    dense = tersor_linear(pruned, tersor.W8A8Config(), rotate, W8A8_DENSE)
    dense.kind, dense.tol = "baseline", INT8_TOL

    def vnni(x, i):  # TERSOR_CPU_ISA is read on every call
        old = os.environ.get("TERSOR_CPU_ISA")
        os.environ["TERSOR_CPU_ISA"] = "avx512"
        try:
            return dense.fn(x, i)
        finally:
            if old is None:
                del os.environ["TERSOR_CPU_ISA"]
            else:
                os.environ["TERSOR_CPU_ISA"] = old

    info = tersor.cpu_info()
    why = (
        ""
        if info["active"] == "amx"
        else f"needs AMX active with AVX-512 VNNI beside it (active ISA here: {info['active']}), "
        f"otherwise it is the W8A8 dense row"
    )
    return [
        dense,
        Impl(
            W8A8_VNNI,
            vnni,
            dense.weight_bytes,
            dense.copies,
            "baseline",
            unavailable=why,
            tol=INT8_TOL,
        ),
    ]


def sparse24_impls(lin: nn.Linear, rotate: bool):
    """tersor 2:4 fp32 against torch fp32 dense, 2:4 int8 against our dense W8A8, on the same
    pruned weight."""
    from tersor.formats.sparse24 import prune_24

    pruned = _pruned_linear(lin, prune_24(lin.weight))
    base = tersor.SparseLinear.from_float(pruned, tersor.Sparse24Config())
    dense = torch_fp32(pruned, rotate)
    dense.name = DENSE
    return [
        _module_impl(base, rotate, "tersor 2:4 fp32", vs=(DENSE,)),
        dense,
        _module_impl(
            base.quantized(tersor.W8A8Config()),
            rotate,
            "tersor 2:4+w8a8",
            vs=(W8A8_DENSE, W8A8_VNNI),
            tol=INT8_TOL,
        ),
        *_dense_w8a8(pruned, rotate),
    ]


def unstructured_impls(lin: nn.Linear, rotate: bool, sparsity: float = 0.9):
    """tersor unstructured (CSR/ELL) against torch fp32 dense and torch's CSR matmul, its int8
    form against our dense W8A8, on the same pruned weight; at sparsities below the large-M
    break-even also the layer sparsify_ builds (dense from 256 rows)."""
    from tersor.configs import DENSE_FALLBACK_ROWS, LARGE_M_BREAK_EVEN
    from tersor.formats.sparse_csr import prune_unstructured

    pruned = _pruned_linear(lin, prune_unstructured(lin.weight, sparsity))
    base = tersor.CsrLinear.from_float(pruned, tersor.SparseConfig(sparsity, dense_fallback=False))
    tag = f"{round(sparsity * 100)}%"
    dense = torch_fp32(pruned, rotate)
    dense.name = DENSE
    # as many copies as ours read (their bytes, int64 indices): 4 fixed copies of a 4096x4096
    # layer stayed in a 480 MiB L3 while ours came from DRAM (0.56 against 1.22 ms at 8 rows)
    first = pruned.weight.detach().to_sparse_csr()
    csr_bytes = sum(
        t.numel() * t.element_size()
        for t in (first.crow_indices(), first.col_indices(), first.values())
    )
    csrs = [first] + [first.clone() for _ in range(copies_for(csr_bytes, rotate) - 1)]
    b = pruned.bias.detach()
    csr = Impl(
        "torch CSR",
        lambda x, i: torch.mm(csrs[i % len(csrs)], x.t()).t() + b,
        csr_bytes,
        len(csrs),
        "baseline",
    )
    out = [
        _module_impl(base, rotate, f"tersor unstructured {tag}", vs=(DENSE, "torch CSR")),
        dense,
        csr,
    ]
    if sparsity < LARGE_M_BREAK_EVEN:
        chosen = tersor.CsrLinear.from_float(pruned, tersor.SparseConfig(sparsity))
        assert chosen.dense_from_rows == DENSE_FALLBACK_ROWS
        out.append(
            _module_impl(
                chosen, rotate, f"tersor unstructured {tag} (sparsify_)", vs=(DENSE, "torch CSR")
            )
        )
    out.append(
        _module_impl(
            base.quantized(tersor.W8A8Config()),
            rotate,
            f"tersor unstructured+w8a8 {tag}",
            vs=(W8A8_DENSE, W8A8_VNNI),
            tol=INT8_TOL,
        )
    )
    return out + _dense_w8a8(pruned, rotate)


def block_impls(lin: nn.Linear, rotate: bool, sparsity: float = 0.9, block=(16, 4)):
    """tersor block-sparse fp32 (16 x 1 kernel blocks) against torch fp32 dense and torch's BSR
    matmul (4 x 4 blocks: its CPU path takes square blocks only), the int8 form (16 x 4) against
    our dense W8A8, on one weight pruned in (16, 4) blocks."""
    import warnings

    from tersor.formats.sparse_block import prune_block

    pruned = _pruned_linear(lin, prune_block(lin.weight, sparsity, block))
    base = tersor.BlockSparseLinear.from_float(pruned, tersor.SparseConfig(sparsity, block=block))
    tag = f"{round(sparsity * 100)}%"
    dense = torch_fp32(pruned, rotate)
    dense.name = DENSE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "BSR support is in beta"
        bsrs = [pruned.weight.detach().to_sparse_bsr((4, 4)) for _ in range(min(dense.copies, 4))]
    b = pruned.bias.detach()
    bsr = Impl(
        "torch BSR 4x4",
        lambda x, i: torch.mm(bsrs[i % len(bsrs)], x.t()).t() + b,
        base.nbytes,
        len(bsrs),
        "baseline",
    )
    return [
        _module_impl(base, rotate, f"tersor block {tag}", vs=(DENSE, "torch BSR 4x4")),
        dense,
        bsr,
        _module_impl(
            base.quantized(tersor.W8A8Config()),
            rotate,
            f"tersor block+w8a8 {tag}",
            vs=(W8A8_DENSE, W8A8_VNNI),
            tol=INT8_TOL,
        ),
        *_dense_w8a8(pruned, rotate),
    ]
