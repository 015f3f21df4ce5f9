"""The converted network as one native call (csrc/static_program/program.h).

Each module of the converted graph calls one kernel; from Python a call costs 4-5 us besides
the kernel (the module call, its checks, the output tensor), which is 15% of a MobileNetV2 at
batch 1. The first call with an input shape records the graph (an ``fx.Interpreter`` run, whose
output it returns) and lays out a program of the same kernel calls over one arena; later calls
with that shape run the program. A graph with anything the program does not hold (an fp32 op,
a Cat, a view that moves bytes, more than one input or output) keeps the graph's own forward,
as does torch.compile / export, autograd, and a non-CPU or non-fp32 input.

The program is checked against the graph's own output once, bit for bit, when it is built; a
module whose scales or packed weights change afterwards (a state_dict load, ``.to()``) bumps
``modules.GENERATION`` and the program is rebuilt at the next call (so is every other model's:
one recorded run each). Pool windows are read at build time. A deep copy builds a program of
its own.
"""

from __future__ import annotations

import weakref

import torch
import torch.fx as fx

from tersor import _C
from tersor.ops._common import QMAX, _is_compiling
from tersor.ops.int8_static import MAX, pool_windows
from tersor.static_int8 import modules as M

_INPUT, _OUTPUT, _NONE = -1, -2, -3
_ALIGN = 64
# model -> {input shape: (GENERATION when built, program or None, output shape or the reason)};
# outside the model's __dict__, which copies and pickles carry (a program does neither)
_PROGRAMS = weakref.WeakKeyDictionary()


class _Unsupported(Exception):
    pass


class _Buf:
    """An int8 value of the graph in the arena: logical shape (NCHW for 4-D), NHWC bytes."""

    def __init__(self, nbytes: int, start: int):
        self.nbytes, self.start, self.end, self.offset = nbytes, start, start, None


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping every node's value."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        v = super().run_node(n)
        self.values[n] = v
        return v


def _record(gm: fx.GraphModule, x: torch.Tensor):
    rec = _Recorder(gm)
    out = rec.run(x)
    return out, rec.values


