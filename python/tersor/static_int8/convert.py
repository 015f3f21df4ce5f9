"""quantize_static: a CNN (or any FX-traceable model) rewritten to run int8 from end to end.

Why a graph rewrite (torch.fx) and not an int8 tensor subclass: every scale is fixed at
calibration, so which edges carry int8 and at what scale is known before the first call. The
rewrite decides it once, fuses what the kernels can fuse (conv + bias + ReLU / ReLU6 / clamp +
the residual add that follows, whatever module or ``forward`` line it comes from), and leaves a
graph of plain int8 tensors and custom ops: no per-call dispatch through ``__torch_function__``,
nothing for torch.compile to guess. An op the rewrite does not know runs as the model wrote it,
in fp32, on a dequantized input: correct, and listed in the report (``int8_exits``).

Steps: trace a copy (the user's model is never touched), fold each BatchNorm into its conv,
plan (groups of fused nodes, which edges are int8), calibrate (observers on every float value,
static_int8/observers.py), then emit the new graph.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import operator
import time
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.operator_schemas import normalize_function
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tersor.calibration.data import calls
from tersor.nn.qconv import MAX_GROUP_MERGE, QConv2d
from tersor.ops import int8_static as ops
from tersor.static_int8 import modules as M
from tersor.static_int8 import program
from tersor.static_int8.observers import Observer


@dataclass
class StaticReport:
    converted: list = field(default_factory=list)  # (name, what)
    kept_float: list = field(default_factory=list)  # (name, why)
    int8_entries: list = field(default_factory=list)  # where fp32 values are quantized
    int8_exits: list = field(default_factory=list)  # where codes are dequantized, and why
    observer: str = ""
    batches: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [
            f"tersor static int8: {len(self.converted)} layers converted, "
            f"{len(self.kept_float)} kept float; observer {self.observer}, {self.batches} "
            f"calibration batches, {self.seconds:.1f} s"
        ]
        lines += [f"  kept float  {n}: {why}" for n, why in self.kept_float]
        lines += [f"  enters int8 {w}" for w in self.int8_entries]
        lines += [f"  leaves int8 {w}" for w in self.int8_exits]
        return "\n".join(lines)


# -- what each node is ----------------------------------------------------------------------

_ADD = (operator.add, operator.iadd, torch.add)
_MOVE_FUNCS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, F.dropout)
_MOVE_METHODS = ("flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze")
_META_METHODS = ("size", "dim", "numel")


def _norm(n: fx.Node):
    try:
        pair = normalize_function(n.target, n.args, n.kwargs, normalize_to_only_use_kwargs=True)
    except Exception:  # noqa: BLE001 - a signature torch cannot normalize: not ours to run
        return None
    return None if pair is None else pair.kwargs


def _act(n: fx.Node, mods: dict):
    """(low, high) of a ReLU-like clamp (None: unbounded), or None."""
    if n.op == "call_module":
        m = mods[n.target]
        if type(m) is nn.ReLU:
            return (0.0, None)
        if isinstance(m, nn.Hardtanh):  # ReLU6 too
            return (float(m.min_val), float(m.max_val))
        return None
    if n.op == "call_method" and n.target in ("relu", "relu_"):
        return (0.0, None)
    if n.op == "call_function":
        if n.target in (F.relu, torch.relu, torch.relu_):
            return (0.0, None)
        if n.target in (F.relu6, F.hardtanh):
            kw = _norm(n) or {}
            lo = kw.get("min_val", 0.0 if n.target is F.relu6 else -1.0)
            hi = kw.get("max_val", 6.0 if n.target is F.relu6 else 1.0)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                return (float(lo), float(hi))
    return None


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pool(n: fx.Node, mods: dict):
    """(kind, params) of a pooling the int8 kernels run, or None."""
    if n.op == "call_module":
        m = mods[n.target]
        if isinstance(m, nn.MaxPool2d):
            kw = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                      dilation=m.dilation, ceil_mode=m.ceil_mode,
                      return_indices=m.return_indices)  # fmt: skip
            kind = ops.MAX
        elif isinstance(m, nn.AvgPool2d):
            kw = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                      ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                      divisor_override=m.divisor_override)  # fmt: skip
            kind = ops.AVG
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            kw, kind = dict(output_size=m.output_size), ops.ADAPTIVE_AVG
        else:
            return None
    elif n.op == "call_function" and n.target in (F.max_pool2d, F.avg_pool2d,
                                                  F.adaptive_avg_pool2d):  # fmt: skip
        kw = _norm(n)
        if kw is None:
            return None
        kind = {F.max_pool2d: ops.MAX, F.avg_pool2d: ops.AVG}.get(n.target, ops.ADAPTIVE_AVG)
    else:
        return None
    if kind == ops.ADAPTIVE_AVG:
        out = _pair(kw["output_size"])
        return (kind, out) if all(isinstance(v, int) for v in out) else None
    if kw.get("ceil_mode") or kw.get("return_indices") or kw.get("divisor_override"):
        return None
    if _pair(kw.get("dilation", 1)) != (1, 1):
        return None
    k = _pair(kw["kernel_size"])
    s = _pair(kw.get("stride") or k)
    p = _pair(kw.get("padding", 0))
    inc = int(kw.get("count_include_pad", True)) if kind == ops.AVG else 0
    return kind, (*k, *s, *p, inc)


def _conv_unsupported(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return ""
    if m.padding_mode != "zeros":
        return f"padding_mode='{m.padding_mode}': only zero padding is served"
    if isinstance(m.padding, str):
        return "padding given as a string: not served by the int8 pipeline yet"
    if m.groups not in (1, m.in_channels) and m.out_channels // QConv2d.kernel_groups(m) % 16:
        return (
            f"grouped convolution ({m.out_channels // m.groups} outputs per group): the grouped "
            f"kernel needs a multiple of 16 (or up to {MAX_GROUP_MERGE} groups merged into one)"
        )
    return ""


def _classify(n: fx.Node, mods: dict, keep: tuple, report: StaticReport):
    """(kind, info): conv / act / add / pool / move / meta / cat / other."""
    if n.op == "call_module":
        m = mods[n.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            why = _conv_unsupported(m)
            if not why and any(fnmatch.fnmatchcase(n.target, p) for p in keep):
                why = "keep_float"
            if why:
                report.kept_float.append((n.target, why))
                return "other", None
            return "conv", m
        stubs = (torch.ao.quantization.QuantStub, torch.ao.quantization.DeQuantStub)
        if isinstance(m, (nn.Flatten, nn.Identity, *stubs)) or isinstance(
            m, nn.modules.dropout._DropoutNd
        ):  # (float stubs are identities)
            return "move", None
    if _act(n, mods) is not None:
        return "act", _act(n, mods)
    pool = _pool(n, mods)
    if pool is not None:
        return "pool", pool
    if n.op == "call_function":
        if n.target in _ADD and len(n.args) == 2 and not n.kwargs:
            if all(isinstance(a, fx.Node) for a in n.args):
                return "add", None
        if n.target in _MOVE_FUNCS:
            return "move", None
        if n.target is torch.cat:
            kw = _norm(n) or {}
            seq = kw.get("tensors", ())
            if seq and all(isinstance(a, fx.Node) for a in seq):
                return "cat", kw.get("dim", 0)
        if n.target is getattr and n.args[1] in ("shape", "dtype", "device"):
            return "meta", None
    if n.op == "call_method":
        if n.target in _MOVE_METHODS:
            return "move", None
        if n.target in _META_METHODS:
            return "meta", None
        if n.target in ("add", "add_") and len(n.args) == 2 and not n.kwargs:
            if isinstance(n.args[1], fx.Node):
                return "add", None
    return "other", None


@dataclass
class _Group:
    conv: fx.Node
    add: fx.Node = None
    res: fx.Node = None
    act: tuple = None
    last: fx.Node = None


# -- the passes -----------------------------------------------------------------------------


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:
        raise TypeError(
            f"quantize_static: {type(model).__name__} could not be traced by torch.fx "
            f"({type(e).__name__}: {e}); the static int8 pipeline needs a traceable forward "
            f"(use quantize_(model, W8A8Config()) for per-layer dynamic int8 instead)"
        ) from e


def _fold_bn(gm: fx.GraphModule) -> None:
    mods = dict(gm.named_modules())
    uses = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            uses[n.target] = uses.get(n.target, 0) + 1
    for n in list(gm.graph.nodes):
        if n.op != "call_module" or not isinstance(mods[n.target], nn.BatchNorm2d):
            continue
        src = n.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        conv = mods[src.target]
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1 or uses[src.target] != 1:
            continue
        bn = mods[n.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        gm.get_submodule(src.target.rpartition(".")[0] or "").__setattr__(
            src.target.rpartition(".")[2], fuse_conv_bn_eval(conv, bn)
        )
        n.replace_all_uses_with(src)
        gm.graph.erase_node(n)
    gm.recompile()


def _plan(gm: fx.GraphModule, keep: tuple, report: StaticReport):
    mods = dict(gm.named_modules())
    kinds = {n: _classify(n, mods, keep, report) for n in gm.graph.nodes}
    member, groups = {}, {}
    for n in gm.graph.nodes:
        if kinds[n][0] != "conv":
            continue
        g, cur = _Group(conv=n), n
        users = list(cur.users)
        if len(users) == 1 and kinds[users[0]][0] == "add" and users[0] not in member:
            u = users[0]
            other = u.args[1] if u.args[0] is cur else u.args[0]
            if other is not cur and (u.args[0] is cur or u.args[1] is cur):
                g.add, g.res, cur = u, other, u
        users = list(cur.users)
        if len(users) == 1 and kinds[users[0]][0] == "act" and users[0] not in member:
            g.act, cur = kinds[users[0]][1], users[0]
        g.last = cur
        for m in (g.conv, g.add, cur):
            if m is not None:
                member[m] = g
        groups[cur] = g
    return kinds, member, groups


class _Recorder(fx.Interpreter):
    def __init__(self, gm, observers: dict, histogram: bool):
        super().__init__(gm)
        self.observers, self.histogram = observers, histogram

    def run_node(self, n):
        out = super().run_node(n)
        obs = self.observers.get(n)
        if obs is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            (obs.observe_histogram if self.histogram else obs.observe_range)(out)
        return out


def _calibrate(gm, config, calibration) -> tuple[dict, list]:
    fns, opaque = calls(calibration)
    if opaque:
        raise TypeError(
            "quantize_static: calibration must be batches of model inputs (a tensor, a list of "
            "them, a DataLoader), not a callable: the traced graph runs them"
        )
    obs = {n: Observer(config.observer, config.percentile) for n in gm.graph.nodes}
    passes = [False, True] if config.observer != "minmax" else [False]
    with torch.no_grad():
        for histogram in passes:
            rec = _Recorder(gm, obs, histogram)
            for fn in fns:
                fn(lambda *a, **k: rec.run(*a, **k))
    return obs, fns


_ACCEPTS_INT8 = ("conv", "add", "pool", "move", "cat", "act", "meta")


def _same_shapes(obs: dict, *nodes) -> bool:
    """Every node had one shape in calibration, the same for all (no broadcasting add)."""
    shapes = [obs[n].shapes for n in nodes]
    return all(len(s) == 1 for s in shapes) and all(s == shapes[0] for s in shapes)


def _unfuse_broadcast_adds(kinds, member, groups, obs) -> None:
    """A conv's add whose other operand is not of the conv's output shape (a bias-like
    tensor, a broadcast) is no residual: the group keeps the conv alone; the add (and the
    activation after it) run as ops of their own."""
    for last, g in list(groups.items()):
        if g.add is None or _same_shapes(obs, g.conv, g.res, g.add):
            continue
        del groups[last]
        for m in (g.add, last):
            member.pop(m, None)
        g.add = g.res = g.act = None
        g.last = g.conv
        groups[g.conv] = g


def _output_is_int8(n: fx.Node, kinds: dict) -> bool:
    return any(kinds[u][0] in _ACCEPTS_INT8 for u in n.users)


def _sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    err = (ref.double() - got.double()).pow(2).sum().item()
    sig = ref.double().pow(2).sum().item()
    return float("inf") if err == 0 else 10.0 * math.log10(max(sig, 1e-300) / err)


def _keep_sensitive(gm, kinds, member, groups, obs, config, first_call, report) -> None:
    """config.min_sqnr: each fused group run alone in int8 on the first calibration batch (its
    fp32 input quantized at the calibrated scale) against its fp32 output; a group below the
    bound stays fp32 (listed in the report with its SQNR)."""
    need = set()
    for last, g in groups.items():
        need |= {g.conv.args[0], last} | ({g.res} if g.res is not None else set())
    values = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in need:
                values[n] = out
            return out

    with torch.no_grad():
        first_call(lambda *a, **k: _Keep(gm).run(*a, **k))
    mods = dict(gm.named_modules())
    for last, g in list(groups.items()):
        x = g.conv.args[0]
        s_out = obs[last].scale() if _output_is_int8(last, kinds) else 0.0
        s_res = obs[g.res].scale() if g.res is not None else 0.0
        layer = M.StaticConv(mods[g.conv.target], g.conv.target, obs[x].scale(), s_out, g.act,
                             s_res, config.weight_bits)  # fmt: skip
        with torch.no_grad():
            res = M.Quantize(s_res)(values[g.res]) if g.res is not None else None
            y = layer(M.Quantize(obs[x].scale())(values[x]), res)
        db = _sqnr_db(values[last], y.float() * s_out if s_out else y)
        if db < config.min_sqnr:
            del groups[last]
            for m in (g.conv, g.add, last):
                member.pop(m, None)
            kinds[g.conv] = ("other", None)
            report.kept_float.append(
                (g.conv.target, f"SQNR {db:.1f} dB < min_sqnr {config.min_sqnr:g} dB (calibration)")
            )


def _emit(gm, kinds, member, groups, obs, report, config) -> fx.GraphModule:
    mods = dict(gm.named_modules())
    root = gm
    g2 = fx.Graph()
    env = {}  # old node -> (new node, scale of its codes, or None for a float / non-tensor)
    quantized, dequantized = {}, {}
    counter = [0]

    def add_module(prefix: str, m: nn.Module, layer: str = "") -> str:
        """A new submodule: a converted layer keeps its name ("layer1.0.conv2" ->
        "layer1_0_conv2": state_dict keys a reader can map back), the rest are numbered."""
        counter[0] += 1
        name = layer.replace(".", "_") if layer else f"_tersor_{prefix}_{counter[0]}"
        if hasattr(root, name):
            name = f"{name}_{counter[0]}"
        root.add_submodule(name, m)
        return name

    def scale_of(n) -> float:
        return obs[n].scale()

    def as_q(n: fx.Node) -> fx.Node:
        new, s = env[n]
        if s is not None:
            return new
        if n not in quantized:
            name = add_module("quantize", M.Quantize(scale_of(n), f"quantize {n.name}"))
            quantized[n] = g2.call_module(name, (new,))
            report.int8_entries.append(f"{n.name} (scale {scale_of(n):.4g})")
        return quantized[n]

    def q_scale(n: fx.Node) -> float:
        s = env[n][1]
        return s if s is not None else scale_of(n)

    def as_f(n, user: fx.Node):
        if not isinstance(n, fx.Node):
            return n
        new, s = env[n]
        if s is None:
            return new
        if n not in dequantized:
            name = add_module("dequantize", M.Dequantize(s, f"dequantize {n.name}"))
            dequantized[n] = g2.call_module(name, (new,))
            what = user.target
            if user.op != "call_module":
                what = getattr(what, "__name__", str(what))
            report.int8_exits.append(f"before {user.name} ({what})")
        return dequantized[n]

    def is_q(a) -> bool:
        return isinstance(a, fx.Node) and env[a][1] is not None

    for n in gm.graph.nodes:
        kind, info = kinds[n]
        if n in member and member[n].last is not n:
            continue  # emitted with its group
        if n in groups:
            g = groups[n]
            conv = mods[g.conv.target]
            x = g.conv.args[0]
            out_q = _output_is_int8(n, kinds)
            s_out = scale_of(n) if out_q else 0.0
            res = as_q(g.res) if g.res is not None else None
            s_res = q_scale(g.res) if g.res is not None else 0.0
            layer = M.StaticConv(
                conv, g.conv.target, q_scale(x), s_out, g.act, s_res, config.weight_bits
            )
            name = add_module("conv", layer, "int8_" + g.conv.target)
            args = (as_q(x),) if res is None else (as_q(x), res)
            env[n] = (g2.call_module(name, args), s_out if out_q else None)
            report.converted.append((g.conv.target, layer.extra_repr()))
            continue
        if n.op in ("placeholder", "get_attr"):
            env[n] = (g2.node_copy(n, lambda a: env[a][0]), None)
            continue
        if n.op == "output":
            g2.output(fx.node.map_arg(n.args[0], lambda a: as_f(a, n)))
            continue
        first = n.args[0] if n.args else None
        if kind == "pool" and is_q(first):
            name = add_module("pool", M.Pool(*info, label=n.name))
            env[n] = (g2.call_module(name, (env[first][0],)), env[first][1])
            continue
        if kind == "act" and is_q(first):
            s = env[first][1]
            name = add_module("clamp", M.Clamp(*M.code_bounds(s, info), label=n.name))
            env[n] = (g2.call_module(name, (env[first][0],)), s)
            continue
        if kind == "move" and is_q(first):
            target = "reshape" if n.op == "call_method" and n.target == "view" else n.target
            args = (env[first][0],) + tuple(fx.node.map_arg(n.args[1:], lambda a: as_f(a, n)))
            kw = fx.node.map_arg(n.kwargs, lambda a: as_f(a, n))
            new = g2.create_node(n.op, target, args, kw, n.name)
            env[n] = (new, env[first][1])
            continue
        if kind == "meta":
            new = g2.node_copy(n, lambda a: env[a][0])
            env[n] = (new, None)
            continue
        if kind == "add" and (is_q(n.args[0]) or is_q(n.args[1])) and _same_shapes(obs, *n.args):
            a, b = n.args
            s_out = scale_of(n)
            name = add_module("add", M.Add(q_scale(a), q_scale(b), s_out, label=n.name))
            env[n] = (g2.call_module(name, (as_q(a), as_q(b))), s_out)
            continue
        if kind == "cat" and all(is_q(a) for a in (_norm(n) or {}).get("tensors", ())):
            seq = _norm(n)["tensors"]
            s_out = scale_of(n)
            rescales = [
                None if env[a][1] == s_out else M.Add(env[a][1], 0.0, s_out, label=n.name)
                for a in seq
            ]
            name = add_module("cat", M.Cat(rescales, info, n.name))
            env[n] = (g2.call_module(name, tuple(env[a][0] for a in seq)), s_out)
            continue
        # anything else runs as written, in fp32
        env[n] = (g2.node_copy(n, lambda a: as_f(a, n)), None)
    g2.lint()
    out = fx.GraphModule(root, g2, class_name=type(gm).__name__ + "Int8")
    out.eval()
    return out


def quantize_static(model: nn.Module, config=None, calibration=None) -> fx.GraphModule:
    """``model`` (unchanged) rewritten to run int8 from end to end; returns the new module, its
    report in ``.tersor_report``. See tersor/static_int8/__init__.py."""
    from tersor.configs import W8A8StaticConfig

    config = W8A8StaticConfig() if config is None else config
    if not isinstance(config, W8A8StaticConfig):
        raise TypeError(f"quantize_static: config must be a W8A8StaticConfig, got "
                        f"{type(config).__name__}")  # fmt: skip
    if calibration is None:
        raise ValueError(
            "quantize_static: calibration= is required (a few batches of real inputs, disjoint "
            "from the data you evaluate on): the activation scales are fixed from them"
        )
    t0 = time.perf_counter()
    report = StaticReport(observer=config.observer)
    src = copy.deepcopy(model).eval()
    gm = _trace(src)
    _fold_bn(gm)
    kinds, member, groups = _plan(gm, tuple(config.keep_float), report)
    obs, fns = _calibrate(gm, config, calibration)
    report.batches = len(fns)
    _unfuse_broadcast_adds(kinds, member, groups, obs)
    if config.min_sqnr is not None:
        _keep_sensitive(gm, kinds, member, groups, obs, config, fns[0], report)
    out = _emit(gm, kinds, member, groups, obs, report, config)
    program.install(out)
    report.seconds = time.perf_counter() - t0
    out.tersor_report = report
    return out
