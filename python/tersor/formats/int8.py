"""int8 weights, symmetric per output channel.

Canonical (state_dict) form, hardware-neutral::

    weight_int8   int8    [N, K]   values in [-127, 127]
    weight_scale  float32 [N]      W[n, k] ~= weight_int8[n, k] * weight_scale[n]

Kernel form ("VNNI4" blocks, csrc/common/formats.h ``W8Tile``), built once at conversion::

    N padded to Np = 16*ceil(N/16), K to Kp = 4*ceil(K/4), zeros in the padding

    packed[Np/16][Kp/4][16][4] int8          one [16][4] tile = 64 bytes = one zmm

                  k4 = 0           k4 = 1
    nb = 0   [c0: k0 k1 k2 k3]  [c0: k4 k5 k6 k7]  ...     c = column within the block
             [c1: k0 k1 k2 k3]  [c1: k4 ...     ]          (4 consecutive k of one column
             ...                                            fill one 32-bit VNNI lane)
             [c15: k0 .. k3  ]
    nb = 1   ...

    colsum[Np] int32 = sum_k weight_int8[n, k]   (undoes the VNNI kernel's +128 offset)
    scale[Np]  fp32  (0 in the padding)

-128 is never produced so that the AVX2 tiles' |w| fits vpmaddubsw's u8 operand with no
saturation (see gemm_w8a8/tile_avx2.h). W8A8Config(weight_bits=7) quantizes to [-63, 63]; a
weight whose codes all lie within [-64, 64] is "narrow" (``narrow_w``, found from the codes, so
loaded checkpoints get it too), which the AVX2 W8A8 kernel runs faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tersor import _C
from tersor.formats import huge_pages
from tersor.formats.base import (
    WeightFormat,
    bad_scale,
    check_float_weight,
    expect,
    row_blocks,
    row_sums_int32,
)
from tersor.ops._common import QMAX
from tersor.ops.conv import conv_nhwc_dw_w8a8, conv_nhwc_w8a8
from tersor.ops.dequant import dequant_w8
from tersor.ops.gemm_w8 import cpu_runner_w8, linear_w8
from tersor.ops.gemm_w8a8 import cpu_runner_w8a8, linear_w8a8

BLOCK_N = 16
BLOCK_K = 4
NARROW_MAX = 64  # every |code| <= 64: the AVX2 kernel's u8 (a + 128) x s8 w cannot saturate


def weight_qmax(config) -> int:
    """The largest int8 weight code a config asks for: 127, or 63 for weight_bits=7."""
    return qmax_of_bits(getattr(config, "weight_bits", 8))


def qmax_of_bits(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def is_narrow(codes: torch.Tensor) -> bool:
    return codes.numel() == 0 or int(codes.abs().amax()) <= NARROW_MAX


@dataclass(frozen=True)
class PackedInt8:
    packed: torch.Tensor  # int8 [Np/16, Kp/4, 16, 4]
    colsum: torch.Tensor  # int32 [Np]
    scale: torch.Tensor  # float32 [Np]
    out_features: int
    in_features: int
    code_absmax: int  # the largest |code| (is_narrow without another pass)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.colsum, self.scale))


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def quantize_per_channel_int8(
    weight: torch.Tensor, what: str = "layer", qmax: int = QMAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric per-row quantization of a float [N, K] weight to codes in
    [-qmax, qmax] (NaN / Inf refused through the row ranges: no extra pass over the weight)."""
    w = weight.detach()
    amax = torch.maximum(-w.amin(dim=1), w.amax(dim=1)).to(torch.float32)
    if not bool(torch.isfinite(amax).all()):
        raise ValueError(f"{what}: weight holds NaN or Inf; cannot convert it")
    scale = amax / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.empty(w.shape, dtype=torch.int8)
    for r0, r1 in row_blocks(*w.shape, multiple=1):  # float temporaries of one block
        t = w[r0:r1].to(torch.float32) / safe[r0:r1, None]
        q[r0:r1] = t.round_().clamp_(-qmax, qmax)
    return q, scale.contiguous()