def _alias_ok(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """A view that keeps the program's bytes: NHWC [B, C, 1, 1] -> [B, C], or the same shape."""
    if not isinstance(dst, torch.Tensor) or dst.dtype != torch.int8:
        return False
    if dst.data_ptr() != src.data_ptr() or dst.numel() != src.numel():
        return False
    if src.dim() == 4:
        return src.shape[2] == src.shape[3] == 1 and dst.dim() == 2 and dst.is_contiguous()
    return dst.shape == src.shape and dst.is_contiguous()


def _layout(gm: fx.GraphModule, values: dict):
    """The steps (as tuples naming buffers) and the buffers, from the values of one recorded
    run; raises _Unsupported."""
    where = {}  # node -> _INPUT, _OUTPUT or a _Buf
    bufs, steps = [], []
    output_node = None

    def codes_of(arg, step):
        if not isinstance(arg, fx.Node) or not isinstance(where.get(arg), _Buf):
            raise _Unsupported(f"{arg} is not int8 codes the program holds")
        b = where[arg]
        b.end = max(b.end, step)
        return b

    def alias(n, v, step):  # a view of its first argument's codes, or unsupported
        src = n.args[0] if n.args else None
        if not (isinstance(src, fx.Node) and isinstance(where.get(src), _Buf)
                and _alias_ok(values[src], v)):  # fmt: skip
            raise _Unsupported(f"{n.op} {n.target} moves bytes or reads no codes")
        where[n] = codes_of(src, step)

    def new_buf(v, step):
        if not isinstance(v, torch.Tensor) or v.dtype != torch.int8:
            raise _Unsupported("an int8 step without int8 codes out")
        b = _Buf(-(-v.numel() // _ALIGN) * _ALIGN, step)
        bufs.append(b)
        return b

    for n in gm.graph.nodes:
        v = values.get(n)
        i = len(steps)
        if n.op == "placeholder":
            if where or not isinstance(v, torch.Tensor) or v.dim() != 4:
                raise _Unsupported("one 4-D input")
            where[n] = _INPUT
        elif n.op == "output":
            (res,) = n.args if len(n.args) == 1 else (None,)
            if not isinstance(res, fx.Node) or where.get(res) is not _OUTPUT:
                raise _Unsupported("the output is not one fp32 tensor the program writes")
            output_node = res
        elif n.op == "call_module":
            mod = gm.get_submodule(n.target)
            args = list(n.args) + list(n.kwargs.values())
            if isinstance(mod, M.Quantize):
                if where.get(args[0]) is not _INPUT or values[args[0]].dim() != 4:
                    raise _Unsupported("Quantize of something other than the image")
                where[n] = b = new_buf(v, i)
                steps.append(("quantize", b, v.numel(), 1.0 / mod._scale))
            elif isinstance(mod, M.StaticConv):
                xb = codes_of(args[0], i)
                res = args[1] if len(args) > 1 else None
                rb = codes_of(res, i) if res is not None else None
                xv = values[args[0]]
                if mod.linear:
                    if xv.dim() != 2:
                        raise _Unsupported("a linear layer over more than 2 dims")
                    geo = (xv.shape[0], 1, 1, 1, 1)
                else:
                    geo = (xv.shape[0], xv.shape[2], xv.shape[3], v.shape[2], v.shape[3])
                if mod._output_scale > 0:
                    where[n] = ob = new_buf(v, i)
                else:  # fp32 out: the program's output
                    if not (v.dtype == torch.float32 and v.is_contiguous()):
                        raise _Unsupported("an fp32 output that is not contiguous")
                    where[n] = ob = _OUTPUT
                plan = mod._plan if mod._plan is not None else mod._eager_plan()
                steps.append(("conv", plan, xb, rb, ob, geo, mod))
            elif isinstance(mod, M.Pool):
                xb = codes_of(args[0], i)
                xv = values[args[0]]
                b_, c, h, w = xv.shape
                ho, wo, *win = pool_windows(mod.kind, h, w, tuple(mod.params))
                where[n] = ob = new_buf(v, i)
                steps.append(("pool", mod.kind == MAX, xb, ob, (b_, h, w, c), win))
            elif isinstance(mod, M.Add):
                ab = codes_of(args[0], i)
                bb = codes_of(args[1], i) if len(args) > 1 and args[1] is not None else None
                if bb is not None and values[args[0]].shape != values[args[1]].shape:
                    raise _Unsupported("an add of two shapes")
                lo, hi = M.code_bounds(mod._output_scale, mod.act)
                scales = (mod._a_scale, mod._b_scale if bb is not None else 0.0)
                where[n] = ob = new_buf(v, i)
                steps.append(
                    ("add", ab, bb, ob, v.numel(), scales, 1.0 / mod._output_scale, lo, hi)
                )
            elif isinstance(mod, M.Dequantize):
                xb = codes_of(args[0], i)
                xv = values[args[0]]
                if xv.dim() not in (2, 4) or xv.dim() == 4 and xv.shape[2:] != (1, 1):
                    raise _Unsupported("a Dequantize of a 4-D tensor wider than 1x1")
                where[n] = _OUTPUT
                steps.append(("dequantize", xb, v.numel(), mod._scale))
            elif isinstance(mod, (torch.nn.Flatten, torch.nn.Dropout, torch.nn.Identity)):
                alias(n, v, i)
            else:
                raise _Unsupported(f"{n.target} ({type(mod).__name__})")
        elif n.op in ("call_function", "call_method"):
            alias(n, v, i)
        else:
            raise _Unsupported(f"{n.op} {n.target}")
    if output_node is None:
        raise _Unsupported("no output")
    if [n for n, w in where.items() if w is _OUTPUT] != [output_node]:
        raise _Unsupported("more than one fp32 value leaves the codes")
    return steps, bufs


# expand_dw's band: the expanded rows of one band (kept in L2 by the thread that runs it)
BAND_BYTES = 512 << 10
# Only expansions whose codes would pass the L2s: below, each band's two kernel calls (a few
# us of set-up each) and the rows recomputed at band edges cost more than the trip through
# memory saves (MobileNetV2 at batch 1 ran 1.6x slower with every block fused, Zen 5).
FUSE_MIN_BYTES = 1 << 20
FUSE_EXPAND_DW = True  # (off: each layer a step of its own; for measurements)


def _fuse_expand_dw(steps: list, bufs: list) -> int:
    """Each 1x1 expansion (stride 1, no padding, codes out, no residual) whose codes only the
    depthwise convolution after it reads becomes one expand_dw step with it (program.h), its
    buffer gone; returns how many."""
    fused = 0
    for i, e in enumerate(steps):
        if e is None or e[0] != "conv" or i + 1 >= len(steps):
            continue
        d = steps[i + 1]
        if d is None or d[0] != "conv":
            continue
        _, pe, xe, re, oe, (b_, h, w, _, _), me = e
        _, pd, xd, rd, od, (_, _, _, ho, wo), md = d
        kh, kw, sh, sw, ph, pw, dh, dw = md.geometry
        if not (me.geometry == [1, 1, 1, 1, 0, 0, 1, 1] and me.groups == 1 and not me.linear
                and re is None and isinstance(oe, _Buf) and xd is oe and oe.end == i + 1
                and md.depthwise and rd is None and isinstance(od, _Buf) and dh == dw == 1
                and ph == pw):  # fmt: skip
            continue
        row_bytes = w * me.out_channels
        if b_ * h * row_bytes < FUSE_MIN_BYTES:
            continue
        band = max(1, (max(kh, BAND_BYTES // row_bytes) - kh) // sh + 1)
        while band > 1 and b_ * -(-ho // band) < 4 * torch.get_num_threads():
            band = -(-band // 2)  # enough bands for every thread to take a few
        xe.end = max(xe.end, i + 1)
        bufs.remove(oe)
        steps[i], steps[i + 1] = None, ("expand_dw", pe, pd, xe, od, (b_, h, w, ho, wo), band)
        fused += 1
    return fused


def _place(bufs: list) -> int:
    """Arena offsets: a buffer takes the smallest free block that fits once every buffer read
    last before its producing step is free (a step never writes over what it reads)."""
    free, live, top = [], [], 0
    for b in sorted(bufs, key=lambda b: b.start):
        for d in [d for d in live if d.end < b.start]:
            live.remove(d)
            free.append((d.offset, d.nbytes))
        fits = [f for f in free if f[1] >= b.nbytes]
        if fits:
            f = min(fits, key=lambda f: f[1])
            free.remove(f)
            b.offset = f[0]
            if f[1] > b.nbytes:
                free.append((f[0] + b.nbytes, f[1] - b.nbytes))
        else:
            b.offset, top = top, top + b.nbytes
        live.append(b)
    return top


def build(gm: fx.GraphModule, x: torch.Tensor):
    """(program, output shape, the graph's output for x), or (None, the reason, that output)."""
    out, values = _record(gm, x)
    try:
        steps, bufs = _layout(gm, values)
    except _Unsupported as e:
        return None, str(e), out
    finally:
        values.clear()
    if FUSE_EXPAND_DW:
        _fuse_expand_dw(steps, bufs)
    p = _C.StaticProgram()
    p.set_arena_bytes(_place(bufs))

    def off(b):
        return _NONE if b is None else b if isinstance(b, int) else b.offset

    for s in steps:
        kind = s[0] if s is not None else None
        if kind is None:  # (fused into the next step)
            continue
        if kind == "quantize":
            _, ob, n, inv = s
            p.add_quantize(_INPUT, off(ob), n, inv, -QMAX, QMAX)
        elif kind == "conv":
            _, plan, xb, rb, ob, (b_, h, w, ho, wo), _ = s
            p.add_conv(plan, off(xb), off(rb), off(ob), b_, h, w, ho, wo)
        elif kind == "expand_dw":
            _, pe, pd, xb, ob, (b_, h, w, ho, wo), band = s
            p.add_expand_dw(pe, pd, off(xb), off(ob), b_, h, w, ho, wo, band)
        elif kind == "pool":
            _, is_max, xb, ob, (b_, h, w, c), win = s
            p.add_pool(is_max, off(xb), off(ob), b_, h, w, c, *(t.tolist() for t in win))
        elif kind == "add":
            _, ab, bb, ob, n, (sa, sb), inv, lo, hi = s
            p.add_add(off(ab), sa, off(bb), sb, off(ob), n, inv, lo, hi)
        else:
            _, xb, n, scale = s
            p.add_dequantize(off(xb), _OUTPUT, n, scale)
    y = torch.empty(out.shape, dtype=torch.float32)
    xi = _image(x)  # held: a temporary's data_ptr() would outlive its memory
    p.run(xi.data_ptr(), y.data_ptr(), torch.get_num_threads())
    if not torch.equal(y, out):  # never seen; the graph's forward stays the path if it were
        return None, "the program's output differs from the graph's", out
    return p, tuple(out.shape), out


def _image(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def run(gm: fx.GraphModule, args: tuple, kwargs: dict):
    """The output of gm(*args, **kwargs) from its native program, or None: the graph's own
    forward runs instead (the module docstring says when)."""
    if kwargs or len(args) != 1:
        return None
    x = args[0]
    if (type(x) is not torch.Tensor or x.dtype != torch.float32 or x.dim() != 4 or not x.is_cpu
            or (x.requires_grad and torch.is_grad_enabled()) or _is_compiling()):  # fmt: skip
        return None
    programs = _PROGRAMS.setdefault(gm, {})
    key = tuple(x.shape)
    entry = programs.get(key)
    if entry is None or entry[0] != M.GENERATION[0]:
        program, shape, out = build(gm, x)
        programs[key] = (M.GENERATION[0], program, shape)
        return out  # the recorded run's output
    _, program, shape = entry
    if program is None:
        return None
    y = torch.empty(shape, dtype=torch.float32)
    xi = _image(x)
    program.run(xi.data_ptr(), y.data_ptr(), torch.get_num_threads())
    return y


def install(gm: fx.GraphModule) -> None:
    """gm's forward tries its native program first (gm's class is its own: torch.fx makes one
    per GraphModule), and so do its deep copies (torch.fx gives them classes of their own). A
    recompile() gives gm the graph's forward again."""
    cls = type(gm)
    graph_forward = cls.forward

    def forward(self, *args, **kwargs):
        y = run(self, args, kwargs)
        return graph_forward(self, *args, **kwargs) if y is None else y

    def __deepcopy__(self, memo):
        copied = fx.GraphModule.__deepcopy__(self, memo)
        install(copied)
        return copied

    forward.__doc__ = graph_forward.__doc__
    cls.forward, cls.__deepcopy__ = forward, __deepcopy__


def profile(gm: fx.GraphModule, x: torch.Tensor, rounds: int = 5) -> list:
    """[(step, seconds)]: each step of gm's native program for x's shape, the fastest of
    `rounds` runs (the program is built first if it was not). Raises ValueError when x's shape
    has no program (the report of ``quantize_static`` says why)."""
    if not isinstance(gm, fx.GraphModule) or not hasattr(gm, "tersor_report"):
        raise TypeError(f"profile_static: expected the model quantize_static returned, got "
                        f"{type(gm).__name__}")  # fmt: skip
    run(gm, (x,), {})  # builds the program for x's shape
    _, program, shape = _PROGRAMS.get(gm, {}).get(tuple(x.shape), (None, None, None))
    if program is None:
        why = shape or "a 4-d float32 CPU tensor, without grad, expected"
        raise ValueError(f"profile_static: no native program for an input of shape "
                         f"{tuple(x.shape)}: {why}")  # fmt: skip
    y = torch.empty(shape, dtype=torch.float32)
    xi = _image(x)
    best = None
    for _ in range(rounds):
        t = program.run_timed(xi.data_ptr(), y.data_ptr(), torch.get_num_threads())
        best = t if best is None else [min(a, b) for a, b in zip(best, t)]
    return list(zip(program.describe(), best))
