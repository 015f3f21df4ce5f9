"""int4 weights, group-wise along K, asymmetric (zero point per group) or symmetric.

Dequantization: ``W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g]``, ``g = k // G``, codes
``q`` in [0, 15]; symmetric means ``zero == 8``. Group sizes G: 32, 64, 128, or -1 (one group
per output channel, K padded to a multiple of 8).

Scales are fp16 in both the canonical and the kernel form: at G = 32 an fp32 scale would add a
full bit per weight (4.5 -> 5 bits, ~11% more bytes for a bandwidth-bound M = 1), while fp16's
11-bit significand is far finer than the 4-bit codes it scales; it is also what GPTQ/AWQ
checkpoints carry, so imports are lossless. (q - z) * s is exact in fp32.

Canonical (state_dict) form, hardware-neutral::

    weight_int4   uint8   [N, ceil(K/2)]  two codes per byte along K: k even low nibble, odd high
    weight_scale  float16 [N, ngroups]
    weight_zero   uint8   [N, ngroups]    (asymmetric only)

Kernel form (csrc/common/formats.h, ``W4Tile``), built once at conversion::

    codes[Np/16][Kp/8][16][4] uint8      Kp = ngroups * G, Np = 16 * ceil(N / 16)

      W4Tile t of block nb, lane c:  byte j = q[16nb + c][8t + j] | q[16nb + c][8t + 4 + j] << 4

               byte 0    byte 1    byte 2    byte 3
      low:      k0        k1        k2        k3       (v & 0xf: one VNNI lane of 4 k)
      high:     k4        k5        k6        k7       (v >> 4 & 0xf: the next lane)

    scale[Np/16][ngroups][16] fp16,  zero[Np/16][ngroups][16] uint8 (asymmetric only)

Checkpoint imports (``from_gptq``, ``from_awq``) return the canonical codes, scales and zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tersor import _C
from tersor.formats import huge_pages
from tersor.formats.base import WeightFormat, bad_scale, check_float_weight, expect, row_blocks
from tersor.ops.gemm_w4 import cpu_runner_w4, dequant_w4t, linear_w4

GROUP_SIZES = (32, 64, 128, -1)
BLOCK_N = 16
TILE_K = 8
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ int32 holds column 8c + AWQ_ORDER[i]


@dataclass(frozen=True)
class PackedInt4:
    codes: torch.Tensor  # uint8 [Np/16, Kp/8, 16, 4]
    scale: torch.Tensor  # float16 [Np/16, ngroups, 16]
    zero: Optional[torch.Tensor]  # uint8 [Np/16, ngroups, 16], None when symmetric
    out_features: int
    in_features: int
    group_size: int  # effective G (a multiple of 8)

    @property
    def ngroups(self) -> int:
        return self.scale.shape[1]

    @property
    def nbytes(self) -> int:
        ts = [self.codes, self.scale] + ([self.zero] if self.zero is not None else [])
        return sum(t.numel() * t.element_size() for t in ts)


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def effective_group_size(in_features: int, group_size: int, what: str = "layer") -> int:
    """G actually used: -1 means one group of K rounded up to 8. Grouped K must divide evenly."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{what}: group_size must be one of {GROUP_SIZES}, got {group_size}")
    if group_size == -1:
        return _round_up(max(in_features, 1), TILE_K)
    if in_features % group_size:
        raise ValueError(
            f"{what}: in_features={in_features} is not a multiple of group_size="
            f"{group_size}; refusing to pad silently (use group_size=-1, or a "
            f"group size that divides {in_features})"
        )
    return group_size


def group_grid(lo: torch.Tensor, hi: torch.Tensor, symmetric: bool):
    """The int4 grid of groups whose weights span [lo, hi]: (scale fp16, zero point as float,
    scale as float32 with 1 where it is 0, safe to divide by). Symmetric: scale = amax / 7,
    z = 8; else the range widened to hold 0, scale = range / 15, z = round(-lo / scale)."""
    if symmetric:
        scale = (torch.maximum(-lo, hi) / 7.0).to(torch.float16)
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = ((hi - lo) / 15.0).to(torch.float16)
    s = scale.to(torch.float32)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    zero = torch.full_like(s, 8.0) if symmetric else torch.round(-lo / safe).clamp(0, 15)
    return scale, zero, safe


