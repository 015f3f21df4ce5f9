"""Tensor parallelism for tersor layers, with torch.distributed as the engine (gloo on CPUs,
NCCL on GPUs): no communication code of our own.

    tersor.quantize_(model, tersor.W4A8Config())          # on every rank (or load a checkpoint)
    tersor.distributed.parallelize_(model, group, plan="auto")

or, without ever holding the whole model on a rank::

    model = ...                                           # built on the meta device
    tersor.distributed.load_pretrained(model, path, group, plan="auto")

The plan uses torch's vocabulary: a dict of module paths (fnmatch patterns, "*" included) to
styles: "colwise" (output features split, input replicated, output sharded), "rowwise" (input
features split, input sharded, output all-reduced), "colwise_gather" (output all-gathered),
"rowwise_replicate" (x whole: each rank takes its columns), ``Colwise(segments=...)`` for a
fused output cut per segment, or torch's own ``ColwiseParallel()`` / ``RowwiseParallel()``
objects (their input / output layouts are honored). plan="auto" is the Megatron split of a
Hugging Face decoder (Llama, Mistral, Qwen2 / 3, Phi-3): q/k/v and gate/up column-wise, o and
down row-wise, so one block all-reduces twice; lm_head column-wise with the logits gathered;
Phi-3's fused qkv_proj / gate_up_proj cut per part.

Every rank computes every shard's slice before changing anything (a cut that would split an
int4 group, a 2:4 group, a block or a head is refused with the layer's name on every rank, and
the model stays as it was), and the ranks check that they agree on the plan and the model
(one all_gather of a digest) so a mismatch fails everywhere instead of hanging a collective.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from tersor.distributed.layers import COMM, ColwiseLinear, RowwiseLinear
from tersor.distributed.slicing import COLWISE, ROWWISE, _rows, slice_canonical, slice_dense
from tersor.formats import SCHEMES
from tersor.nn.fused import fuse_projections
from tersor.nn.linear import PackedLinear
from tersor.nn.qconv import QConv2d

__all__ = [
    "COMM",
    "Colwise",
    "ColwiseLinear",
    "DataParallel",
    "Rowwise",
    "RowwiseLinear",
    "TPReport",
    "load_pretrained",
    "parallelize_",
]


@dataclass(frozen=True)
class Colwise:
    """Split the output features. gather: all_gather the output (else each rank keeps its
    N / world columns); segments: the sizes of a fused output's parts (q, k, v), each cut."""

    gather: bool = False
    segments: Optional[tuple] = None


@dataclass(frozen=True)
class Rowwise:
    """Split the input features; outputs are all-reduced. input: "shard" (x holds this rank's
    inputs) or "replicate" (x whole)."""

    input: str = "shard"


STYLES = {
    "colwise": Colwise(),
    "colwise_gather": Colwise(gather=True),
    "rowwise": Rowwise(),
    "rowwise_replicate": Rowwise(input="replicate"),
}

# plan="auto": Megatron's split of the common decoder layouts (Llama, Mistral, Qwen2 / 3, Gemma),
# and the vocabulary projection column-wise with its logits gathered (as torchtitan's plan): a
# rank reads half of the largest layer for one all_gather of the logits
AUTO_COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
AUTO_ROWWISE = ("o_proj", "down_proj")
AUTO_GATHERED = ("lm_head",)
AUTO_FUSED = ("qkv_proj", "gate_up_proj")  # Phi-3: [q | k | v] and [gate | up] in one output


def _fused_segments(model: nn.Module, leaf: str, fqn: str) -> tuple:
    """The parts of a fused projection's output, from the model's config."""
    cfg = getattr(model, "config", None)
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    inter = getattr(cfg, "intermediate_size", None)
    if leaf == "qkv_proj" and isinstance(heads, int):
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return (heads * d, (kv or heads) * d, (kv or heads) * d)
    if leaf == "gate_up_proj" and isinstance(inter, int):
        return (inter, inter)
    raise ValueError(f"plan='auto': the parts of '{fqn}' are not in the model's config")


# attention attributes that count heads: a rank's attention runs its own heads
HEAD_COUNTS = ("num_heads", "num_attention_heads", "num_key_value_heads")


