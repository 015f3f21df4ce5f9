"""The format object: one packed weight [out_features, in_features] in one scheme.

A format owns everything that depends on the scheme, so the layers (nn/) never branch on it:

    from_float(weight, config)   pack a float weight (quantize / prune-compress, then pack)
    empty(n, k, **options)       a placeholder of the right shape, to load a state_dict into
    state_dict() / load_state()  the canonical, hardware-neutral tensors (see each module)
    dequantize()                 float32 [N, K] in the original input order
    linear(x, bias, kernel)      y = x W^T + b through the family's op (ops/)
    nbytes, describe(), options()

Formats hold their tensors as plain attributes (not module buffers): reading them costs a dict
lookup instead of nn.Module.__getattr__ (~1 us each, DESIGN decision 2), and ``_apply`` (what
``.to()`` / ``.cuda()`` / ``.half()`` reach through the layer) moves every one of them, but
never changes their dtype: the packed codes and scales are what the kernels read, whatever
the model's float dtype. Loading new weights replaces the tensors (never copies into them), so
caches keyed by tensor identity (ops/gpu.py) and the eager call's pointers (``cpu_call``,
rebuilt by ``_finish``) cannot go stale: set a format's tensors only through its constructor,
``load_state`` or ``_apply``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from tersor.formats import huge_pages

HALVES = (torch.bfloat16, torch.float16)


def check_float_weight(
    weight: torch.Tensor, label: str, finite: bool = True, halves: bool = False
) -> None:
    """A float32 weight (halves=True: or bf16 / fp16, for the formats that widen it a row block
    at a time) without NaN/Inf, or an error naming the layer (finite=False: the caller
    checks values itself, e.g. through its group ranges, without a pass over the weight)."""
    if weight.dtype != torch.float32 and not (halves and weight.dtype in HALVES):
        want = "float32, bfloat16 or float16" if halves else "float32"
        raise TypeError(f"{label}: weight must be {want}, got {weight.dtype}")
    if finite and weight.dim() == 2:  # a row block at a time: isfinite's temporaries of a
        for r0, r1 in row_blocks(*weight.shape, multiple=1):  # whole weight are 1.7x it
            if not bool(torch.isfinite(weight[r0:r1]).all()):
                raise ValueError(f"{label}: weight holds NaN or Inf; cannot convert it")
    elif finite and not torch.isfinite(weight).all():
        raise ValueError(f"{label}: weight holds NaN or Inf; cannot convert it")


CHUNK_ELEMENTS = 1 << 22  # float elements a row block of a conversion holds (16 MiB)


def row_blocks(n: int, k: int, multiple: int = 16) -> list:
    """(r0, r1) row ranges of about CHUNK_ELEMENTS each, whole multiples of `multiple` rows
    (the packed layouts' row blocks): conversions go block by block, so their float
    temporaries stay small whatever the layer (a 131072 x 16400 vocabulary projection's
    fp32 weight alone is 8 GiB)."""
    rows = max(multiple, CHUNK_ELEMENTS // max(k, 1) // multiple * multiple)
    return [(r, min(r + rows, n)) for r in range(0, n, rows)]


def dense_of_rows(n: int, k: int, rows, dtype=torch.float32) -> torch.Tensor:
    """The [N, K] tensor a row source rows(r0, r1) describes (the pruners compute their rows
    on demand; tests, benchmarks and dense stand-ins want the whole weight)."""
    out = torch.empty(n, k, dtype=dtype)
    for r0, r1 in row_blocks(n, k, multiple=1):
        out[r0:r1] = rows(r0, r1)
    return out


def row_sums_int32(q: torch.Tensor) -> torch.Tensor:
    """int32 [N]: the sums of an int8 [N, K]'s rows (the VNNI kernels' column sums), a row
    block at a time: torch widens what it sums, and a whole 2 GiB weight would take 8 GiB."""
    out = torch.empty(q.shape[0], dtype=torch.int32)
    for r0, r1 in row_blocks(q.shape[0], max(q.shape[1], 1), multiple=1):
        out[r0:r1] = q[r0:r1].sum(dim=1, dtype=torch.int32)
    return out


def expect(prefix: str, name: str, t: torch.Tensor, dtype, shape) -> Optional[str]:
    """The state_dict error for a tensor of the wrong dtype or shape, or None."""
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        return (
            f"{prefix}{name}: expected {str(dtype).replace('torch.', '')} {tuple(shape)}, "
            f"got {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"
        )
    return None


def check_input_scale(s, k: int, what: str) -> torch.Tensor:
    """A layer's input scale: float32 [K], finite and > 0 (x is multiplied by it)."""
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or tuple(s.shape) != (k,):
        got = f"{s.dtype} {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"{what}: input_scale must be float32 ({k},), got {got}")
    if not bool((torch.isfinite(s) & (s > 0)).all()):
        raise ValueError(f"{what}: input_scale must be finite and > 0")
    return s.detach().contiguous()


