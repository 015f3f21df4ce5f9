"""2:4 semi-structured sparse fp32 weights (at most 2 nonzeros in every 4 consecutive k).

Canonical (state_dict) form, hardware-neutral::

    weight_values  float32 [N, K/2]   the two kept values of each group of 4, in k order
    weight_meta    uint8   [N, K/4]   their positions: p0 | p1 << 2, 0 <= p0 < p1 <= 3

Kernel form (csrc/common/formats.h, ``S24Group``), built once at conversion::

    values[Np/16][K/4][2][16] fp32    block of 16 columns, group g: lane c holds column c's
                                      value at p0 (first 16) and at p1 (next 16)
    meta  [Np/16][K4p][16] uint8      lane c: p0 | p1 << 2; K4p = K/4 rounded up to 4

K is padded to a multiple of 4 with zeros (a zero tail satisfies the pattern).

int8 values (2:4 + W8A8): canonical ``weight_values`` int8 [N, K/2] (symmetric per output
channel, in [-127, 127]), ``weight_meta`` as above, ``weight_scale`` float32 [N]. Kernel form
(``S24I8Tile``): two groups (8 k) of 16 columns per 64-byte tile, one VNNI lane per column::

    values[Np/16][K8][16][4] int8     lane c: v0(g) v1(g) v0(g+1) v1(g+1),  g = 2 * k8
    meta  [Np/16][K8][16]   uint8     lane c: meta(g) | meta(g+1) << 4
    colsum[Np] int32 (sum of the kept values), scale[Np] float32
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
    row_blocks,
    row_sums_int32,
)
from tersor.ops._common import rows_window
from tersor.ops.gemm_w8a8 import cpu_runner_w8a8, linear_w8a8
from tersor.ops.spmm_24 import cpu_runner_24, linear_24, linear_24_w8a8

BLOCK_N = 16


def dense_from_rows_24_int8(n: int, k: int):
    """Rows from which a 2:4 int8 layer of n x k runs a dense W8A8 copy, decided at conversion
    for the CPU active then (as formats/sparse_csr.py does for unstructured int8). With AMX
    tiles the dense kernel wins from a few rows: 2:4 time / dense time, AMX Xeon (family 6 model
    167), 2 threads, 2026-12-06, K x N:
                          1     4     6     8     12    16
      4096x4096           0.61  0.62  0.78  0.81  1.05  1.20
      2048x8192 8192x2048 0.63  0.66  0.83  0.89  1.22  1.32     (the slower of the two)
      2048x512 1536x384   0.87  0.81  1.02  1.14  1.49  1.79     (the slower of the two)
      384x1536 512x2048   1.08  1.22  1.41  1.56  2.08  2.33     (the slower of the two)
    so from 10 rows above INT8_24_SMALL weights, from 5 at or below. With VNNI alone the two
    run level (0.96-1.10x from 8 rows, the closing notes): no copy."""
    from tersor._backend import cpu_info
    from tersor.configs import INT8_24_DENSE_FROM_ROWS, INT8_24_SMALL

    if cpu_info()["active"] != "amx":
        return None
    return INT8_24_DENSE_FROM_ROWS[n * k > INT8_24_SMALL]


@dataclass(frozen=True)
class Packed24:
    values: torch.Tensor  # float32 [Np/16, K/4, 2, 16]
    meta: torch.Tensor  # uint8 [Np/16, K4p, 16]
    out_features: int
    in_features: int

    @property
    def nbytes(self) -> int:
        return self.values.numel() * 4 + self.meta.numel()


@dataclass(frozen=True)
class Packed24Int8:
    values: torch.Tensor  # int8 [Np/16, K8, 16, 4]
    meta: torch.Tensor  # uint8 [Np/16, K8, 16]
    colsum: torch.Tensor  # int32 [Np]
    scale: torch.Tensor  # float32 [Np]
    out_features: int
    in_features: int

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (self.values, self.meta, self.colsum, self.scale)
        )


def _groups(w: torch.Tensor) -> torch.Tensor:
    """w [N, K] -> [N, K/4, 4] (a view when 4 divides K and w is contiguous; else padded)."""
    n, k = w.shape
    if k % 4 == 0 and w.is_contiguous():
        return w.view(n, k // 4, 4)
    kp = (k + 3) // 4 * 4
    wp = torch.zeros(n, kp, dtype=w.dtype)
    wp[:, :k] = w
    return wp.view(n, kp // 4, 4)


def _meta_of_pattern() -> torch.Tensor:
    """uint8 [16]: a group's nonzero pattern (bit p: slot p nonzero) -> the meta byte that
    keeps it, p0 | p1 << 2 (the nonzeros, topped up with the lowest zero slots); 255 where
    more than 2 are nonzero."""
    lut = torch.full((16,), 255, dtype=torch.uint8)
    for bits in range(16):
        nz = [p for p in range(4) if bits >> p & 1]
        if len(nz) <= 2:
            p0, p1 = sorted(nz + [p for p in range(4) if p not in nz][: 2 - len(nz)])
            lut[bits] = p0 | p1 << 2
    return lut


_META_OF_PATTERN = _meta_of_pattern()


def _group_meta(g: torch.Tensor) -> torch.Tensor:
    """Groups [N, G, 4] -> meta uint8 [N, G] (255: more than 2 nonzeros). Byte arithmetic
    and a 16-entry table: an argsort of every group took ~5x as long."""
    nz = (g != 0).view(torch.uint8)
    bits = nz[..., 0] | (nz[..., 1] << 1) | (nz[..., 2] << 2) | (nz[..., 3] << 3)
    return _META_OF_PATTERN[bits.long()]


def prune_24(weight: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the 2 largest-|score| entries of every group of 4 along K that holds more than 2
    nonzeros (score: |w| by default, or e.g. Wanda's |w| * ||x||; ties to the lower position, a
    NaN score highest); groups of at most 2 nonzeros stay as they are. Returns the pruned float
    weight. The reference of the conversion's native pass (csrc/repack s24_prune_to_tiles)."""
    w = weight.detach().to(torch.float32)
    s = _groups(w.abs() if score is None else score.detach().to(torch.float32).abs())
    order = s.sort(dim=2, descending=True, stable=True).indices[..., :2]
    keep = torch.zeros_like(s, dtype=torch.bool).scatter_(2, order, True)
    g = _groups(w)
    keep |= (g != 0).sum(dim=2, keepdim=True) <= 2
    return (g * keep).reshape(w.shape[0], -1)[:, : w.shape[1]].contiguous()