def _localize_heads(model: nn.Module, resolved: dict, world: int) -> None:
    """Modules holding column-wise q / k / v projections count this rank's heads: their head
    attributes (and a private copy of their config's) are divided by the world size. Llama-
    style attention infers heads from the shapes (view(..., -1, head_dim)) and needs none of
    it; Phi-3's splits qkv_proj with config.num_attention_heads."""
    parents = {
        fqn.rpartition(".")[0]
        for fqn, style in resolved.items()
        if isinstance(style, Colwise) and fqn.rpartition(".")[2] in AUTO_COLWISE[:3] + ("qkv_proj",)
    }
    for name in parents:
        attn = model.get_submodule(name)
        for attr in HEAD_COUNTS:
            v = attn.__dict__.get(attr)
            if isinstance(v, int) and v % world == 0:
                setattr(attn, attr, v // world)
        cfg = attn.__dict__.get("config")
        if cfg is not None and cfg is getattr(model, "config", None):
            cfg = copy.copy(cfg)
            for attr in HEAD_COUNTS:
                v = getattr(cfg, attr, None)
                if isinstance(v, int) and v % world == 0:
                    setattr(cfg, attr, v // world)
            attn.config = cfg


def _style(value, key: str):
    """A plan value as Colwise / Rowwise (strings, ours, torch's ParallelStyle objects)."""
    if isinstance(value, (Colwise, Rowwise)):
        return value
    if isinstance(value, str) and value in STYLES:
        return STYLES[value]
    name = type(value).__name__
    if name in ("ColwiseParallel", "RowwiseParallel"):
        from torch.distributed.tensor import Replicate

        def one(layouts):
            return layouts[0] if isinstance(layouts, tuple) else layouts

        inp, out = one(value.input_layouts), one(value.output_layouts)
        if name == "ColwiseParallel":
            if not isinstance(inp, Replicate):
                raise ValueError(f"plan['{key}']: ColwiseParallel needs a replicated input")
            return Colwise(gather=isinstance(out, Replicate))
        if not isinstance(out, Replicate):
            raise ValueError(
                f"plan['{key}']: RowwiseParallel(output_layouts={out}) (reduce-scatter) is not "
                f"supported; tersor's row-wise layers all-reduce to a replicated output"
            )
        return Rowwise(input="replicate" if isinstance(inp, Replicate) else "shard")
    if isinstance(value, str) or name.endswith("Parallel"):
        raise ValueError(
            f"plan['{key}']: unknown style {value!r}; use one of {sorted(STYLES)}, Colwise(...), "
            f"Rowwise(...), ColwiseParallel() or RowwiseParallel()"
        )
    raise TypeError(f"plan['{key}']: expected a style, got {name}")


def _group_of(group):
    """(process group or None for the default one, rank, world size)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "tersor.distributed: torch.distributed is not initialized; call "
            "torch.distributed.init_process_group('gloo') (CPU) or ('nccl') first"
        )
    if hasattr(group, "get_group"):  # a 1-D DeviceMesh
        if getattr(group, "ndim", 1) != 1:
            raise ValueError("tersor.distributed: pass a 1-D DeviceMesh (the tensor-parallel dim)")
        group = group.get_group()
    return group, dist.get_rank(group), dist.get_world_size(group)


def _linear_like(m) -> bool:
    return isinstance(m, (PackedLinear, nn.Linear)) and not isinstance(m, QConv2d)


def auto_plan(model: nn.Module, world: int) -> dict:
    """Megatron's split of a Hugging Face decoder (see AUTO_COLWISE / AUTO_ROWWISE), after
    checking that the attention heads divide over the ranks."""
    plan = {}
    for fqn, m in model.named_modules():
        leaf = fqn.rpartition(".")[2]
        if _linear_like(m) and leaf in AUTO_COLWISE:
            plan[fqn] = Colwise()
        elif _linear_like(m) and leaf in AUTO_ROWWISE:
            plan[fqn] = Rowwise()
        elif _linear_like(m) and fqn in AUTO_GATHERED and m.out_features % world == 0:
            plan[fqn] = Colwise(gather=True)
        elif _linear_like(m) and leaf in AUTO_FUSED:
            plan[fqn] = Colwise(segments=_fused_segments(model, leaf, fqn))
    if not plan:
        raise ValueError(
            f"plan='auto' found no q/k/v/o or gate/up/down projections in "
            f"{type(model).__name__}; pass plan={{'module.path': 'colwise' | 'rowwise', ...}}"
        )
    cfg = getattr(model, "config", None)
    for attr in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(cfg, attr, None)
        if isinstance(heads, int) and heads % world:
            raise ValueError(
                f"plan='auto': config.{attr}={heads} does not split over {world} ranks; a "
                f"rank must hold whole attention heads"
            )
    return plan


def _resolve(model: nn.Module, plan, world: int) -> dict:
    """fqn -> Colwise / Rowwise for every planned layer (patterns expanded)."""
    if plan == "auto" or plan is None:
        return auto_plan(model, world)
    if not isinstance(plan, dict):
        raise TypeError(f"plan must be 'auto' or a dict, got {type(plan).__name__}")
    modules = dict(model.named_modules())
    out = {}
    for key, value in plan.items():
        style = _style(value, key)
        hits = [f for f in modules if f == key or fnmatch.fnmatchcase(f, key)]
        if not hits:
            raise ValueError(f"plan['{key}']: no module of the model matches")
        for fqn in hits:
            if not _linear_like(modules[fqn]):
                raise ValueError(
                    f"plan['{key}']: '{fqn}' is a {type(modules[fqn]).__name__}; only Linear "
                    f"layers (tersor's or torch's) are sharded"
                )
            out[fqn] = style
    return out


def _ranges(size: int, world: int, rank: int, style, what: str) -> list:
    """The rank's ranges along the cut dimension."""
    segments = getattr(style, "segments", None) or (size,)
    if sum(segments) != size:
        raise ValueError(f"{what}: segments {tuple(segments)} do not add up to {size}")
    out, start = [], 0
    for seg in segments:
        if seg % world:
            dim = "out_features" if isinstance(style, Colwise) else "in_features"
            part = "" if len(segments) == 1 else f" (segment of {seg})"
            raise ValueError(f"{what}: {dim}={size}{part} does not split evenly over {world} ranks")
        step = seg // world
        out.append((start + rank * step, start + (rank + 1) * step))
        start += seg
    return out


class DataParallel:
    """This rank's calibration batches, for calibration spread over ranks:
    ``tersor.quantize_(model, W4A8Config(method="gptq"), calibration=DataParallel(batches,
    group))`` runs each rank's batches through its copy of the model block by block and sums
    every layer's Hessian (and SmoothQuant's max |x|: the max) over the ranks before solving,
    so every rank solves the same weights from all ranks' data (bit-identical when the ranks
    run the same thread count). sparsify_(prune="sparsegpt") too. AWQ's scale search and
    Wanda's scores read the data itself, not its sums: refused."""

    def __init__(self, batches, group=None):
        self.batches, self.group = batches, group

    def reduce_hessians(self, hs, layers: list) -> None:
        group, _, _ = _group_of(self.group)
        seen = torch.tensor([int(id(m) in hs.h) for m in layers], dtype=torch.int32)
        dist.all_reduce(seen, op=dist.ReduceOp.MIN, group=group)
        if not bool(seen.all()):
            raise ValueError(
                "DataParallel calibration: the batches of some rank never reached "
                f"{int((seen == 0).sum())} of the layers; every rank must run every layer"
            )
        rows = torch.tensor([hs.rows[id(m)] for m in layers], dtype=torch.int64)
        dist.all_reduce(rows, group=group)
        for m, r in zip(layers, rows.tolist()):
            k = id(m)
            dist.all_reduce(hs.h[k], group=group)
            hs.rows[k] = r
            if hs.stats:
                dist.all_reduce(hs.abs_sum[k], group=group)
                dist.all_reduce(hs.abs_max[k], op=dist.ReduceOp.MAX, group=group)


# ---- building the shards ----------------------------------------------------------------------


@dataclass
class _Built:
    module: nn.Module
    full_bytes: int  # the layer's canonical tensors, whole
    shard_bytes: int  # this rank's slices of them (what it read)
    style: str


def _describe(style) -> str:
    if isinstance(style, Colwise):
        return "colwise" + (" gathered" if style.gather else "")
    return "rowwise" + ("" if style.input == "shard" else " (x replicated)")


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _shard_layer(fqn, style, info, get, group, world, rank, act_scale) -> _Built:
    """One rank's module for a planned layer. info: (scheme, or None for a dense Linear;
    format options; n; k; has bias; kernel); get(name): the layer's canonical tensors (a dense
    one's "weight"), or lazy slices of them."""
    scheme, options, n, k, has_bias, kernel = info
    what = f"layer '{fqn}'"
    dim = COLWISE if isinstance(style, Colwise) else ROWWISE
    if isinstance(style, Colwise) and style.gather and style.segments:
        raise ValueError(f"{what}: a gathered column-wise layer cannot have segments")
    ranges = _ranges((n, k)[dim], world, rank, style, what)
    index = None
    col_bias = None if not has_bias or dim == ROWWISE else _rows(get("bias"), ranges)
    if scheme is None:  # a dense nn.Linear
        w = slice_dense(get("weight"), dim, ranges)
        shard = nn.Linear(w.shape[1], w.shape[0], bias=col_bias is not None, device="meta")
        shard.weight = nn.Parameter(w, requires_grad=False)
        if col_bias is not None:
            shard.bias = nn.Parameter(col_bias.clone(), requires_grad=False)
        read = [w, col_bias]
    else:
        fmt_cls, fixed = SCHEMES[scheme]
        sl = slice_canonical(fmt_cls, options, get, n, k, dim, ranges, what)
        opts = {key: v for key, v in sl.options.items() if key not in fixed}
        fmt = fmt_cls.from_state(
            sl.state.get, f"{fqn}.", sl.out_features, sl.in_features, **fixed, **opts
        )
        if isinstance(fmt, str):
            raise ValueError(f"{what}: the shard does not load ({fmt})")
        shard = PackedLinear.wrap(fmt, col_bias, kernel=kernel, name=fqn)
        index = sl.input_index
        read = [*sl.state.values(), col_bias]
    if dim == ROWWISE:
        bias = get("bias") if has_bias else None
        bias = bias if bias is None or isinstance(bias, torch.Tensor) else bias[:]
        read.append(bias)
        module = RowwiseLinear(
            shard,
            bias,
            group,
            ranges[0],
            k,
            input=style.input,
            input_index=index,
            act_scale=act_scale,
            name=fqn,
        )
    elif style.gather:
        module = ColwiseLinear(shard, group, n, name=fqn)
    else:
        module = shard
    return _Built(module, 0, _nbytes(read), _describe(style))


def _info(m: nn.Module) -> tuple:
    if isinstance(m, PackedLinear):
        return (
            m.scheme,
            m.fmt.options(),
            m.out_features,
            m.in_features,
            m.bias is not None,
            m.kernel,
        )
    n, k = m.weight.shape
    return (None, {}, n, k, m.bias is not None, "auto")


def _canonical(m: nn.Module) -> dict:
    """A live layer's canonical tensors (a dense one's weight), and its bias."""
    state = m.fmt.state_dict() if isinstance(m, PackedLinear) else {"weight": m.weight.detach()}
    if m.bias is not None:
        state["bias"] = m.bias.detach()
    return state


def _agreed(group, rank: int, world: int, plan_of) -> tuple:
    """plan_of() -> (resolved plan, layer infos) on every rank, or the error of a rank whose
    plan does not resolve; every rank takes part in one all_gather of a digest first, so a rank
    failing alone, or ranks with another plan or model, raise on every rank instead of leaving
    the others waiting in a collective."""
    try:
        resolved, infos = plan_of()
        digest, error = _digest(resolved, infos, world), None
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        digest, error = f"error: {type(e).__name__}: {e}", e
    got = [None] * world
    dist.all_gather_object(got, digest, group=group)
    if error is not None:
        raise error
    odd = [r for r, d in enumerate(got) if d != got[0]]
    if odd:
        raise RuntimeError(
            f"tersor.distributed (rank {rank}): ranks {odd} disagree with rank 0 on the plan or "
            f"the model's layers (or failed to resolve it); every rank must call with the same "
            f"model and plan"
        )
    return resolved, infos


def _digest(resolved, infos: dict, world: int) -> str:
    if isinstance(resolved, tuple):  # (plan, manifest) of load_pretrained
        resolved = resolved[0]
    rows = [
        (f, _describe(s), getattr(s, "segments", None), infos[f][:6]) for f, s in resolved.items()
    ]
    return hashlib.sha256(json.dumps([world, rows], default=str).encode()).hexdigest()


def _all_ok(group, error: Optional[BaseException]) -> None:
    """Raise on every rank when any rank failed (so none waits in a later collective)."""
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
    dist.all_reduce(flag, group=group)
    if error is not None:
        raise error
    if int(flag):
        raise RuntimeError(
            "tersor.distributed: another rank failed to build its shards (see its error); "
            "the model is unchanged"
        )


def _install(model: nn.Module, built: dict) -> None:
    for fqn, b in built.items():
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, b.module)


@dataclass
class TPReport:
    """What parallelize_ / load_pretrained did on this rank."""

    rank: int
    world: int
    rows: list = field(default_factory=list)  # (fqn, style, full bytes, shard bytes)
    seconds: float = 0.0

    @property
    def full_bytes(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def shard_bytes(self) -> int:
        return sum(r[3] for r in self.rows)

    def __str__(self) -> str:
        lines = [f"tensor parallel: rank {self.rank} of {self.world}, {len(self.rows)} layers"]
        for fqn, style, full, shard in self.rows:
            lines.append(
                f"  {fqn:<48} {style:<22} {full / 2**20:9.2f} MiB -> {shard / 2**20:8.2f} MiB"
            )
        ratio = self.shard_bytes / max(1, self.full_bytes)
        lines.append(
            f"sharded layers: {self.full_bytes / 2**20:.1f} MiB -> {self.shard_bytes / 2**20:.1f} "
            f"MiB on this rank ({ratio:.3f} of the whole; 1/{self.world} = {1 / self.world:.3f}); "
            f"{self.seconds:.2f} s"
        )
        return "\n".join(lines)


def parallelize_(
    model: nn.Module,
    group=None,
    plan="auto",
    *,
    act_scale: str = "global",
    fuse: str = "auto",
    report: bool = False,
):
    """Shard `model`'s planned Linear layers (tersor's, or dense ones) over `group` (a process
    group, a 1-D DeviceMesh, or None: the default group). Every rank calls it with the same
    model and plan. act_scale: how row-wise layers with int8 activations pick the rows' scale
    ("global": the whole row's, the unsharded numbers; "local": each rank's slice). fuse: as
    ``quantize_``'s fuse_projections, re-applied to the shards. Returns the model, or
    (model, TPReport) with report=True."""
    t0 = time.perf_counter()
    group, rank, world = _group_of(group)
    modules = dict(model.named_modules())

    def plan_of():
        resolved = _resolve(model, plan, world)
        return resolved, {fqn: _info(modules[fqn]) for fqn in resolved}

    resolved, infos = _agreed(group, rank, world, plan_of)
    built, error = {}, None
    try:
        for fqn, style in resolved.items():
            state = _canonical(modules[fqn])
            b = _shard_layer(fqn, style, infos[fqn], state.get, group, world, rank, act_scale)
            b.full_bytes = _nbytes(state.values())
            built[fqn] = b
    except (ValueError, TypeError, RuntimeError) as e:
        error = e
    _all_ok(group, error)
    fuse_projections(model, False)
    _install(model, built)
    return _finish(model, resolved, built, rank, world, fuse, t0, report)


def _finish(model, resolved, built, rank, world, fuse, t0, report):
    """The installed shards' head counts and fusion; the model, or (model, TPReport)."""
    _localize_heads(model, resolved, world)
    fuse_projections(model, fuse)
    rows = [(f, b.style, b.full_bytes, b.shard_bytes) for f, b in built.items()]
    rep = TPReport(rank, world, rows, time.perf_counter() - t0)
    return (model, rep) if report else model


def load_pretrained(
    model: nn.Module,
    path: str,
    group=None,
    plan="auto",
    *,
    act_scale: str = "global",
    fuse: str = "auto",
    report: bool = False,
):
    """Load a tersor checkpoint (``tersor.save_pretrained``) into `model` (built on the meta
    device, or with empty weights) with the planned layers sharded: each rank reads only its
    slice of a compressed layer's tensors from the safetensors files; the other layers whole.
    A planned layer the checkpoint keeps dense is read whole, then cut. Returns the model, or
    (model, TPReport) with report=True."""
    from tersor import checkpoint

    t0 = time.perf_counter()
    group, rank, world = _group_of(group)
    modules = dict(model.named_modules())

    def plan_of():
        manifest = checkpoint.read_manifest(path)
        resolved = _resolve(model, plan, world)
        layers = manifest["layers"]
        for fqn in resolved:
            if "conv" in layers.get(fqn, {}):
                raise ValueError(f"{path}: plan names '{fqn}', a convolution in the checkpoint")
        infos = {
            fqn: (
                e["scheme"],
                e.get("options", {}),
                e["out_features"],
                e["in_features"],
                e["bias"],
                e.get("kernel", "auto"),
            )
            if fqn in layers
            else _info(modules[fqn])
            for fqn, e in ((f, layers.get(f, {})) for f in resolved)
        }
        return (resolved, manifest), infos

    (resolved, manifest), infos = _agreed(group, rank, world, plan_of)
    packed = {f: s for f, s in resolved.items() if f in manifest["layers"]}
    built, error = {}, None

    def build(fqn, entry, get, slice_of):
        if fqn not in packed:
            return None
        optional = set(getattr(SCHEMES[entry["scheme"]][0], "optional_state_names", ()))
        read = {}

        def sliced(name):
            key = f"{fqn}.{name}"
            read[name] = slice_of(key, name in optional or name == "input_scale")
            return read[name]

        b = _shard_layer(fqn, packed[fqn], infos[fqn], sliced, group, world, rank, act_scale)
        b.full_bytes = _header_bytes(read.values())
        built[fqn] = b
        return b.module

    dense = {}
    try:
        checkpoint.load_into(model, path, manifest, build=build)
        for fqn, style in resolved.items():  # planned layers the checkpoint keeps dense
            if fqn not in packed:
                state = _canonical(model.get_submodule(fqn))
                b = _shard_layer(fqn, style, infos[fqn], state.get, group, world, rank, act_scale)
                b.full_bytes = _nbytes(state.values())
                dense[fqn] = built[fqn] = b
    except (ValueError, TypeError, RuntimeError, KeyError, FileNotFoundError) as e:
        error = e
    _all_ok(group, error)
    _install(model, dense)  # once every one is built
    return _finish(model, resolved, built, rank, world, fuse, t0, report)


_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


def _header_bytes(items) -> int:
    """Bytes of whole tensors, from safetensors slices' headers (nothing read)."""
    total = 0
    for t in items:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif hasattr(t, "get_shape"):
            total += _DTYPE_BYTES.get(t.get_dtype(), 4) * int(torch.tensor(t.get_shape()).prod())
    return total


def _exit_spawned_rank(rank: int, world: int, folder: str, poll_s: float = 0.05) -> None:
    """End a spawned gloo rank whose results are saved: wait until every rank has reached
    this point (a marker file each in `folder`), then os._exit(0) without tearing gloo down.

    Why: destroy_process_group() (or the interpreter's exit) on one rank while its peer still
    closes the connection aborted the peer ("terminate called without an active exception")
    in CI under load, even after a barrier. Past the markers no rank has gloo traffic left,
    and os._exit runs no gloo destructor. Used by the test workers and `bench tp`."""
    import os

    open(os.path.join(folder, f"left{rank}"), "w").close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(folder, f"left{r}")) for r in range(world)):
            break
        time.sleep(poll_s)
    os._exit(0)
