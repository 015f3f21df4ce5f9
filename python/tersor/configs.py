"""Frozen configuration dataclasses: one per compression scheme (``<Scheme>Config``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tersor.formats.int4 import GROUP_SIZES

KERNELS = ("auto", "native", "ref")


def _check_kernel(cls: str, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"{cls}.kernel must be one of {KERNELS}, got {kernel!r}")


@dataclass(frozen=True)
class _QuantConfig:
    """Fields every quantization config has.

    kernel: "auto" (native kernels where the device has them, else the torch reference),
            "native" (refuse to run without them), "ref" (the torch reference, for debugging).
    skip_names: fully qualified names of layers to leave dense (an output head, say).
    """

    kernel: str = "auto"
    skip_names: tuple = ()

    scheme = ""

    def __post_init__(self):
        _check_kernel(type(self).__name__, self.kernel)
        if not isinstance(self.skip_names, tuple) or not all(
                isinstance(s, str) for s in self.skip_names):
            raise ValueError(f"{type(self).__name__}.skip_names must be a tuple of str, got "
                             f"{self.skip_names!r}")


@dataclass(frozen=True)
class W8A8Config(_QuantConfig):
    """int8 weights (symmetric, per output channel) x int8 activations (dynamic, per row)."""

    scheme = "w8a8"


@dataclass(frozen=True)
class W8Config(_QuantConfig):
    """int8 weights (symmetric, per output channel) x float32 activations (weight-only)."""

    scheme = "w8"


@dataclass(frozen=True)
class _Int4Config(_QuantConfig):
    group_size: int = 128
    symmetric: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"{type(self).__name__}.group_size must be one of {GROUP_SIZES} "
                             f"(-1: one group per output channel), got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"{type(self).__name__}.symmetric must be a bool, got "
                             f"{self.symmetric!r}")


@dataclass(frozen=True)
class W4Config(_Int4Config):
    """int4 group-wise weights (fp16 scales, zero points unless symmetric) x float32
    activations; the weights are dequantized exactly in registers."""

    scheme = "w4"


@dataclass(frozen=True)
class W4A8Config(_Int4Config):
    """int4 group-wise weights x int8 activations (dynamic, per row), VNNI/AMX dot products."""

    group_size: int = 32
    scheme = "w4a8"


@dataclass(frozen=True)
class Sparse24Config:
    """2:4 semi-structured sparsity along K (fp32 values). prune: magnitude-prune weights that
    are not 2:4 already (False: such layers are an error)."""

    prune: bool = True
    scheme = "2:4"

    def __post_init__(self):
        if not isinstance(self.prune, bool):
            raise ValueError(f"Sparse24Config.prune must be a bool, got {self.prune!r}")


@dataclass(frozen=True)
class SparseConfig:
    """Unstructured sparsity (fp32 values): magnitude pruning of each layer to `sparsity`
    (unless prune=False: the weights' own zeros are used). Layers left denser than
    `dense_below` stay dense ("too dense to gain"): measured on 4096 x 4096, the sparse kernels
    at 75% zeros run 1.3-2x dense up to 128 rows but 0.85x at 512, at 90% 1.4-3.9x.
    block=(r, c) block-sparse formats are not implemented yet."""

    sparsity: float = 0.9
    block: Optional[tuple] = None
    prune: bool = True
    dense_below: float = 0.7
    scheme = "unstructured"

    def __post_init__(self):
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"SparseConfig.sparsity must lie in (0, 1), got {self.sparsity!r}")
        if self.block is not None:
            raise ValueError(f"SparseConfig.block={self.block!r}: block-sparse formats are not "
                             f"implemented yet (use block=None)")
        if not isinstance(self.prune, bool):
            raise ValueError(f"SparseConfig.prune must be a bool, got {self.prune!r}")
        if not 0.0 <= self.dense_below < 1.0:
            raise ValueError(f"SparseConfig.dense_below must lie in [0, 1), got "
                             f"{self.dense_below!r}")
