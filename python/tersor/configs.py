"""Frozen configuration dataclasses: one per compression scheme (``<Scheme>Config``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from tersor.formats.int4 import ACT_BITS, GROUP_SIZES

KERNELS = ("auto", "native", "cuda", "triton", "ref")
METHODS = ("rtn", "gptq", "awq", "awq+gptq")  # how quantization configs choose their weights


def _check_weight_bits(cls: str, bits) -> None:
    if bits not in (7, 8) or isinstance(bits, bool):
        raise ValueError(f"{cls}.weight_bits must be 8 or 7, got {bits!r}")


def _check_kernel(cls: str, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"{cls}.kernel must be one of {KERNELS}, got {kernel!r}")


CONFIG_TYPES: dict = {}  # class name -> config class (from_dict)


@dataclass(frozen=True)
class Config:
    """Base of every config: a frozen dataclass with a scheme name, a version (bumped when a
    field's meaning changes) and a round trip through a JSON-able dict, the form checkpoint
    manifests store."""

    version: ClassVar[int] = 1
    scheme: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__name__.startswith("_"):
            CONFIG_TYPES[cls.__name__] = cls

    def to_dict(self) -> dict:
        d = {"type": type(self).__name__, "version": self.version}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @staticmethod
    def from_dict(d: dict) -> "Config":
        d = dict(d)
        name, version = d.pop("type", None), d.pop("version", 1)
        cls = CONFIG_TYPES.get(name)
        if cls is None:
            raise ValueError(f"unknown tersor config type {name!r}; known: {sorted(CONFIG_TYPES)}")
        if version > cls.version:
            raise ValueError(
                f"{name} version {version} is newer than this tersor's "
                f"({cls.version}); upgrade tersor to read it"
            )
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"{name}: unknown fields {sorted(extra)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class _QuantConfig(Config):
    """Fields every quantization config has.

    kernel: "auto" (native kernels where the device has them: the C++ CPU kernels, on a GPU
            the CUDA extension, else Triton, else the torch reference), "native" (refuse to run
            without compiled kernels), "cuda" / "triton" (only that GPU kernel family; Triton
            also runs CPU tensors under TRITON_INTERPRET=1), "ref" (the torch reference).
    skip_names: fully qualified names of layers to leave dense (an output head, say).
    method: "rtn" (round to nearest, no data), "gptq" (error feedback against the layer's
            calibration inputs), "awq" (per-input-channel scales searched on the
            activations, then AWQ's clip search and round to nearest) or "awq+gptq" (AWQ's
            scales, then GPTQ on the scaled weights instead of clip and round to nearest);
            quantize_(..., calibration=...) runs them block by block (tersor/calibration/);
            nn.Conv2d layers are solved on their patches by gptq, and get no input scales
            (awq rounds them to nearest).
    act_order: gptq / awq+gptq only: quantize input columns in decreasing activity (int4
            stores the order as the layer's input permutation).
    damp: gptq / awq+gptq only: the Hessian's dampening, as a fraction of its mean diagonal.
    smooth: SmoothQuant's migration strength alpha in (0, 1] for the schemes with int8
            activations (None: off): s = max|x|^alpha / max|w|^(1 - alpha) per input
            channel, with method "rtn" or "gptq" after it. AWQ's and SmoothQuant's scales
            fold into the op before the layers where the block proves that exact, else the
            layer keeps them (calibration/smooth.py).
    """

    kernel: str = "auto"
    skip_names: tuple = ()
    method: str = "rtn"
    act_order: bool = False
    damp: float = 0.01
    smooth: Optional[float] = None

    def __post_init__(self):
        _check_kernel(type(self).__name__, self.kernel)
        name = type(self).__name__
        if self.method not in METHODS:
            raise ValueError(f"{name}.method must be one of {METHODS}, got {self.method!r}")
        if self.act_order and "gptq" not in self.method:
            raise ValueError(f"{name}.act_order applies to method='gptq' or 'awq+gptq' only")
        if not (isinstance(self.damp, (int, float)) and 0 < self.damp < 1):
            raise ValueError(f"{name}.damp must be in (0, 1), got {self.damp!r}")
        if self.smooth is not None:
            if isinstance(self.smooth, bool) or not (
                isinstance(self.smooth, (int, float)) and 0 < self.smooth <= 1
            ):
                raise ValueError(f"{name}.smooth must be None or in (0, 1], got {self.smooth!r}")
            if self.scheme not in ("w8a8", "w4a8"):
                raise ValueError(
                    f"{name}.smooth moves activation outliers into the weights: it serves the "
                    f"schemes with int8 activations (W8A8Config, W4A8Config)"
                )
            if "awq" in self.method:
                raise ValueError(
                    f"{name}: smooth and method={self.method!r} both set input scales; pick one"
                )
        if not isinstance(self.skip_names, tuple) or not all(
            isinstance(s, str) for s in self.skip_names
        ):
            raise ValueError(
                f"{type(self).__name__}.skip_names must be a tuple of str, got {self.skip_names!r}"
            )


@dataclass(frozen=True)
class W8A8Config(_QuantConfig):
    """int8 weights (symmetric, per output channel) x int8 activations (dynamic, per row: per
    token for a Linear, per pixel for a 1x1 Conv2d, per image for a larger Conv2d).

    weight_bits: 8, or 7 (codes in [-63, 63], scale = absmax / 63: twice the weight rounding
            error). On CPUs without VNNI (AVX2 only) 7-bit weights let the int8 multiply run
            without sign handling (1.2-1.5x the speed from 8 rows; OpenVINO's default there,
            where torch.ao drops an activation bit instead); elsewhere the same speed. The
            results are the same on every ISA path either way.
    """

    scheme: ClassVar[str] = "w8a8"
    weight_bits: int = 8

    def __post_init__(self):
        super().__post_init__()
        _check_weight_bits(type(self).__name__, self.weight_bits)


@dataclass(frozen=True)
class W8Config(_QuantConfig):
    """int8 weights (symmetric, per output channel) x float32 activations (weight-only)."""

    scheme: ClassVar[str] = "w8"


@dataclass(frozen=True)
class _Int4Config(_QuantConfig):
    group_size: int = 128
    symmetric: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.group_size not in GROUP_SIZES:
            raise ValueError(
                f"{type(self).__name__}.group_size must be one of {GROUP_SIZES} "
                f"(-1: one group per output channel), got {self.group_size!r}"
            )
        if not isinstance(self.symmetric, bool):
            raise ValueError(
                f"{type(self).__name__}.symmetric must be a bool, got {self.symmetric!r}"
            )


@dataclass(frozen=True)
class W4Config(_Int4Config):
    """int4 group-wise weights (fp16 scales, zero points unless symmetric) x float32
    activations; the weights are dequantized exactly in registers. For decode steps,
    W4A8Config(act_bits=16) runs the same weights with each activation within amax / 64516 of
    its float value, 1.4-1.6x faster at one row on AVX2 (rows above 6 stay float)."""

    scheme: ClassVar[str] = "w4"


@dataclass(frozen=True)
class W4A8Config(_Int4Config):
    """int4 group-wise weights x int8 activations (dynamic, per row), VNNI/AMX dot products.

    act_bits: 8, or 16: each row as two int8 planes (a high one and one for what it left,
            csrc/quant_act/quant_act.h), every activation within amax / 64516 of its float
            value (int8: amax / 254), through the same kernel, up to 6 rows (ops/gemm_w4.py
            PLANES_MAX_ROWS; above them the float-activation W4 kernels, faster there, on the
            exact rows). A decode step's accuracy about that of float activations at the int8
            kernel's speed: Zen 3 (AVX2), one row, 1.38-1.59x the W4 (float) kernel, 0.84-0.91x
            act_bits=8.
    """

    group_size: int = 32
    scheme: ClassVar[str] = "w4a8"
    act_bits: int = 8

    def __post_init__(self):
        super().__post_init__()
        if self.act_bits not in ACT_BITS or isinstance(self.act_bits, bool):
            raise ValueError(f"W4A8Config.act_bits must be 8 or 16, got {self.act_bits!r}")


# prune= of the sparsity configs: True (|w|, or Wanda's |w| * ||x_k|| when sparsify_ gets
# calibration), "magnitude", "wanda" (needs calibration), "sparsegpt" (needs calibration: the
# kept weights are updated to make up for the pruned ones, tersor/calibration/sparsegpt.py),
# False (no pruning: the weights' own zeros).
PRUNE_METHODS = (True, False, "magnitude", "wanda", "sparsegpt")


def _check_prune(cls: str, prune) -> None:
    if not any(prune is p or (isinstance(p, str) and prune == p) for p in PRUNE_METHODS):
        raise ValueError(f"{cls}.prune must be one of {PRUNE_METHODS}, got {prune!r}")


@dataclass(frozen=True)
class _SparseConfig(Config):
    """Base of the sparsity configs (sparsify_)."""


@dataclass(frozen=True)
class Sparse24Config(_SparseConfig):
    """2:4 semi-structured sparsity along K (fp32 values). prune: how weights that are not 2:4
    already are pruned (PRUNE_METHODS; False: such layers are an error)."""

    prune: object = True
    scheme: ClassVar[str] = "2:4"

    def __post_init__(self):
        _check_prune(type(self).__name__, self.prune)


# Measured break-evens (4096 x 4096, 2 threads; python -m tersor.bench --family sparse*): the
# sparsity below which a sparse layer is not faster than dense fp32.
BREAK_EVEN = {"unstructured": 0.7, "block": 0.5}
# Unstructured layers sparser than this beat dense at every M; below it they lose from
# DENSE_FALLBACK_ROWS rows (75%: 1.5-1.9x dense up to 128 rows, 0.8-1.0x at 512).
LARGE_M_BREAK_EVEN = 0.85
DENSE_FALLBACK_ROWS = 256
# Their int8 form ("unstructured+w8a8") against our dense W8A8 (AMX here): 1.35-2.7x at M = 1
# from 90% zeros, 0.4-1.0x from 8 rows, 0.6-0.8x at 75% even at M = 1. So an int8 layer runs
# the dense W8A8 kernel on a dense int8 copy from INT8_DENSE_FALLBACK_ROWS rows (by its
# sparsity: formats/sparse_csr.py int8_rows_window), from one row below LARGE_M_BREAK_EVEN
# sparsity or with fewer than INT8_SPARSE_MIN_NONZEROS nonzeros an output. On CPUs without
# VNNI it is the other way round: the dense W8A8 kernel below INT8_AVX2_SPARSE_FROM_ROWS rows,
# the sparse one from there when the layer is LARGE_M_BREAK_EVEN sparse.
INT8_DENSE_FALLBACK_ROWS = {0.95: 4, 0.0: 2}  # from this sparsity (the first that holds): rows
INT8_SPARSE_MIN_NONZEROS = 64
INT8_AVX2_SPARSE_FROM_ROWS = 32
# 2:4 int8 layers ("2:4+w8a8") on AMX CPUs: the dense W8A8 copy from this many rows, for
# layers of at most / more than INT8_24_SMALL weights (formats/sparse24.py
# dense_from_rows_24_int8 has the figures).
INT8_24_SMALL = 4 << 20
INT8_24_DENSE_FROM_ROWS = (5, 10)


@dataclass(frozen=True)
class SparseConfig(_SparseConfig):
    """Unstructured (block=None) or block-sparse (block=(r, c)) fp32 weights.

    sparsity:    fraction of weights (unstructured) or of (r, c) blocks to zero, in (0, 1).
    block:       pruning block shape (rows = output channels, cols = k); must divide every
                 layer. The kernels store 16 x 1 (fp32) / 16 x 4 (int8) blocks, so (16, 1)
                 and (16, 4) shapes turn all pruned work into skipped work.
    scope:       "layer" (every layer reaches `sparsity`) or "global" (one threshold over all
                 converted layers' scores; layers end up with different sparsities).
    prune:       how weights are pruned (PRUNE_METHODS); False: use the weights' own zeros
                 (a block layer must then already be block sparse to `sparsity`, else it is
                 an error).
    dense_below: layers left denser than this stay dense ("too dense to gain"); None: the
                 measured break-even of the format (BREAK_EVEN).
    dense_fallback: unstructured layers sparser than the break-even but below
                 LARGE_M_BREAK_EVEN keep a dense copy too and run dense from
                 DENSE_FALLBACK_ROWS rows (they lose to dense there); the report says so.
    Weights are scored by |w|, or by Wanda's |w| * ||x_k|| when sparsify_ is given a
    calibration batch.
    """

    sparsity: float = 0.9
    block: Optional[tuple] = None
    prune: object = True
    scope: str = "layer"
    dense_below: Optional[float] = None
    dense_fallback: bool = True

    @property
    def scheme(self) -> str:
        return "unstructured" if self.block is None else "block"

    @property
    def break_even(self) -> float:
        return BREAK_EVEN[self.scheme] if self.dense_below is None else self.dense_below

    def __post_init__(self):
        if (
            isinstance(self.sparsity, bool)
            or not isinstance(self.sparsity, (int, float))
            or not 0.0 < self.sparsity < 1.0
        ):
            raise ValueError(f"SparseConfig.sparsity must lie in (0, 1), got {self.sparsity!r}")
        if self.block is not None:
            b = self.block
            if (
                not isinstance(b, tuple)
                or len(b) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in b)
            ):
                raise ValueError(
                    f"SparseConfig.block must be None or a pair of positive ints "
                    f"(rows, cols), got {b!r}"
                )
        _check_prune(type(self).__name__, self.prune)
        if self.scope not in ("layer", "global"):
            raise ValueError(f"SparseConfig.scope must be 'layer' or 'global', got {self.scope!r}")
        if self.dense_below is not None and not 0.0 <= self.dense_below < 1.0:
            raise ValueError(
                f"SparseConfig.dense_below must be None or lie in [0, 1), got {self.dense_below!r}"
            )
        if not isinstance(self.dense_fallback, bool):
            raise ValueError(
                f"SparseConfig.dense_fallback must be a bool, got {self.dense_fallback!r}"
            )


OBSERVERS = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class W8A8StaticConfig(Config):
    """The static int8 pipeline (``tersor.quantize_static``): int8 weights per output channel,
    activation scales fixed from calibration batches, int8 tensors between layers.

    observer: how each activation scale is chosen ("minmax" | "percentile" | "mse",
    tersor/static_int8/observers.py); percentile: for "percentile" (of |x|);
    keep_float: fnmatch patterns of layer names kept fp32 (listed in the report).
    min_sqnr: keep fp32 (and report) every layer whose int8 form, run alone on the first
    calibration batch, has a signal-to-quantization-noise ratio below this many dB (None: off;
    30-35 dB keeps only the layers that lose clearly more than the rest).
    weight_bits: 8, or 7 as in W8A8Config: on CPUs without VNNI the layers whose inputs are
    signed (no ReLU before them) then multiply without sign handling.
    """

    scheme: ClassVar[str] = "w8a8-static"
    observer: str = "mse"
    percentile: float = 99.99
    keep_float: tuple = ()
    min_sqnr: Optional[float] = None
    weight_bits: int = 8

    def __post_init__(self):
        _check_weight_bits(type(self).__name__, self.weight_bits)
        if self.observer not in OBSERVERS:
            raise ValueError(
                f"W8A8StaticConfig.observer must be one of {OBSERVERS}, got {self.observer!r}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(
                f"W8A8StaticConfig.percentile must lie in (50, 100], got {self.percentile}"
            )
        if isinstance(self.keep_float, str):
            object.__setattr__(self, "keep_float", (self.keep_float,))
        if self.min_sqnr is not None and not isinstance(self.min_sqnr, (int, float)):
            raise ValueError(
                f"W8A8StaticConfig.min_sqnr must be a number of dB or None, got {self.min_sqnr!r}"
            )
