"""compressed-tensors checkpoints (llm-compressor's output, what vLLM loads).

config.json's ``quantization_config``::

    {"quant_method": "compressed-tensors", "format": "int-quantized" | "pack-quantized" | ...,
     "quantization_status": "compressed",
     "config_groups": {"group_0": {"targets": ["Linear"],
                                   "weights": {"num_bits": 4, "type": "int", "symmetric": true,
                                               "strategy": "group" | "channel",
                                               "group_size": 128, "actorder": null},
                                   "input_activations": null | {"num_bits": 8, "type": "int",
                                               "strategy": "token", "dynamic": true}}},
     "ignore": ["lm_head"],
     "sparsity_config": null | {"format": "sparse-24-bitmask", "sparsity_structure": "2:4"}}

A layer ``<p>`` holds, by format (the signed codes q in [-2^(b-1), 2^(b-1)); W = (q - zp) * s)::

    int-quantized    weight int8 [N, K]  weight_scale [N, 1]  (weight_zero_point [N, 1])
    pack-quantized   weight_packed int32 [N, ceil(K/8)]   q + 8 in nibble i of word i // 8
                     (bits 4i), weight_shape [2] = (N, K), weight_scale [N, K/G],
                     weight_zero_point int32 [ceil(N/8), K/G] (asymmetric: zp + 8 packed along
                     N), weight_g_idx [K] (actorder "group")
    sparse-24-bitmask  compressed [N, K/2] (the kept values in k order; int8 when quantized),
                     bitmask uint8 [N, ceil(K/8)] (bit k % 8 of byte k // 8 marks a kept
                     value), shape [2, 1]; with quantization, weight_scale as above

So the int4 codes tersor keeps are the stored nibbles themselves, and its zero points the
stored zp + 8: the import is exact. int8 weights use [-128, 127] (scale = max / 127.5) while
tersor's int8 kernels take [-127, 127] (the AVX2 sign trick): a -128 becomes -127, counted in
the report's note. Static input scales (``input_scale``) are replaced by tersor's dynamic
per-row int8 scales, which are at least as accurate; the note says so.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from tersor.formats import int4 as f4
from tersor.formats.int4 import GROUP_SIZES, Int4Format
from tersor.formats.int8 import Int8Format
from tersor.formats.sparse24 import Sparse24Format
from tersor.importers.base import Imported, Importer

QUANT_FORMATS = ("int-quantized", "pack-quantized", "naive-quantized", "dense", "mixed-precision")
SPARSE_FORMATS = ("sparse-24-bitmask", "dense")


def _matches(target: str, fqn: str, module) -> bool:
    """compressed-tensors target syntax: a class name, a module name, or ``re:<regex>``."""
    if target.startswith("re:"):
        return re.match(target[3:], fqn) is not None
    return target in (type(module).__name__, fqn)


class CompressedTensorsImporter(Importer):
    method = "compressed-tensors"

    def check_config(self, qc: dict) -> None:
        self.format = qc.get("format", "dense")
        self.groups = qc.get("config_groups") or {}
        self.ignore = qc.get("ignore") or []
        if self.format not in QUANT_FORMATS:
            raise ValueError(
                f"{self.where}: compressed-tensors format {self.format!r} is not supported "
                f"(tersor reads {', '.join(QUANT_FORMATS)})"
            )
        for name, g in self.groups.items():
            fmt = g.get("format") or self.format
            if fmt not in QUANT_FORMATS:
                raise ValueError(
                    f"{self.where}: config group '{name}' uses format {fmt!r} (tersor reads "
                    f"{', '.join(QUANT_FORMATS)})"
                )
            w, a = g.get("weights") or {}, g.get("input_activations")
            if w and (w.get("type", "int") != "int" or w.get("num_bits") not in (4, 8)):
                raise ValueError(
                    f"{self.where}: config group '{name}': weights {w.get('type')} "
                    f"{w.get('num_bits')}-bit are not supported (int 4 or 8 bits)"
                )
            if a and (a.get("type", "int") != "int" or a.get("num_bits") != 8):
                raise ValueError(
                    f"{self.where}: config group '{name}': input activations "
                    f"{a.get('type')} {a.get('num_bits')}-bit are not supported (int8 or none)"
                )
        sc = qc.get("sparsity_config") or {}
        self.sparse_format = sc.get("format", "dense")
        if self.sparse_format not in SPARSE_FORMATS:
            raise ValueError(
                f"{self.where}: sparsity format {self.sparse_format!r} is not supported "
                f"(tersor reads {', '.join(SPARSE_FORMATS)}; 'marlin-24' is a GPU packing)"
            )

    def scheme_of(self, fqn: str, module):
        """The config group that targets this layer, or None (ignored or untargeted)."""
        if any(_matches(t, fqn, module) for t in self.ignore):
            return None
        for g in self.groups.values():
            if any(_matches(t, fqn, module) for t in g.get("targets", ())):
                return g
        return None

    def layer(self, fqn, module, folder):
        p = f"{fqn}."
        kind = (
            "sparse"
            if p + "compressed" in folder
            else "int4"
            if p + "weight_packed" in folder
            else "int8"
            if p + "weight_scale" in folder
            else None
        )
        if kind is None:
            return None
        file = folder.file_of(p + ("compressed" if kind == "sparse" else "weight_scale"))
        what = f"{file}: layer '{fqn}'"
        group = self.scheme_of(fqn, module)
        if group is None and kind != "sparse":
            raise ValueError(
                f"{what}: holds quantized tensors but no config group targets it (targets "
                f"{[g.get('targets') for g in self.groups.values()]}, ignore {self.ignore})"
            )
        w = (group or {}).get("weights") or {}
        a = (group or {}).get("input_activations")
        if w.get("num_bits", 4 if kind == "int4" else 8) != (4 if kind == "int4" else 8):
            raise ValueError(f"{what}: tensors of a {kind} layer, config says {w}")
        notes, extra = [], [k for k in (p + "input_scale", p + "input_zero_point") if k in folder]
        if a and not a.get("dynamic", False):
            notes.append("static input scale replaced by dynamic per-row int8")
        act = self.act_int8(bool(a))
        if kind == "int4":
            fmt, keys = self._int4(folder, p, w, self.int4_act(bool(a)), what, notes)
        elif kind == "int8":
            fmt, keys = self._int8(folder, p, w, act, what, notes)
        else:
            fmt, keys = self._sparse(folder, p, w if group else None, act, what, notes)
        return Imported(fmt, keys, "; ".join(notes), extra)

    # ---- per format -----------------------------------------------------------------------------
    @staticmethod
    def _zero_points(folder, p, w, what):
        z = folder.get(p + "weight_zero_point", required=False)
        if w.get("symmetric", True) is False and z is None:
            raise KeyError(f"{what}: asymmetric weights but no '{p}weight_zero_point'")
        return z

    def _int8(self, folder, p, w, act, what, notes):
        q = folder.get(p + "weight")
        n = q.shape[0] if q.dim() == 2 else -1
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"{what}: weight must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
        scale = _channel_scale(folder.get(p + "weight_scale"), n, what)
        z = self._zero_points(folder, p, w, what)
        if z is not None and bool((z != 0).any()):
            raise ValueError(f"{what}: asymmetric int8 weights (zero points != 0) not supported")
        q, clamped = _clamp_int8(q)
        if clamped:
            notes.append(f"{clamped} weights at -128 stored as -127")
        keys = [p + "weight", p + "weight_scale"] + (
            [p + "weight_zero_point"] if z is not None else []
        )
        return Int8Format(q, scale, act_int8=act), keys

    def _int4(self, folder, p, w, act, what, notes):
        shape = folder.get(p + "weight_shape")
        if shape.numel() != 2:
            raise ValueError(f"{what}: weight_shape must hold (N, K), got {shape.tolist()}")
        n, k = (int(v) for v in shape.flatten())
        packed = folder.get(p + "weight_packed")
        words = (k + 7) // 8
        if packed.dtype != torch.int32 or tuple(packed.shape) != (n, words):
            raise ValueError(
                f"{what}: weight_packed must be int32 ({n}, {words}) for weight_shape "
                f"({n}, {k}), got {packed.dtype} {tuple(packed.shape)}"
            )
        q = f4.unpack_int32_nibbles(packed)[:, :k].contiguous()
        scale = folder.get(p + "weight_scale")
        if scale.dim() != 2 or scale.shape[0] != n or scale.shape[1] < 1 or k % scale.shape[1]:
            raise ValueError(
                f"{what}: weight_scale must be [{n}, K/G] with G dividing K={k}, got "
                f"{tuple(scale.shape)}"
            )
        ngroups = scale.shape[1]
        g = k // ngroups
        group_size = -1 if ngroups == 1 else g
        if group_size not in GROUP_SIZES:
            raise ValueError(
                f"{what}: group size {g} is not supported (tersor's int4 kernels take "
                f"{GROUP_SIZES[:-1]} or one group per channel)"
            )
        if w.get("group_size") not in (None, g) and ngroups > 1:
            raise ValueError(f"{what}: weight_scale gives group size {g}, config says {w}")
        z = self._zero_points(folder, p, w, what)
        if z is not None:
            zw = (n + 7) // 8
            if z.dtype != torch.int32 or tuple(z.shape) != (zw, ngroups):
                raise ValueError(
                    f"{what}: weight_zero_point must be int32 ({zw}, {ngroups}) (packed along "
                    f"N), got {z.dtype} {tuple(z.shape)}"
                )
            z = f4.unpack_int32_nibbles(z.t())[:, :n].t().contiguous()
        perm = f4.perm_from_g_idx(folder.get(p + "weight_g_idx", required=False), k, g, what)
        if perm is not None:
            q = q[:, perm].contiguous()
            notes.append("act-order (input permutation)")
        s = f4.fp16_scales(scale, what)
        a8, bits = act
        fmt = Int4Format(
            q, s, z, group_size, a8, symmetric=z is None, perm=perm, what=what, act_bits=bits
        )
        keys = [p + "weight_packed", p + "weight_shape", p + "weight_scale"]
        keys += [p + n for n in ("weight_zero_point", "weight_g_idx") if p + n in folder]
        return fmt, keys

    def _sparse(self, folder, p, w, act, what, notes):
        if self.sparse_format != "sparse-24-bitmask":
            raise ValueError(
                f"{what}: holds 2:4 bitmask tensors but sparsity_config.format is "
                f"{self.sparse_format!r}"
            )
        shape = folder.get(p + "shape").flatten()
        if shape.numel() != 2:
            raise ValueError(f"{what}: shape must hold (N, K), got {shape.tolist()}")
        n, k = (int(v) for v in shape)
        values, bits = folder.get(p + "compressed"), folder.get(p + "bitmask")
        if k % 4 or tuple(values.shape) != (n, k // 2):
            raise ValueError(
                f"{what}: compressed must be [{n}, {k // 2}] for shape ({n}, {k}) with K a "
                f"multiple of 4, got {tuple(values.shape)}"
            )
        if bits.dtype != torch.uint8 or tuple(bits.shape) != (n, (k + 7) // 8):
            raise ValueError(
                f"{what}: bitmask must be uint8 [{n}, {(k + 7) // 8}], got {bits.dtype} "
                f"{tuple(bits.shape)}"
            )
        mask = np.unpackbits(bits.numpy(), axis=-1, count=k, bitorder="little")
        mask = torch.from_numpy(mask.astype(np.bool_)).view(n, k // 4, 4)
        if not bool((mask.sum(-1) == 2).all()):
            raise ValueError(f"{what}: bitmask does not keep exactly 2 of every 4 along K")
        # positions of the two kept values of each group, ascending (the values are in k order)
        pos = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :2]
        meta = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8)
        keys = [p + "shape", p + "compressed", p + "bitmask"]
        if values.dtype == torch.int8:
            scale = _channel_scale(folder.get(p + "weight_scale"), n, what)
            keys.append(p + "weight_scale")
            if self._zero_points(folder, p, w or {}, what) is not None:
                keys.append(p + "weight_zero_point")
            values, clamped = _clamp_int8(values)
            if clamped:
                notes.append(f"{clamped} weights at -128 stored as -127")
            if act:
                return Sparse24Format(values, meta, k, scale), keys
            notes.append("int8 values dequantized to fp32 (2:4 int8 runs with int8 activations)")
            values = values.to(torch.float32) * scale[:, None]
        elif not values.is_floating_point():
            raise ValueError(f"{what}: compressed must be float or int8, got {values.dtype}")
        elif not bool(torch.isfinite(values).all()):  # as from_float refuses such weights
            raise ValueError(f"{what}: compressed holds NaN or Inf values")
        return Sparse24Format(values.to(torch.float32), meta, k), keys


def _channel_scale(s: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """A per-channel ([N], [N, 1]) or per-tensor ([], [1]) scale -> float32 [N]."""
    if not s.is_floating_point() or s.numel() not in (1, n) or (s.dim() == 2 and s.shape[1] != 1):
        raise ValueError(
            f"{what}: weight_scale must be float [{n}, 1] (channel) or [1] (tensor), got "
            f"{s.dtype} {tuple(s.shape)} (group-wise int8 is not supported)"
        )
    s = s.to(torch.float32).flatten().expand(n).contiguous()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"{what}: weight_scale holds NaN, Inf or negative values")
    return s


def _clamp_int8(q: torch.Tensor):
    low = q == -128
    count = int(low.sum())
    return (q.clamp(min=-127) if count else q), count