def pack_int8(q: torch.Tensor, scale: torch.Tensor) -> PackedInt8:
    """Canonical (int8 [N, K], fp32 [N]) -> kernel layout. Values must lie in [-127, 127]."""
    n, k = q.shape
    if q.dtype != torch.int8:
        raise ValueError(f"int8 codes: expected int8 [N, K], got {q.dtype}")
    np_, kp = _round_up(n, BLOCK_N), _round_up(k, BLOCK_K)
    scale_p = torch.zeros(np_, dtype=torch.float32)
    scale_p[:n] = scale
    if q.is_cpu:  # one native pass: tiles, column sums and the codes' range (csrc/repack)
        q = q.contiguous()
        packed = huge_pages.empty((np_ // BLOCK_N, kp // BLOCK_K, BLOCK_N, BLOCK_K), torch.int8)
        colsum = torch.empty(np_, dtype=torch.int32)
        lo, hi = _C.int8_rows_to_tiles(
            packed.data_ptr(), colsum.data_ptr(), q.data_ptr(), n, k, kp, k, torch.get_num_threads()
        )
        return PackedInt8(packed, colsum, scale_p, n, k, max(-lo, hi))
    padded = torch.zeros(np_, kp, dtype=torch.int8, device=q.device)
    padded[:n, :k] = q
    packed = padded.view(np_ // BLOCK_N, BLOCK_N, kp // BLOCK_K, BLOCK_K).permute(0, 2, 1, 3)
    colsum = torch.zeros(np_, dtype=torch.int32)
    colsum[:n] = row_sums_int32(q)
    amax = int(q.abs().amax()) if q.numel() else 0
    return PackedInt8(packed.contiguous(), colsum, scale_p, n, k, amax)


def unpack_int8(packed: torch.Tensor, scale: torch.Tensor, n: int, k: int):
    """Kernel layout -> canonical (int8 [N, K], fp32 [N])."""
    nb, k4, _, _ = packed.shape
    if packed.dtype != torch.int8 or nb * BLOCK_N < n or k4 * BLOCK_K < k:
        raise ValueError(
            f"int8 codes: expected int8 tiles for [{n}, {k}], got {packed.dtype} "
            f"{tuple(packed.shape)}"
        )
    if packed.is_cpu:
        packed = packed.contiguous()
        q = torch.empty(n, k, dtype=torch.int8)
        _C.int8_tiles_to_rows(
            packed.data_ptr(), q.data_ptr(), n, k, k4 * BLOCK_K, k, torch.get_num_threads()
        )
        return q, scale[:n].contiguous()
    q = packed.permute(0, 2, 1, 3).reshape(nb * BLOCK_N, k4 * BLOCK_K)
    return q[:n, :k].contiguous(), scale[:n].contiguous()


class Int8Format(WeightFormat):
    """int8 per-channel weights; "w8a8" runs them against dynamic int8 activations
    (``tersor::gemm_w8a8``, and ``tersor::conv_w8a8`` for convolutions), "w8" against float
    activations (``tersor::gemm_w8``)."""

    widens_by_rows = True  # bf16 / fp16 weights: no whole fp32 copy
    narrow_w = False  # set from the codes by the constructors (a pickle from before it: False)

    tensor_names = ("packed", "colsum", "scale", "input_scale")
    input_tensor_names = ("input_scale",)

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, act_int8: bool = True):
        super().__init__(*q.shape)
        self.act_int8 = act_int8
        self.scheme = "w8a8" if act_int8 else "w8"
        p = pack_int8(q, scale)
        self.packed, self.colsum, self.scale = p.packed, p.colsum, p.scale
        self.narrow_w = act_int8 and p.code_absmax <= NARROW_MAX
        self._finish()

    @classmethod
    def from_float(cls, weight, config, *, what="layer", score=None):
        check_float_weight(weight, what, finite=False, halves=True)  # row ranges checked
        n, k = weight.shape
        blocks = row_blocks(n, k, BLOCK_N)
        act_int8, qmax = config.scheme == "w8a8", weight_qmax(config)
        if len(blocks) == 1:
            return cls(*quantize_per_channel_int8(weight, what, qmax), act_int8=act_int8)
        # large layers: quantized and packed a row block at a time into the final tensors
        # (the packed layout is row-block-major), so the peak stays near the weight itself
        np_, kp = _round_up(n, BLOCK_N), _round_up(k, BLOCK_K)
        packed = huge_pages.empty((np_ // BLOCK_N, kp // BLOCK_K, BLOCK_N, BLOCK_K), torch.int8)
        colsum = torch.empty(np_, dtype=torch.int32)
        scale = torch.empty(np_)
        for r0, r1 in blocks:
            p = pack_int8(*quantize_per_channel_int8(weight[r0:r1], what, qmax))
            b0, b1 = r0 // BLOCK_N, r0 // BLOCK_N + p.packed.shape[0]
            packed[b0:b1], colsum[r0 : r0 + len(p.colsum)] = p.packed, p.colsum
            scale[r0 : r0 + len(p.scale)] = p.scale
        fmt = cls.__new__(cls)
        WeightFormat.__init__(fmt, n, k)
        fmt.act_int8, fmt.scheme = act_int8, "w8a8" if act_int8 else "w8"
        fmt.packed, fmt.colsum, fmt.scale = packed, colsum, scale
        fmt.narrow_w = act_int8 and qmax <= NARROW_MAX
        return fmt._finish()

    @classmethod
    def empty(cls, out_features, in_features, act_int8=True, input_scaled=False):
        return cls(
            torch.zeros(out_features, in_features, dtype=torch.int8),
            torch.zeros(out_features),
            act_int8,
        ).with_input_scale(torch.ones(in_features) if input_scaled else None)

    def options(self):
        opts = {} if self.act_int8 else {"act_int8": False}
        if self.input_scale is not None:
            opts["input_scaled"] = True
        return opts

    def describe(self):
        return "7-bit weights (every |code| <= 64)" if self.narrow_w else ""

    def canonical(self):
        """(q int8 [N, K], scale fp32 [N])."""
        return unpack_int8(self.packed.cpu(), self.scale.cpu(), self.out_features, self.in_features)

    def state_names(self):
        return ["weight_int8", "weight_scale"] + (
            ["input_scale"] if self.input_scale is not None else []
        )

    def state_dict(self):
        q, s = self.canonical()
        return self._input_scale_state({"weight_int8": q, "weight_scale": s})

    @classmethod
    def _canonical_args(cls, get, prefix, n, k, input_scaled):
        """(q, scale, input_scale) on the CPU from the canonical tensors, or the error
        message."""
        q, s = get("weight_int8"), get("weight_scale")
        err = expect(prefix, "weight_int8", q, torch.int8, (n, k)) or expect(
            prefix, "weight_scale", s, torch.float32, (n,)
        )
        if err:
            return err
        if q.numel() and int(q.min()) < -QMAX:
            return f"{prefix}weight_int8: values must lie in [-127, 127]"
        err = bad_scale(prefix, "weight_scale", s)
        if err:
            return err
        xs = cls._read_input_scale(get, prefix, k, input_scaled)
        return xs if isinstance(xs, str) else (q.cpu(), s.cpu(), xs)

    def load_state(self, get, prefix):
        args = self._canonical_args(
            get, prefix, self.out_features, self.in_features, self.input_scale is not None
        )
        if isinstance(args, str):
            return args
        device = self.device
        self.__init__(*args[:2], self.act_int8)
        self.input_scale = args[2]
        self._apply(lambda t: t.to(device))
        return None

    @classmethod
    def from_state(cls, get, prefix, out_features, in_features, act_int8=True, input_scaled=False):
        args = cls._canonical_args(get, prefix, out_features, in_features, input_scaled)
        if isinstance(args, str):
            return args
        return cls(*args[:2], act_int8).with_input_scale(args[2], prefix or "layer")

    def dequantize(self):
        w = dequant_w8(self.packed, self.scale, self.out_features, self.in_features)
        return w if self.input_scale is None else w * self.input_scale

    def linear(self, x, bias, kernel, row_amax=None):
        xs, n = self.input_scale, self.out_features
        if self.act_int8:
            return linear_w8a8(
                x,
                self.packed,
                self.colsum,
                self.scale,
                bias,
                n,
                kernel,
                xs,
                row_amax,
                self.narrow_w,
            )
        return linear_w8(x, self.packed, self.scale, bias, n, kernel, xs)

    def cpu_runner(self):
        n, k, xs = self.out_features, self.in_features, self.input_scale
        if self.act_int8:
            return cpu_runner_w8a8(self.packed, self.colsum, self.scale, n, k, xs, self.narrow_w)
        return cpu_runner_w8(self.packed, self.scale, n, k, xs)

    def conv_nhwc(self, xh, bias, geometry, kernel):
        groups = geometry[8] if len(geometry) > 8 else 1
        if not self.act_int8 or self.input_scale is not None:
            return None
        args = (xh.contiguous(), self.packed, self.colsum, self.scale, bias, self.out_features)
        if groups > 1 and groups == xh.shape[-1]:  # depthwise: the op serves every device
            return conv_nhwc_dw_w8a8(*args[:2], *args[3:], *geometry[:8], kernel)
        # a grouped convolution: the op serves every device; a plain one natively on the CPU
        # (and its reference), on a GPU the layer runs im2col GEMMs
        if groups == 1 and not (self.on_cpu or kernel == "ref"):
            return None
        return conv_nhwc_w8a8(*args, *geometry[:8], kernel, groups, self.narrow_w)