def quantize_int4(
    weight: torch.Tensor, group_size: int = 128, symmetric: bool = False, what: str = "layer"
):
    """Round-to-nearest int4. Returns (q uint8 [N, K], scale fp16 [N, ngroups],
    zero uint8 [N, ngroups] or None, G)."""
    w = weight.detach().to(torch.float32)
    n, k = w.shape
    g = effective_group_size(k, group_size, what)
    kp = _round_up(k, g)
    if kp == k:  # no padded copy: at 1B-model sizes every full-size temporary costs ~0.1 s
        wp = w.contiguous()
    else:
        wp = torch.zeros(n, kp)
        wp[:, :k] = w
    wg = wp.view(n, kp // g, g)
    lo, hi = wg.amin(-1), wg.amax(-1)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise ValueError(f"{what}: weight holds NaN or Inf; cannot convert it")
    scale, zf, safe = group_grid(lo, hi, symmetric)
    if torch.isinf(scale).any():
        raise ValueError(f"{what}: weights too large for fp16 group scales (|w| > ~1e6)")
    zero = None if symmetric else zf.to(torch.uint8)
    q = torch.empty(n, kp // g, g, dtype=torch.uint8)
    for r0, r1 in row_blocks(n, kp, multiple=1):  # float temporaries of one block
        t = wg[r0:r1] / safe[r0:r1, :, None]
        q[r0:r1] = t.round_().add_(zf[r0:r1, :, None]).clamp_(0, 15)
    q = q.view(n, kp)
    return (q if kp == k else q[:, :k].contiguous()), scale, zero, g


def dequantize_int4(q, scale, zero, group_size: int) -> torch.Tensor:
    """Canonical codes -> float32 [N, K] (the reference for every kernel)."""
    n, k = q.shape
    z = (
        zero.to(torch.float32)
        if zero is not None
        else torch.full(scale.shape, 8.0, device=scale.device)
    )
    s = scale.to(torch.float32)
    ngroups = scale.shape[1]
    if k == ngroups * group_size:  # whole groups: broadcast over a group view, no gathers
        qg = q.view(n, ngroups, group_size).to(torch.float32)
        return ((qg - z[:, :, None]) * s[:, :, None]).view(n, k)
    g_of_k = torch.arange(k, device=q.device) // group_size
    return (q.to(torch.float32) - z[:, g_of_k]) * s[:, g_of_k]


def pack_int4(
    q: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], group_size: int
) -> PackedInt4:
    """Canonical (q [N, K], scale [N, ngroups], zero) -> kernel layout (diagram above)."""
    n, k = q.shape
    codes = codes_to_tiles(q, n, k, scale.shape[1] * group_size, nibbles=False)
    scale_p, zero_p = pack_group_params(scale, zero)
    return PackedInt4(codes, scale_p, zero_p, n, k, group_size)


def codes_to_tiles(rows: torch.Tensor, n: int, k: int, kp: int, nibbles: bool) -> torch.Tensor:
    """Canonical codes, rows [N, K] one per byte or [N, ceil(K/2)] nibble bytes (k even in
    the low nibble) -> the kernel codes [Np/16, Kp/8, 16, 4]; codes at k >= K and rows past N
    are 0. Native on the CPU (csrc/repack), in torch elsewhere."""
    np_ = _round_up(n, BLOCK_N)
    width = (k + 1) // 2 if nibbles else k
    if rows.dtype != torch.uint8 or tuple(rows.shape) != (n, width) or kp < k or kp % TILE_K:
        raise ValueError(
            f"int4 codes: expected uint8 [{n}, {width}] and Kp >= {k} a multiple of {TILE_K}, "
            f"got {rows.dtype} {tuple(rows.shape)} and Kp = {kp}"
        )
    if rows.is_cpu:
        rows = rows.contiguous()
        out = huge_pages.empty((np_ // BLOCK_N, kp // TILE_K, BLOCK_N, 4), torch.uint8)
        _C.int4_rows_to_tiles(
            out.data_ptr(),
            rows.data_ptr(),
            n,
            k,
            kp,
            rows.shape[1],
            nibbles,
            torch.get_num_threads(),
        )
        return out
    return _codes_to_tiles_torch(rows, n, k, kp, nibbles)


def _codes_to_tiles_torch(rows, n: int, k: int, kp: int, nibbles: bool) -> torch.Tensor:
    np_ = _round_up(n, BLOCK_N)
    q = from_nibbles(rows, k) if nibbles else rows
    qp = torch.zeros(np_, kp, dtype=torch.uint8, device=rows.device)
    qp[:n, :k] = q
    # [nb, c, t, half, j] -> byte (nb, t, c, j) = half0 | half1 << 4
    v = qp.view(np_ // BLOCK_N, BLOCK_N, kp // TILE_K, 2, 4)
    return (v[:, :, :, 0, :] | (v[:, :, :, 1, :] << 4)).permute(0, 2, 1, 3).contiguous()


def tiles_to_codes(codes: torch.Tensor, n: int, k: int, nibbles: bool) -> torch.Tensor:
    """The kernel codes [Np/16, Kp/8, 16, 4] -> canonical rows over k < K: [N, K] one code
    per byte, or [N, ceil(K/2)] nibble bytes (an odd K's last high nibble 0)."""
    nb, k8, _, _ = codes.shape
    if codes.dtype != torch.uint8 or nb * BLOCK_N < n or k8 * TILE_K < k:
        raise ValueError(
            f"int4 codes: expected uint8 tiles for [{n}, {k}], got {codes.dtype} "
            f"{tuple(codes.shape)}"
        )
    if codes.is_cpu:
        codes = codes.contiguous()
        width = (k + 1) // 2 if nibbles else k
        out = torch.empty(n, width, dtype=torch.uint8)
        _C.int4_tiles_to_rows(
            codes.data_ptr(),
            out.data_ptr(),
            n,
            k,
            k8 * TILE_K,
            width,
            nibbles,
            torch.get_num_threads(),
        )
        return out
    return _tiles_to_codes_torch(codes, n, k, nibbles)


def _tiles_to_codes_torch(codes, n: int, k: int, nibbles: bool) -> torch.Tensor:
    nb, k8, _, _ = codes.shape
    lo, hi = codes & 0x0F, codes >> 4
    q = torch.stack([lo, hi], dim=3)  # [nb, t, c, half, j]
    q = q.permute(0, 2, 1, 3, 4).reshape(nb * BLOCK_N, k8 * TILE_K)[:n, :k].contiguous()
    return to_nibbles(q) if nibbles else q


def pack_group_params(scale: torch.Tensor, zero: Optional[torch.Tensor]):
    """scale fp16 / zero uint8 [N, ngroups] -> [Np/16, ngroups, 16] (the kernel form)."""
    n, ngroups = scale.shape
    np_ = _round_up(n, BLOCK_N)

    def per_block(t, dtype):
        out = torch.zeros(np_, ngroups, dtype=dtype)
        out[:n] = t
        return out.view(np_ // BLOCK_N, BLOCK_N, ngroups).permute(0, 2, 1).contiguous()

    zero_p = per_block(zero, torch.uint8) if zero is not None else None
    return per_block(scale.to(torch.float16), torch.float16), zero_p


def unpack_int4(codes, scale, zero, n: int, k: int):
    """Kernel layout -> canonical (q [N, K], scale [N, ngroups], zero or None)."""
    q = tiles_to_codes(codes, n, k, nibbles=False)
    s, z = unpack_group_params(scale, zero, n)
    return q, s, z


def unpack_group_params(scale, zero, n: int):
    """pack_group_params' inverse: [Np/16, ngroups, 16] -> [N, ngroups] (contiguous)."""
    nb = scale.shape[0]
    s = scale.permute(0, 2, 1).reshape(nb * BLOCK_N, -1)[:n].contiguous()
    z = None if zero is None else zero.permute(0, 2, 1).reshape(nb * BLOCK_N, -1)[:n]
    return s, (None if z is None else z.contiguous())


def to_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, K] codes -> [N, ceil(K/2)] bytes, k even in the low nibble."""
    n, k = q.shape
    qp = torch.zeros(n, _round_up(k, 2), dtype=torch.uint8)
    qp[:, :k] = q
    return (qp[:, 0::2] | (qp[:, 1::2] << 4)).contiguous()


def from_nibbles(b: torch.Tensor, k: int) -> torch.Tensor:
    q = torch.stack([b & 0x0F, b >> 4], dim=2).reshape(b.shape[0], -1)
    return q[:, :k].contiguous()


class Int4Format(WeightFormat):
    """int4 group-wise weights; "w4" runs them against float activations (``tersor::gemm_w4``),
    "w4a8" against dynamic int8 activations (``tersor::gemm_w4a8``): act_bits 8, or 16 for
    each row as two int8 planes (csrc/quant_act/quant_act.h "Two planes": within amax / 64516
    of the float row) through the same kernel. An input permutation (``perm``: GPTQ
    act-order) is applied to x once per call, so the groups stay contiguous."""

    widens_by_rows = True  # bf16 / fp16 weights: no whole fp32 copy

    tensor_names = ("codes", "scale", "zero", "perm", "input_scale")
    input_tensor_names = ("perm", "input_scale")

    def __init__(
        self,
        q,
        scale,
        zero,
        group_size: int,
        act_int8: bool = False,
        symmetric: bool = False,
        perm: Optional[torch.Tensor] = None,
        what: str = "layer",
        nibbles_k: Optional[int] = None,
        act_bits: int = 8,
    ):
        """q uint8 [N, K], scale fp16 [N, ngroups], zero uint8 or None (symmetric: z = 8),
        group_size the configured one (32, 64, 128 or -1). nibbles_k = K: q is the canonical
        nibble bytes [N, ceil(K/2)] instead (what checkpoints hold). act_bits: 8 or 16, int8
        activations only."""
        n, k = q.shape if nibbles_k is None else (q.shape[0], nibbles_k)
        super().__init__(n, k)
        self.act_int8, self.symmetric, self.group_size = act_int8, symmetric, group_size
        self.act_bits = check_act_bits(act_int8, act_bits, what)
        self.scheme = "w4a8" if act_int8 else "w4"
        self.G = effective_group_size(k, group_size, what)
        if symmetric and zero is not None:
            if not bool((zero == 8).all()):
                raise ValueError(f"{what}: symmetric layer given zero points != 8")
            zero = None
        if not symmetric and zero is None:  # a symmetric import into an asymmetric layer
            zero = torch.full(scale.shape, 8, dtype=torch.uint8)
        kp = self.G * scale.shape[1]
        self.codes = codes_to_tiles(q, n, k, kp, nibbles=nibbles_k is not None)
        self.scale, self.zero = pack_group_params(scale, zero)
        if perm is not None:  # the kernels' row gather reads x[perm[k]] unchecked
            perm = perm.to(torch.int64).contiguous()
            if perm.shape != (k,) or not torch.equal(perm.sort().values, torch.arange(k)):
                raise ValueError(
                    f"{what}: the act-order input permutation must hold each of 0..{k - 1} "
                    f"once, got {perm.dtype} {tuple(perm.shape)}"
                )
        self.perm = perm
        self._finish()

    @classmethod
    def from_float(cls, weight, config, *, what="layer", score=None):
        # quantize_int4 checks the group ranges, and widens halves a row block at a time
        check_float_weight(weight, what, finite=False, halves=True)
        a8, sym, gs = config.scheme == "w4a8", config.symmetric, config.group_size
        bits = getattr(config, "act_bits", 8)
        n, k = weight.shape
        blocks = row_blocks(n, k, BLOCK_N)
        if len(blocks) == 1:
            q, s, z, _ = quantize_int4(weight, gs, sym, what)
            return cls(q, s, z, gs, a8, sym, what=what, act_bits=bits)
        # large layers: quantized and packed a row block at a time into the final tensors
        # (every packed tensor is row-block-major), so the peak stays near the weight itself
        parts = None
        for r0, r1 in blocks:
            q, s, z, g = quantize_int4(weight[r0:r1], gs, sym, what)
            p = pack_int4(q, s, None if sym else z, g)
            if parts is None:
                nb = _round_up(n, BLOCK_N) // BLOCK_N
                parts = [
                    None if t is None else huge_pages.empty((nb, *t.shape[1:]), t.dtype)
                    for t in (p.codes, p.scale, p.zero)
                ]
            for whole, t in zip(parts, (p.codes, p.scale, p.zero)):
                if t is not None:
                    whole[r0 // BLOCK_N : r0 // BLOCK_N + t.shape[0]] = t
        fmt = cls.__new__(cls)
        WeightFormat.__init__(fmt, n, k)
        fmt.act_int8, fmt.symmetric, fmt.group_size, fmt.G = a8, sym, gs, g
        fmt.act_bits = check_act_bits(a8, bits, what)
        fmt.scheme = "w4a8" if a8 else "w4"
        fmt.codes, fmt.scale, fmt.zero = parts
        fmt.perm = None
        return fmt._finish()

    @classmethod
    def empty(
        cls,
        out_features,
        in_features,
        act_int8=False,
        group_size=128,
        symmetric=False,
        act_order=False,
        input_scaled=False,
        act_bits=8,
    ):
        g = effective_group_size(in_features, group_size)
        ng = -(-in_features // g)
        return cls(
            torch.zeros(out_features, in_features, dtype=torch.uint8),
            torch.zeros(out_features, ng, dtype=torch.float16),
            None if symmetric else torch.zeros(out_features, ng, dtype=torch.uint8),
            group_size,
            act_int8,
            symmetric,
            torch.arange(in_features) if act_order else None,
            act_bits=act_bits,
        ).with_input_scale(torch.ones(in_features) if input_scaled else None)

    def options(self):
        opts = {"group_size": self.group_size}
        if self.symmetric:
            opts["symmetric"] = True
        if self.perm is not None:
            opts["act_order"] = True
        if self.act_int8:
            opts["act_int8"] = True
        if self.act_bits != 8:
            opts["act_bits"] = self.act_bits
        if self.input_scale is not None:
            opts["input_scaled"] = True
        return opts

    def canonical(self):
        """(q uint8 [N, K], scale fp16 [N, ngroups], zero uint8 [N, ngroups] or None), in the
        stored (act-order) K order."""
        z = None if self.zero is None else self.zero.cpu()
        return unpack_int4(
            self.codes.cpu(), self.scale.cpu(), z, self.out_features, self.in_features
        )

    def state_names(self):
        return (
            ["weight_int4", "weight_scale"]
            + ([] if self.symmetric else ["weight_zero"])
            + (["input_perm"] if self.perm is not None else [])
            + (["input_scale"] if self.input_scale is not None else [])
        )

    def state_dict(self):
        s, z = unpack_group_params(
            self.scale.cpu(), None if self.zero is None else self.zero.cpu(), self.out_features
        )
        q = tiles_to_codes(self.codes.cpu(), self.out_features, self.in_features, nibbles=True)
        out = {"weight_int4": q, "weight_scale": s}
        if z is not None:
            out["weight_zero"] = z
        if self.perm is not None:
            out["input_perm"] = self.perm.cpu().clone()
        return self._input_scale_state(out)

    @classmethod
    def _canonical_args(cls, get, prefix, n, k, group_size, symmetric, act_order, input_scaled):
        """(nibble bytes, scale, zero, perm, input_scale) on the CPU from the canonical
        tensors, or the error message."""
        ng = -(-k // effective_group_size(k, group_size, prefix or "layer"))
        b, s = get("weight_int4"), get("weight_scale")
        z = None if symmetric else get("weight_zero")
        err = (
            expect(prefix, "weight_int4", b, torch.uint8, (n, (k + 1) // 2))
            or expect(prefix, "weight_scale", s, torch.float16, (n, ng))
            or (z is not None and expect(prefix, "weight_zero", z, torch.uint8, (n, ng)))
        )
        if err:
            return err
        if z is not None and z.numel() and int(z.max()) > 15:
            return f"{prefix}weight_zero: values must lie in [0, 15]"
        err = bad_scale(prefix, "weight_scale", s)
        if err:
            return err
        perm = None
        if act_order:
            perm = get("input_perm")
            err = expect(prefix, "input_perm", perm, torch.int64, (k,))
            if err:
                return err
            if not torch.equal(torch.sort(perm.cpu()).values, torch.arange(k)):
                return f"{prefix}input_perm: not a permutation of range({k})"
            perm = perm.cpu()
        xs = cls._read_input_scale(get, prefix, k, input_scaled)
        if isinstance(xs, str):
            return xs
        return b.cpu(), s.cpu(), None if z is None else z.cpu(), perm, xs

    def load_state(self, get, prefix):
        args = self._canonical_args(
            get,
            prefix,
            self.out_features,
            self.in_features,
            self.group_size,
            self.symmetric,
            self.perm is not None,
            self.input_scale is not None,
        )
        if isinstance(args, str):
            return args
        b, s, z, perm, xs = args
        device = self.device
        k = self.in_features
        self.__init__(
            b,
            s,
            z,
            self.group_size,
            self.act_int8,
            self.symmetric,
            perm,
            nibbles_k=k,
            act_bits=self.act_bits,
        )
        self.input_scale = xs
        self._apply(lambda t: t.to(device))
        return None

    @classmethod
    def from_state(
        cls,
        get,
        prefix,
        out_features,
        in_features,
        act_int8=False,
        group_size=128,
        symmetric=False,
        act_order=False,
        input_scaled=False,
        act_bits=8,
    ):
        args = cls._canonical_args(
            get, prefix, out_features, in_features, group_size, symmetric, act_order, input_scaled
        )
        if isinstance(args, str):
            return args
        b, s, z, perm, xs = args
        what = prefix or "layer"
        fmt = cls(
            b,
            s,
            z,
            group_size,
            act_int8,
            symmetric,
            perm,
            what,
            nibbles_k=in_features,
            act_bits=act_bits,
        )
        return fmt.with_input_scale(xs, what)

    @property
    def x_planes(self) -> int:
        """The int8 planes each activation row becomes (the kernels' x_planes): 1 or 2."""
        return 2 if self.act_bits == 16 else 1

    def dequantize(self):
        w = dequant_w4t(
            self.codes, self.scale, self.zero, self.out_features, self.in_features, self.G
        ).t()
        if self.perm is not None:  # columns were stored in act-order
            w = w[:, torch.argsort(self.perm)]
        if self.input_scale is not None:
            w = w * self.input_scale
        return w.contiguous()

    def cpu_runner(self):
        k, perm, xs = self.in_features, self.perm, self.input_scale
        if perm is not None and xs is not None:
            xs = xs[perm]  # linear's order: x * s, then the permutation
        run = cpu_runner_w4(
            self.codes,
            self.scale,
            self.zero,
            self.out_features,
            k,
            self.G,
            self.act_int8,
            xs,
            self.x_planes,
        )
        if perm is None:
            return run

        def run_permuted(x, bias):  # the act-order permutation, then the lean call
            if x.dim() == 0 or x.shape[-1] != k:
                return None
            return run(_gather_columns(x, perm), bias)

        return run_permuted

    def linear(self, x, bias, kernel, row_amax=None):
        xs = self.input_scale
        if self.perm is not None:  # x * s, then the act-order permutation
            x = _gather_columns(x, self.perm)
            xs = None if xs is None else xs[self.perm]
        return linear_w4(
            x,
            self.codes,
            self.scale,
            self.zero,
            bias,
            self.out_features,
            self.G,
            self.act_int8,
            kernel,
            xs,
            row_amax,
            self.x_planes,
        )


ACT_BITS = (8, 16)


def check_act_bits(act_int8: bool, act_bits, what: str) -> int:
    """act_bits as a layer keeps it: 8 or 16 with int8 activations, 8 (unused) with float ones."""
    if act_bits not in ACT_BITS or isinstance(act_bits, bool):
        raise ValueError(f"{what}: act_bits must be one of {ACT_BITS}, got {act_bits!r}")
    if act_bits != 8 and not act_int8:
        raise ValueError(
            f"{what}: act_bits={act_bits} applies to int8 activations (w4a8); float activations "
            f"(w4) are already exact"
        )
    return act_bits


def _gather_columns(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x[..., perm]: natively on the CPU (csrc/repack gather_columns, rows over the threads;
    torch's index_select along the last dimension ran at ~4 GB/s), index_select elsewhere."""
    k = x.shape[-1]
    if not x.is_cpu or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return x.index_select(-1, perm)
    x2 = x.reshape(-1, k)
    if x2.numel() and x2.stride(1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype)
    if y.numel():
        _C.gather_columns(
            x2.data_ptr(),
            x2.shape[0],
            k,
            x2.stride(0),
            perm.data_ptr(),
            y.data_ptr(),
            k,
            x.element_size(),
            torch.get_num_threads(),
        )
    return y


# ---- checkpoint imports -------------------------------------------------------------------


def unpack_int32_nibbles(t: torch.Tensor, order=range(8)) -> torch.Tensor:
    """int32 [..., c] -> uint8 [..., 8c]; nibble i (bits 4i) becomes element 8c + order[i]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nib = ((t[..., None] >> shifts) & 0xF).to(torch.uint8)  # [..., c, 8] by nibble position
    out = torch.empty_like(nib)
    out[..., list(order)] = nib
    return out.reshape(*t.shape[:-1], t.shape[-1] * 8)


def _check(cond, msg):
    if not cond:
        raise ValueError(msg)


def from_gptq(qweight, qzeros, scales, g_idx=None, *, version: int = 1, what: str = "GPTQ"):
    """GPTQ 4-bit tensors -> (q [N, K], scale fp16 [N, ngroups], zero [N, ngroups], G, perm).

    qweight int32 [K/8, N] (8 codes along K, k = 8r + i in bits 4i), qzeros int32
    [ngroups, N/8] (along N), scales [ngroups, N], g_idx int32 [K] (group of each k; any
    permutation with act-order / desc_act). version=1 stores zero - 1 (AutoGPTQ's v1).
    ``perm`` is None for ordered groups, else the input permutation that makes groups
    contiguous: the layer computes x[..., perm] @ W[:, perm]^T, which is the same product.
    """
    _check(
        qweight.dtype == torch.int32 and qweight.dim() == 2,
        f"{what}: qweight must be int32 [K/8, N], got {qweight.dtype} {tuple(qweight.shape)}",
    )
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    _check(
        scales.dim() == 2
        and scales.shape[1] == n
        and scales.dtype in (torch.float16, torch.float32, torch.bfloat16),
        f"{what}: scales must be float [ngroups, {n}], got {scales.dtype} {tuple(scales.shape)}",
    )
    ngroups = scales.shape[0]
    _check(
        ngroups > 0 and k % ngroups == 0,
        f"{what}: {ngroups} scale rows do not divide K={k} into equal groups",
    )
    g = k // ngroups
    _check(
        qzeros.dtype == torch.int32 and tuple(qzeros.shape) == (ngroups, n // 8) and n % 8 == 0,
        f"{what}: qzeros must be int32 [{ngroups}, {n // 8}], got {qzeros.dtype} "
        f"{tuple(qzeros.shape)}",
    )
    _check(version in (1, 2), f"{what}: version must be 1 or 2, got {version}")
    _check(
        g in (32, 64, 128) or ngroups == 1,
        f"{what}: group size {g} is not supported (32, 64, 128 or per-channel)",
    )
    q = unpack_int32_nibbles(qweight.t()).view(n, k // 8, 8).reshape(n, k)  # [N, K]
    zero = unpack_int32_nibbles(qzeros)  # [ngroups, N]
    if version == 1:
        zero = (zero + 1) & 0x0F
    perm = perm_from_g_idx(g_idx, k, g, what)
    if perm is not None:
        q = q[:, perm]
    scale = fp16_scales(scales.t(), what)
    return q.contiguous(), scale, zero.t().contiguous(), (g if ngroups > 1 else k), perm


def perm_from_g_idx(g_idx, k: int, g: int, what: str):
    """The input permutation that makes act-order groups contiguous (None when g_idx is None or
    already in order): g_idx [K] gives the group of each input k; every group must hold g."""
    if g_idx is None:
        return None
    ngroups = k // g
    _check(
        g_idx.dim() == 1 and g_idx.shape[0] == k and not g_idx.is_floating_point(),
        f"{what}: g_idx must be an integer tensor [{k}], got {g_idx.dtype} {tuple(g_idx.shape)}",
    )
    gi = g_idx.to(torch.int64)
    _check(
        bool(((gi >= 0) & (gi < ngroups)).all()), f"{what}: g_idx values must lie in [0, {ngroups})"
    )
    if torch.equal(gi, torch.arange(k) // g):
        return None
    _check(
        bool((torch.bincount(gi, minlength=ngroups) == g).all()),
        f"{what}: g_idx must put exactly {g} inputs in every group",
    )
    return torch.argsort(gi, stable=True)


def fp16_scales(scales: torch.Tensor, what: str) -> torch.Tensor:
    """Checkpoint scales (fp16 / bf16 / fp32) -> the fp16 the int4 format keeps; refuses
    non-finite and negative values (GPTQ / AWQ / compressed-tensors scales are a range over
    15 steps, >= 0; tersor's own loader refuses them too) and ones fp16 cannot hold."""
    _check(
        scales.dtype in (torch.float16, torch.bfloat16, torch.float32),
        f"{what}: scales must be float16 / bfloat16 / float32, got {scales.dtype}",
    )
    _check(
        bool(torch.isfinite(scales).all()) and not bool((scales < 0).any()),
        f"{what}: scales hold NaN, Inf or negative values",
    )
    s = scales.to(torch.float16)
    _check(bool(torch.isfinite(s).all()), f"{what}: scales exceed float16's range (65504)")
    return s.contiguous()


def from_awq(qweight, qzeros, scales, group_size: int = 128, *, what: str = "AWQ"):
    """AWQ 4-bit tensors -> (q [N, K], scale fp16 [N, ngroups], zero [N, ngroups], G).

    qweight int32 [K, N/8] packed along N in AWQ's order [0, 2, 4, 6, 1, 3, 5, 7], qzeros int32
    [K/G, N/8] likewise, scales [K/G, N]; W = (q - z) * s.
    """
    _check(
        qweight.dtype == torch.int32 and qweight.dim() == 2,
        f"{what}: qweight must be int32 [K, N/8], got {qweight.dtype} {tuple(qweight.shape)}",
    )
    k, n = qweight.shape[0], qweight.shape[1] * 8
    _check(
        group_size in (32, 64, 128) and k % group_size == 0,
        f"{what}: group_size {group_size} must be 32, 64 or 128 and divide K={k}",
    )
    ngroups = k // group_size
    _check(
        tuple(scales.shape) == (ngroups, n) and scales.is_floating_point(),
        f"{what}: scales must be float [{ngroups}, {n}], got {scales.dtype} {tuple(scales.shape)}",
    )
    _check(
        qzeros.dtype == torch.int32 and tuple(qzeros.shape) == (ngroups, n // 8),
        f"{what}: qzeros must be int32 [{ngroups}, {n // 8}], got {qzeros.dtype} "
        f"{tuple(qzeros.shape)}",
    )
    q = unpack_int32_nibbles(qweight, AWQ_ORDER).t().contiguous()  # [N, K]
    zero = unpack_int32_nibbles(qzeros, AWQ_ORDER).t().contiguous()  # [N, ngroups]
    return q, fp16_scales(scales.t(), what), zero, group_size


def shuffle_w4_mma(q: torch.Tensor) -> torch.Tensor:
    """Canonical codes [N, K] (K % 16 == 0) -> the CUDA W4 kernel's words (gemm_w4_cuda.cu):
    int32 [ceil(N/32), K/16, 2, 32], lane (g, t) of tile pair p holding, at nibble i,

        v0 = q[c0][k0], v4 = q[c0][k0+1], v1 = q[c0][k0+8], v5 = q[c0][k0+9]   c0 = 16p + g
        v2 = q[c1][k0], v6 = q[c1][k0+1], v3 = q[c1][k0+8], v7 = q[c1][k0+9]   c1 = c0 + 8

    (k0 = 16 kb + 2t): the mma.m16n8k16 B fragments of two 8-column tiles in one word. Columns
    past N are zero codes."""
    n, k = q.shape
    if k % 16:
        raise ValueError(f"shuffle_w4_mma: K={k} must be a multiple of 16")
    np_ = -(-n // 32) * 32
    qp = torch.zeros(np_, k, dtype=torch.int64)
    qp[:n] = q.to(torch.int64)
    t4 = qp.view(np_ // 32, 2, 2, 8, k // 16, 2, 8)  # [cb][p][h][g][kb][hi8][kk]
    # t4[cb, p, h, g, kb, hi8, kk] = q[cb*32 + 16p + 8h + g][16 kb + 8 hi8 + kk]
    lanes = []
    for t in range(4):
        v = lambda h, hi8, d: t4[:, :, h, :, :, hi8, 2 * t + d]  # [cb][p][g][kb]
        word = (
            v(0, 0, 0)
            | v(0, 1, 0) << 4
            | v(1, 0, 0) << 8
            | v(1, 1, 0) << 12
            | v(0, 0, 1) << 16
            | v(0, 1, 1) << 20
            | v(1, 0, 1) << 24
            | v(1, 1, 1) << 28
        )
        lanes.append(word)
    w = torch.stack(lanes, dim=-1)  # [cb][p][g][kb][t]
    w = w.permute(0, 3, 1, 2, 4).reshape(np_ // 32, k // 16, 2, 32)  # lane = 4 g + t
    return (w - ((w >> 31) << 32)).to(torch.int32).contiguous()  # two's complement view