def mask_24(module) -> torch.Tensor:
    """The 2:4 keep-mask of an nn.Linear or nn.Conv2d weight, in the weight's own shape: for a
    convolution the groups of 4 run along the GEMM's K order (kh, kw, C_in), as QConv2d packs it.
    Multiply the weight by it after every optimizer step to fine-tune with the pattern fixed."""
    w = module.weight.detach()
    if w.dim() == 4:  # [C_out, C_in, kh, kw] -> [C_out, kh * kw * C_in]
        w2 = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
        keep = prune_24(torch.ones_like(w2), score=w2) != 0
        return keep.view(w.shape[0], w.shape[2], w.shape[3], w.shape[1]).permute(0, 3, 1, 2)
    return prune_24(torch.ones_like(w), score=w) != 0


def is_24(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive k holds at most 2 nonzeros."""
    return not bool((_group_meta(_groups(weight)) == 255).any())


def compress_24(weight: torch.Tensor):
    """A 2:4 float weight [N, K] -> canonical (values [N, K/2], meta uint8 [N, K/4])."""
    g = _groups(weight.detach().to(torch.float32))
    meta = _group_meta(g)
    if bool((meta == 255).any()):
        raise ValueError(
            "weight does not satisfy the 2:4 pattern (more than 2 nonzeros in a "
            "group of 4 along K); prune it first (tersor.formats.sparse24.prune_24)"
        )
    pos = torch.stack([meta & 3, meta >> 2], dim=2).long()
    values = torch.gather(g, 2, pos)
    return values.reshape(weight.shape[0], -1).contiguous(), meta


def decompress_24(values: torch.Tensor, meta: torch.Tensor, k: int) -> torch.Tensor:
    """Canonical -> dense float32 [N, K] (the reference)."""
    n, g = meta.shape
    dense = torch.zeros(n, g, 4)
    pos = torch.stack([meta & 3, meta >> 2], dim=2).to(torch.int64)
    dense.scatter_(2, pos, values.view(n, g, 2))
    return dense.view(n, -1)[:, :k].contiguous()


def pack_24(values: torch.Tensor, meta: torch.Tensor, k: int) -> Packed24:
    n, g = meta.shape
    np_ = (n + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    g4 = (g + 3) // 4 * 4
    vk = torch.zeros(np_ // BLOCK_N, g, 2, BLOCK_N)
    # padding rows / groups: positions (0, 1), values 0
    mk = torch.full((np_ // BLOCK_N, g4, BLOCK_N), 1 << 2, dtype=torch.uint8)
    for r0, r1 in row_blocks(n, 2 * g, BLOCK_N):  # straight into the kernel form, no full copy
        b0, b1 = r0 // BLOCK_N, -(-r1 // BLOCK_N)
        pad = (b1 - b0) * BLOCK_N - (r1 - r0)
        v = values[r0:r1].reshape(r1 - r0, g, 2)
        m = meta[r0:r1]
        if pad:
            v = torch.cat([v, v.new_zeros(pad, g, 2)])
            m = torch.cat([m, m.new_full((pad, g), 1 << 2)])
        vk[b0:b1] = v.view(b1 - b0, BLOCK_N, g, 2).permute(0, 2, 3, 1)
        mk[b0:b1, :g] = m.view(b1 - b0, BLOCK_N, g).permute(0, 2, 1)
    return Packed24(vk, mk, n, k)


def unpack_24(values: torch.Tensor, meta: torch.Tensor, n: int, k: int):
    nb, g, _, _ = values.shape
    v = values.permute(0, 3, 1, 2).reshape(nb * BLOCK_N, g * 2)[:n]
    m = meta.permute(0, 2, 1).reshape(nb * BLOCK_N, -1)[:n, :g]
    return v.contiguous(), m.contiguous()


def quantize_24_int8(weight: torch.Tensor):
    """A 2:4 float weight [N, K] -> canonical int8 (values int8 [N, K/2], meta, scale [N]):
    symmetric per-channel scales from the kept values (the pruned zeros stay exactly zero)."""
    from tersor.formats.int8 import quantize_per_channel_int8

    q, scale = quantize_per_channel_int8(weight)
    values, meta = compress_24(q.to(torch.float32))
    return values.to(torch.int8), meta, scale


def pack_24_int8(
    values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor, k: int
) -> Packed24Int8:
    n, g = meta.shape
    np_ = (n + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    k8 = (g + 1) // 2
    v = torch.zeros(np_, 2 * k8, 2, dtype=torch.int8)
    v[:n, :g] = values.view(n, g, 2)
    m = torch.full((np_, 2 * k8), 1 << 2, dtype=torch.uint8)  # padding: positions (0, 1)
    m[:n, :g] = meta
    m = m.view(np_, k8, 2)
    mk = (m[:, :, 0] | (m[:, :, 1] << 4)).view(np_ // BLOCK_N, BLOCK_N, k8).permute(0, 2, 1)
    vk = v.view(np_ // BLOCK_N, BLOCK_N, k8, 4).permute(0, 2, 1, 3)
    colsum = torch.zeros(np_, dtype=torch.int32)
    colsum[:n] = row_sums_int32(values)
    s = torch.zeros(np_)
    s[:n] = scale
    return Packed24Int8(vk.contiguous(), mk.contiguous(), colsum, s, n, k)


def unpack_24_int8(values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor, n: int, k: int):
    """Kernel form -> canonical (values int8 [N, K/2], meta uint8 [N, K/4], scale [N])."""
    nb, k8 = meta.shape[:2]
    g = (k + 3) // 4
    v = values.permute(0, 2, 1, 3).reshape(nb * BLOCK_N, 4 * k8)[:n, : 2 * g]
    m = meta.permute(0, 2, 1).reshape(nb * BLOCK_N, k8)[:n]
    m = torch.stack([m & 15, m >> 4], dim=2).reshape(n, 2 * k8)[:, :g]
    return v.contiguous(), m.contiguous(), scale[:n].contiguous()


def meta_words_24(meta: torch.Tensor) -> torch.Tensor:
    """Canonical meta uint8 [N, K/4] (K % 32 == 0) -> the CUDA kernel's int32 [N, K/32]: the 8
    nibbles of a k32 step in one word, chunk c at bits 4c .. 4c+3 (mma.sp metadata of a row)."""
    n, g = meta.shape
    if g % 8:
        raise ValueError(f"meta_words_24: K={4 * g} must be a multiple of 32")
    m = meta.to(torch.int64).view(n, g // 8, 8)
    w = (m << (4 * torch.arange(8, device=meta.device))).sum(-1)
    return (w - ((w >> 31) << 32)).to(torch.int32).contiguous()


class Sparse24Format(WeightFormat):
    """2:4 sparse weights along K: fp32 values ("2:4", ``tersor::spmm_24``) or int8 values with
    per-channel scales x dynamic int8 activations ("2:4+w8a8", ``tersor::spmm_24_w8a8``).

    Canonical (state_dict) form: weight_values [N, K/2] (float32, or int8 in [-127, 127]),
    weight_meta uint8 [N, K/4] (p0 | p1 << 2, p0 < p1), weight_scale float32 [N] (int8).

    dense_from_rows (int8 only): from this many rows on, run a dense copy of the int8 weight,
    packed for our dense W8A8 kernel (the same math, the same bits), kept beside the 2:4 form:
    on CPUs with AMX tiles, where the 2:4 VNNI kernel runs 0.4-0.6x the dense one from 16
    rows (``dense_from_rows_24_int8``). Saved as ``_extra_state``."""

    widens_by_rows = True  # bf16 / fp16 weights: no whole fp32 copy

    optional_state_names = ("_extra_state",)
    _INT8_NAMES = (
        "values",
        "meta",
        "colsum",
        "scale",
        "dense_packed",
        "dense_colsum",
        "dense_scale",
    )

    def __init__(self, values, meta, in_features: int, scale=None, dense_from_rows=None):
        super().__init__(meta.shape[0], in_features)
        self.int8 = scale is not None
        self.scheme = "2:4+w8a8" if self.int8 else "2:4"
        if self.int8:
            self.tensor_names = self._INT8_NAMES
            p = pack_24_int8(values, meta, scale, in_features)
            self.colsum, self.scale = p.colsum, p.scale
        else:
            self.tensor_names = ("values", "meta")
            p = pack_24(values.to(torch.float32), meta, in_features)
        self.values, self.meta = p.values, p.meta
        self._keep_dense_copy(dense_from_rows)
        self._finish()

    def _keep_dense_copy(self, rows) -> None:
        """int8 layers: the dense W8A8 copy run from `rows` rows on (None: no copy), built a
        16-row block at a time from the packed 2:4 form."""
        self.dense_from_rows = rows if self.int8 else None
        self.dense_packed = self.dense_colsum = self.dense_scale = None
        if self.dense_from_rows is None:
            return
        from tersor.formats.int8 import pack_int8

        n, k = self.out_features, self.in_features
        v, m, s = self.canonical()
        q = torch.empty(n, k, dtype=torch.int8)
        for r0, r1 in row_blocks(n, k, BLOCK_N):
            q[r0:r1] = decompress_24(v[r0:r1].to(torch.float32), m[r0:r1], k).to(torch.int8)
        d = pack_int8(q, s)
        self.dense_packed, self.dense_colsum, self.dense_scale = d.packed, d.colsum, d.scale

    @classmethod
    def from_float(cls, weight, config, *, what="layer", score=None):
        """Every group of 4 along K with more than 2 nonzeros pruned to the 2 of largest
        |score| (|w| by default; prune_24's rule), compressed and packed into the kernel tiles
        by one native pass (csrc/repack s24_prune_to_tiles), a row block at a time: the fp32
        temporaries of a bf16 / fp16 weight stay one block's."""
        w = weight.detach()
        check_float_weight(w, what, finite=False, halves=True)  # NaN / Inf: the pass finds them
        n, k = w.shape
        if score is not None and tuple(score.shape) != (n, k):
            raise ValueError(
                f"{what}: score must be [{n}, {k}] like the weight, got {tuple(score.shape)}"
            )
        if n == 0:
            return cls._by_row_blocks(n, k, None, int8=False)
        g, nb = (k + 3) // 4, -(-n // BLOCK_N)
        values = huge_pages.empty((nb, g, 2, BLOCK_N), torch.float32)
        meta = huge_pages.empty((nb, (g + 3) // 4 * 4, BLOCK_N), torch.uint8)
        for r0, r1 in row_blocks(n, k, BLOCK_N):  # fp32 temporaries of one block (halves)
            wb = w[r0:r1].to(device="cpu", dtype=torch.float32).contiguous()
            sb = None if score is None else score[r0:r1].to("cpu", torch.float32).contiguous()
            b0 = r0 // BLOCK_N
            nonfinite, dense = _C.s24_prune_to_tiles(
                wb.data_ptr(),
                0 if sb is None else sb.data_ptr(),
                k,
                k,
                values[b0:].data_ptr(),
                meta[b0:].data_ptr(),
                r1 - r0,
                k,
                bool(config.prune),  # a method name prunes too
                torch.get_num_threads(),
            )
            if nonfinite >= 0:
                raise ValueError(f"{what}: weight holds NaN or Inf; cannot convert it")
            if dense >= 0:
                raise ValueError(
                    f"{what}: weight is not 2:4 sparse (row {r0 + dense}) and "
                    f"Sparse24Config(prune=False) forbids pruning it"
                )
        return cls._of_tiles(n, k, (values, meta), int8=False)

    @classmethod
    def _by_row_blocks(cls, n: int, k: int, packed_rows, int8: bool) -> "Sparse24Format":
        """The layer packed a whole number of its 16-row blocks at a time straight into the
        kernel tensors (packed_rows(r0, r1): a Packed24 / Packed24Int8 of rows r0:r1): the
        canonical form and whole-weight temporaries are never held beside the packed ones."""
        if n == 0:  # nothing to pack: the constructor's empty tensors
            g = (k + 3) // 4
            values = torch.empty(0, 2 * g, dtype=torch.int8 if int8 else torch.float32)
            return cls(
                values, torch.empty(0, g, dtype=torch.uint8), k, torch.empty(0) if int8 else None
            )
        names = cls._INT8_NAMES[:4] if int8 else ("values", "meta")
        nb, parts = -(-n // BLOCK_N), None
        for r0, r1 in row_blocks(n, k, BLOCK_N):
            got = [getattr(packed_rows(r0, r1), t) for t in names]
            if parts is None:  # values / meta: per 16-row panel; colsum / scale: per row, padded
                parts = [huge_pages.empty((nb, *t.shape[1:]), t.dtype) for t in got[:2]]
                parts += [torch.empty(nb * BLOCK_N, dtype=t.dtype) for t in got[2:]]
            b0, b1 = r0 // BLOCK_N, r0 // BLOCK_N + got[0].shape[0]
            parts[0][b0:b1], parts[1][b0:b1] = got[0], got[1]
            for whole, t in zip(parts[2:], got[2:]):
                whole[b0 * BLOCK_N : b1 * BLOCK_N] = t
        return cls._of_tiles(n, k, parts, int8)

    @classmethod
    def _of_tiles(cls, n: int, k: int, parts, int8: bool) -> "Sparse24Format":
        """The format of its kernel tensors: (values, meta), plus (colsum, scale) for int8."""
        fmt = cls.__new__(cls)
        WeightFormat.__init__(fmt, n, k)
        fmt.int8, fmt.scheme = int8, "2:4+w8a8" if int8 else "2:4"
        fmt.tensor_names = cls._INT8_NAMES if int8 else ("values", "meta")
        for name, t in zip(fmt.tensor_names, parts):
            setattr(fmt, name, t)
        fmt._keep_dense_copy(dense_from_rows_24_int8(n, k) if int8 else None)
        return fmt._finish()

    @classmethod
    def empty(cls, out_features, in_features, int8=False):
        values, meta = compress_24(torch.zeros(out_features, in_features))
        if int8:
            return cls(values.to(torch.int8), meta, in_features, torch.zeros(out_features))
        return cls(values, meta, in_features)

    def options(self):
        return {"int8": True} if self.int8 else {}

    def canonical(self):
        """(values [N, K/2], meta uint8 [N, K/4]) for fp32, plus scale [N] for int8."""
        n, k = self.out_features, self.in_features
        if self.int8:
            return unpack_24_int8(self.values.cpu(), self.meta.cpu(), self.scale.cpu(), n, k)
        return unpack_24(self.values.cpu(), self.meta.cpu(), n, k)

    def state_names(self):
        return ["weight_values", "weight_meta"] + (["weight_scale"] if self.int8 else [])

    def state_dict(self):
        out = dict(zip(self.state_names(), self.canonical()))
        if self.int8:
            out["_extra_state"] = {"dense_from_rows": self.dense_from_rows}
        return out

    def load_state(self, get, prefix):
        n, k = self.out_features, self.in_features
        g = (k + 3) // 4
        v, m = get("weight_values"), get("weight_meta")
        if tuple(v.shape) != (n, 2 * g) or tuple(m.shape) != (n, g):
            return (
                f"{prefix}weight_values/weight_meta: expected {(n, 2 * g)} / {(n, g)}, got "
                f"{tuple(v.shape)} / {tuple(m.shape)}"
            )
        if m.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            return f"{prefix}weight_meta: expected integer positions, got {m.dtype}"
        if bool(((m & 3) >= (m >> 2)).any()) or bool((m > 15).any()) or bool((m < 0).any()):
            return f"{prefix}weight_meta: positions must satisfy p0 < p1 <= 3"
        scale = None
        if self.int8:
            scale = get("weight_scale")
            if (
                v.dtype != torch.int8
                or tuple(scale.shape) != (n,)
                or int(v.min()) < -127
                or bad_scale(prefix, "weight_scale", scale)
            ):
                return (
                    f"{prefix}weight_values/weight_scale: expected int8 values in "
                    f"[-127, 127] and a float32 scale [{n}]"
                )
            scale = scale.cpu().to(torch.float32)
        extra = get("_extra_state")
        rows = self.dense_from_rows if extra is None else extra.get("dense_from_rows")
        if rows is not None and (type(rows) is not int or rows < 1):
            return (
                f"{prefix}_extra_state: dense_from_rows must be None or a positive int, got "
                f"{rows!r}"
            )
        device = self.device
        self.__init__(
            v.cpu() if self.int8 else v.cpu().to(torch.float32),
            m.cpu().to(torch.uint8),
            k,
            scale,
            rows,
        )
        self._apply(lambda t: t.to(device))
        return None

    def dequantize(self):
        """float32 [N, K] (int8: the dequantized values)."""
        c = self.canonical()
        w = decompress_24(c[0].to(torch.float32), c[1], self.in_features)
        return w * c[2][:, None] if self.int8 else w

    def with_int8_values(self, config, solved=None):
        """Per-channel int8 values at the same positions: the fp32 tiles quantized straight
        into int8 tiles in one native pass (csrc/repack s24_tiles_to_int8; quantize_24_int8
        of the fp32 layer is its reference), or GPTQ's `solved` (q, scale) packed a 16-row
        block at a time (compress_24's temporaries of a whole weight are ~10x it)."""
        n, k = self.out_features, self.in_features
        if solved is not None or n == 0:

            def packed_rows(r0, r1):
                v, m = compress_24(solved[0][r0:r1].to(torch.float32))
                return pack_24_int8(v.to(torch.int8), m, solved[1][r0:r1], k)

            return Sparse24Format._by_row_blocks(n, k, packed_rows, int8=True)
        nb, k8 = self.values.shape[0], ((k + 3) // 4 + 1) // 2
        values, meta = self.values.cpu().contiguous(), self.meta.cpu().contiguous()
        parts = (
            huge_pages.empty((nb, k8, BLOCK_N, 4), torch.int8),
            huge_pages.empty((nb, k8, BLOCK_N), torch.uint8),
            torch.empty(nb * BLOCK_N, dtype=torch.int32),
            torch.empty(nb * BLOCK_N),
        )
        nonfinite = _C.s24_tiles_to_int8(
            values.data_ptr(),
            meta.data_ptr(),
            *(t.data_ptr() for t in parts),
            n,
            k,
            torch.get_num_threads(),
        )
        if nonfinite >= 0:
            raise ValueError(f"2:4 values of row {nonfinite} hold NaN or Inf; cannot quantize them")
        return Sparse24Format._of_tiles(n, k, parts, int8=True)

    @property
    def density(self) -> float:
        """Fraction of the weights that are nonzero (at most 0.5)."""
        kept = int(self.values.count_nonzero())  # the padding holds zeros: no unpacked copy
        return kept / max(1, self.out_features * self.in_features)

    def describe(self):
        note = f"density {self.density:.3f}, kernel spmm_24{'_w8a8' if self.int8 else ''}"
        if self.dense_from_rows is not None:
            extra = sum(
                t.numel() * t.element_size()
                for t in (self.dense_packed, self.dense_colsum, self.dense_scale)
            )
            note += (
                f"; dense W8A8 from {self.dense_from_rows} rows (the 2:4 kernel loses there; "
                f"+{extra / 2**20:.1f} MiB copy)"
            )
        return note

    def cpu_runner(self):
        n, k = self.out_features, self.in_features
        run = cpu_runner_24(
            self.values, self.meta, n, k, *((self.colsum, self.scale) if self.int8 else ())
        )
        if self.dense_from_rows is None:
            return run
        d = cpu_runner_w8a8(self.dense_packed, self.dense_colsum, self.dense_scale, n, k)
        return rows_window(run, d, k, self.dense_from_rows)

    def linear(self, x, bias, kernel, row_amax=None):
        rows = self.dense_from_rows
        if rows is not None and x.numel() // max(x.shape[-1], 1) >= rows:
            d = (self.dense_packed, self.dense_colsum, self.dense_scale)
            return linear_w8a8(x, *d, bias, self.out_features, kernel, None, row_amax)
        if self.int8:
            return linear_24_w8a8(
                x,
                self.values,
                self.meta,
                self.colsum,
                self.scale,
                bias,
                self.out_features,
                kernel,
                row_amax,
            )
        return linear_24(x, self.values, self.meta, bias, self.out_features, kernel)