def bad_scale(prefix: str, name: str, s: torch.Tensor) -> Optional[str]:
    """The state_dict error for scales that are not finite and >= 0, or None."""
    if s.numel() and not bool((torch.isfinite(s) & (s >= 0)).all()):
        return f"{prefix}{name}: scales must be finite and >= 0 (NaN, Inf or negative found)"
    return None


def bad_index_ptr(prefix: str, name: str, ptr: torch.Tensor, rows: int) -> Optional[str]:
    """The state_dict error for a compressed-row pointer that is not an integer [rows + 1]
    starting at 0 and never decreasing (the kernels walk rows by it), or None."""
    if ptr.dtype not in (torch.int32, torch.int64) or tuple(ptr.shape) != (rows + 1,):
        return (
            f"{prefix}{name}: expected an int32 / int64 ({rows + 1},) pointer, got "
            f"{ptr.dtype} {tuple(ptr.shape)}"
        )
    if int(ptr[0]) != 0 or bool((ptr[1:] < ptr[:-1]).any()):
        return f"{prefix}{name}: must start at 0 and never decrease"
    return None


class WeightFormat:
    """Base of the format objects (int8.py, int4.py, sparse24.py, sparse_csr.py,
    sparse_block.py)."""

    scheme = ""  # the name the report and repr show ("w8a8", "2:4+w8a8", ...)
    tensor_names: tuple = ()  # the kernel-form tensors, attributes of the object
    # Tensors indexed by input feature rather than output channel (a fused group shares
    # them instead of concatenating them, nn/fused.py).
    input_tensor_names: tuple = ()
    # x's multiplier (float32 [K]) for formats that take one (the dense int8 / int4 formats:
    # AWQ / SmoothQuant scales no preceding op could absorb); the weight stored is W / it,
    # so dequantize() gives W. State key "input_scale"; the kernels apply it while staging
    # x's rows (csrc/half_io/half_io.h), no pass of its own.
    input_scale: Optional[torch.Tensor] = None
    # the tensors a one-row call streams from memory, kept in huge pages (huge_pages.py); None:
    # every tensor (small ones stay where they are)
    streamed_names: Optional[tuple] = None
    # from_float takes bf16 / fp16 weights and widens them a row block at a time
    widens_by_rows = False

    def __init__(self, out_features: int, in_features: int):
        self.out_features, self.in_features = out_features, in_features

    # ---- the scheme's own parts (subclasses) ---------------------------------------------------
    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        config,
        *,
        what: str = "layer",
        score: Optional[torch.Tensor] = None,
    ) -> "WeightFormat":
        raise NotImplementedError

    @classmethod
    def empty(cls, out_features: int, in_features: int, **options) -> "WeightFormat":
        raise NotImplementedError

    def state_names(self) -> list:
        """Canonical state_dict keys (without the layer prefix), in order."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state(self, get: Callable[[str], torch.Tensor], prefix: str) -> Optional[str]:
        """Replace the weights with the canonical tensors get(name) returns; an error message
        (nothing changed) or None."""
        raise NotImplementedError

    @classmethod
    def from_state(
        cls,
        get: Callable[[str], torch.Tensor],
        prefix: str,
        out_features: int,
        in_features: int,
        **options,
    ):
        """A format built straight from its canonical tensors (what checkpoints load), or the
        error message when they do not fit. The default loads into ``empty``; formats whose
        ``empty`` costs a full pack override it."""
        fmt = cls.empty(out_features, in_features, **options)
        return fmt.load_state(get, prefix) or fmt

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def canonical(self) -> tuple:
        """The canonical weight tensors, in state_names() order (formats may say more)."""
        return tuple(v for k, v in self.state_dict().items() if not k.startswith("_"))

    def linear(
        self, x: torch.Tensor, bias: Optional[torch.Tensor], kernel: str, row_amax=None
    ) -> torch.Tensor:
        """row_amax: fp32 [M] floors under the rows' amax for formats with int8 activations
        (a tensor-parallel shard quantizes with the whole row's scale, distributed/)."""
        raise NotImplementedError

    def options(self) -> dict:
        """Constructor options beyond the shape (group size, ...): what ``empty`` needs."""
        return {}

    def describe(self) -> str:
        """The report's note on a converted layer ("" when there is nothing to say)."""
        return ""

    def with_int8_values(self, config, solved=None) -> Optional["WeightFormat"]:
        """The int8 form of a sparse fp32 format (sparsify_ then quantize_(W8A8Config())), or
        None when the format has none. solved: (q int8 [N, K], scale [N]) chosen by
        calibration (GPTQ with the sparsity held), zero wherever the weight is; None: round
        to nearest per channel."""
        return None

    def conv_nhwc(self, xh, bias, geometry, kernel) -> Optional[torch.Tensor]:
        """A native convolution on an NHWC input (QConv2d), or None: the layer then runs the
        format's GEMM on im2col blocks. geometry: (kh, kw, sh, sw, ph, pw, dh, dw, groups);
        a grouped or depthwise one (groups > 1) must be served here (no GEMM view)."""
        return None

    # ---- shared ---------------------------------------------------------------------------------
    def with_input_scale(self, s: Optional[torch.Tensor], what: str = "layer") -> "WeightFormat":
        """This format with x multiplied by s (float32 [K]) before the product; None: none."""
        if s is not None and "input_scale" not in self.tensor_names:
            raise ValueError(f"{what}: a {self.scheme} layer takes no input_scale")
        if s is not None:
            s = check_input_scale(s, self.in_features, what).to(self.device)
        self.input_scale = s
        return self._finish()

    def _input_scale_state(self, out: dict) -> dict:
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale.cpu().clone()
        return out

    @staticmethod
    def _read_input_scale(get, prefix: str, k: int, wanted: bool):
        """The canonical input_scale (CPU) when the layer has one, None, or an error message."""
        if not wanted:
            return None
        s = get("input_scale")
        err = expect(prefix, "input_scale", s, torch.float32, (k,))
        if err:
            return err
        if not bool((torch.isfinite(s) & (s > 0)).all()):
            return f"{prefix}input_scale: values must be finite and > 0"
        return s.cpu()

    @property
    def tensors(self) -> list:
        return [getattr(self, n) for n in self.tensor_names]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors if t is not None)

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def cpu_runner(self) -> Callable:
        """fn(x, bias) -> y, or None when x is not of the layer's width (0-d, wrong K; a runner
        may also decline other layouts): the eager call of the native CPU kernel on this weight
        (x [..., K], y [..., N]),
        for the layers' fast path (x float32 on the CPU, no gradient, no tracing). Formats whose
        family has a leaner one (ops/<family>.py ``cpu_runner_*``) return that."""
        k = self.in_features

        def run(x, bias):
            if x.dim() == 0 or x.shape[-1] != k:
                return None
            if x.dim() == 2:
                return self.linear(x, bias, "auto")
            y = self.linear(x.reshape(-1, k), bias, "auto")
            return y.view(*x.shape[:-1], y.shape[-1])

        return run

    def _apply(self, fn) -> None:
        for name in self.tensor_names:
            t = getattr(self, name)
            if t is not None:
                moved = fn(t)  # a dtype cast (model.half()) only moves: t's own values stay
                setattr(self, name, moved if moved.dtype == t.dtype else t.to(moved.device))
        self._finish()

    def _finish(self) -> "WeightFormat":
        """Called whenever the tensors are (re)placed: constructors, loading, moves."""
        self.on_cpu = self.device.type == "cpu"
        if self.on_cpu:  # the large ones into huge pages (huge_pages.py: a decode's stream)
            for name in self.streamed_names or self.tensor_names:
                t = getattr(self, name)
                if t is not None:
                    setattr(self, name, huge_pages.place(t))
        # the layers' eager CPU call (None off the CPU: the ops' device path serves)
        self.cpu_call = self.cpu_runner() if self.on_cpu else None
        # whether it takes bf16 / fp16 rows itself (ops/_common.py takes_half), else widened first
        self.cpu_half = getattr(self.cpu_call, "takes_half", False)
        return self

    # copies and pickles (copy.deepcopy(model), torch.save(model)) carry the tensors, never the
    # prepared call: a copied closure would run the original's weights
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("cpu_call", "cpu_half")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._finish()

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options().items())
        return (
            f"{type(self).__name__}({self.scheme}, out_features={self.out_features}, "
            f"in_features={self.in_features}{opts})"
        )
