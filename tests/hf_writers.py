"""Writers of quantized Hugging Face folders, built from the formats' documentation (GPTQ,
AWQ, compressed-tensors int-quantized / pack-quantized / sparse-24-bitmask), plus one through
the real ``compressed-tensors`` package. Each quantizes every Linear of a float model except
lm_head with random codes, scales and zero points (exactly representable, so the reference is
exact), writes config.json + safetensors, and returns {fqn: the dequantized float32 weight}:
the reference the imported layers are compared with (dequantize, then F.linear).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def quantized_linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]


def pack_nibbles_int32(v: torch.Tensor, order=range(8)) -> torch.Tensor:
    """uint8 codes [..., 8c] -> int32 [..., c], element 8c + order[i] in bits 4i."""
    v = v.to(torch.int64).reshape(*v.shape[:-1], -1, 8)
    word = torch.zeros(v.shape[:-1], dtype=torch.int64)
    for i, src in enumerate(order):
        word |= v[..., src] << (4 * i)
    return (word - ((word >> 31) << 32)).to(torch.int32)  # two's complement


def _random_int4(n, k, g, gen, sym=False):
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    z = torch.full((n, k // g), 8, dtype=torch.uint8)
    if not sym:
        z = torch.randint(0, 16, (n, k // g), generator=gen, dtype=torch.uint8)
    s = (torch.rand(n, k // g, generator=gen) * 0.02 + 0.005).to(torch.float16)
    return q, z, s


def write_folder(model, path, tensors: dict, quantization_config: dict, shards: int = 1):
    """config.json (the model's config + quantization_config) and the tensors in `shards`
    safetensors files (an index when more than one)."""
    os.makedirs(path, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["quantization_config"] = quantization_config
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    keys = list(tensors)
    if shards == 1:
        save_file(
            {k: tensors[k].contiguous() for k in keys}, os.path.join(path, "model.safetensors")
        )
        return
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: tensors[k].contiguous() for k in part}, os.path.join(path, name))
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def _float_rest(model, skip, dtype=None):
    return {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().clone()
        for k, v in model.state_dict().items()
        if not any(k == f"{s}.weight" for s in skip)
    }


def write_gptq(model, path, group_size=32, act_order=False, sym=False, version=1, shards=1):
    gen = torch.Generator().manual_seed(1)
    tensors, ref = {}, {}
    layers = quantized_linears(model)
    for fqn, m in layers:
        n, k = m.weight.shape
        g = k if group_size == -1 else group_size
        q, z, s = _random_int4(n, k, g, gen, sym)
        g_idx = torch.arange(k, dtype=torch.int32) // g
        if act_order:  # a random permutation of the inputs decides the groups
            g_idx = g_idx[torch.randperm(k, generator=gen)].contiguous()
        gi = g_idx.long()
        ref[fqn] = (q.float() - z.float()[:, gi]) * s.float()[:, gi]
        stored_z = (z.to(torch.int64) - 1) & 0xF if version == 1 else z
        tensors[f"{fqn}.qweight"] = pack_nibbles_int32(
            q.t().reshape(k // 8, 8, n).permute(0, 2, 1).reshape(k // 8, n * 8)
        )
        tensors[f"{fqn}.qzeros"] = pack_nibbles_int32(stored_z.t().contiguous())
        tensors[f"{fqn}.scales"] = s.t().contiguous()
        tensors[f"{fqn}.g_idx"] = g_idx
    tensors.update(_float_rest(model, [f for f, _ in layers]))
    qc = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": group_size,
        "desc_act": act_order,
        "sym": sym,
        "checkpoint_format": "gptq" if version == 1 else "gptq_v2",
    }
    write_folder(model, path, tensors, qc, shards)
    return ref


def write_awq(model, path, group_size=32):
    gen = torch.Generator().manual_seed(2)
    tensors, ref = {}, {}
    layers = quantized_linears(model)
    for fqn, m in layers:
        n, k = m.weight.shape
        q, z, s = _random_int4(n, k, group_size, gen)
        gi = torch.arange(k) // group_size
        ref[fqn] = (q.float() - z.float()[:, gi]) * s.float()[:, gi]
        tensors[f"{fqn}.qweight"] = pack_nibbles_int32(q.t().contiguous(), AWQ_ORDER)
        tensors[f"{fqn}.qzeros"] = pack_nibbles_int32(z.t().contiguous(), AWQ_ORDER)
        tensors[f"{fqn}.scales"] = s.t().contiguous()
    tensors.update(_float_rest(model, [f for f, _ in layers]))
    qc = {
        "quant_method": "awq",
        "bits": 4,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
    }
    write_folder(model, path, tensors, qc)
    return ref


def _ct_config(weights: dict, fmt: str, act: bool, sparsity=None):
    a = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": a if act else None,
            }
        },
        "ignore": ["lm_head"],
        "sparsity_config": sparsity,
    }


def write_ct_pack(
    model, path, group_size=32, sym=True, act_order=False, scale_dtype=torch.bfloat16
):
    """pack-quantized W4A16: signed codes q + 8 in nibbles, scales in the model's dtype."""
    gen = torch.Generator().manual_seed(3)
    tensors, ref = {}, {}
    layers = quantized_linears(model)
    for fqn, m in layers:
        n, k = m.weight.shape
        g = k if group_size == -1 else group_size
        q, z, s = _random_int4(n, k, g, gen, sym)  # codes = stored nibbles, z = zp + 8
        s = s.to(scale_dtype)
        g_idx = torch.arange(k, dtype=torch.int32) // g
        if act_order:
            g_idx = g_idx[torch.randperm(k, generator=gen)].contiguous()
        gi = g_idx.long()
        ref[fqn] = (q.float() - z.float()[:, gi]) * s.float()[:, gi]
        tensors[f"{fqn}.weight_packed"] = pack_nibbles_int32(q)
        tensors[f"{fqn}.weight_shape"] = torch.tensor([n, k])
        tensors[f"{fqn}.weight_scale"] = s
        if not sym:
            zp = torch.zeros(-(-n // 8) * 8, k // g, dtype=torch.uint8)
            zp[:n] = z
            tensors[f"{fqn}.weight_zero_point"] = (
                pack_nibbles_int32(zp.t().contiguous()).t().contiguous()
            )
        if act_order:
            tensors[f"{fqn}.weight_g_idx"] = g_idx
    tensors.update(_float_rest(model, [f for f, _ in layers]))
    w = {
        "num_bits": 4,
        "type": "int",
        "symmetric": sym,
        "strategy": "channel" if group_size == -1 else "group",
        "group_size": None if group_size == -1 else group_size,
        "actorder": "group" if act_order else None,
    }
    write_folder(model, path, tensors, _ct_config(w, "pack-quantized", False))
    return ref


def write_ct_int8(model, path, act=True):
    """int-quantized W8A8 (or W8A16): int8 in [-128, 127], one scale per channel."""
    gen = torch.Generator().manual_seed(4)
    tensors, ref = {}, {}
    layers = quantized_linears(model)
    for fqn, m in layers:
        n, k = m.weight.shape
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        s = torch.rand(n, 1, generator=gen) * 0.002 + 0.0005
        ref[fqn] = q.float() * s
        tensors[f"{fqn}.weight"] = q
        tensors[f"{fqn}.weight_scale"] = s
    tensors.update(_float_rest(model, [f for f, _ in layers]))
    w = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
    write_folder(model, path, tensors, _ct_config(w, "int-quantized", act))
    return ref


def write_ct_24(model, path, int8=False):
    """sparse-24-bitmask (float values, or int8 values + per-channel scales with W8A8)."""
    gen = torch.Generator().manual_seed(5)
    tensors, ref = {}, {}
    layers = quantized_linears(model)
    for fqn, m in layers:
        n, k = m.weight.shape
        keep = torch.zeros(n, k // 4, 4, dtype=torch.bool)
        first = torch.randint(0, 4, (n, k // 4), generator=gen)
        second = (first + torch.randint(1, 4, (n, k // 4), generator=gen)) % 4
        keep.scatter_(2, first[..., None], True).scatter_(2, second[..., None], True)
        keep = keep.view(n, k)
        if int8:
            q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8) * keep
            q = torch.where(keep & (q == 0), torch.ones_like(q), q)
            s = torch.rand(n, 1, generator=gen) * 0.002 + 0.0005
            dense, values = q.float() * s, q[keep].view(n, k // 2)
            tensors[f"{fqn}.weight_scale"] = s
        else:
            dense = torch.randn(n, k, generator=gen) * 0.05 * keep
            dense = torch.where(keep & (dense == 0), torch.full_like(dense, 0.01), dense)
            values = dense[keep].view(n, k // 2)
        ref[fqn] = dense
        bits = np.packbits(keep.numpy(), axis=-1, bitorder="little")
        tensors[f"{fqn}.compressed"] = values
        tensors[f"{fqn}.bitmask"] = torch.from_numpy(bits)
        tensors[f"{fqn}.shape"] = torch.tensor([[n], [k]])
    tensors.update(_float_rest(model, [f for f, _ in layers]))
    sparsity = {
        "format": "sparse-24-bitmask",
        "sparsity_structure": "2:4",
        "targets": ["Linear"],
        "ignore": ["lm_head"],
    }
    if int8:
        w = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
        qc = _ct_config(w, "int-quantized", True, sparsity)
    else:
        qc = {
            "quant_method": "compressed-tensors",
            "format": "dense",
            "config_groups": {},
            "ignore": [],
            "sparsity_config": sparsity,
        }
    write_folder(model, path, tensors, qc)
    return ref


def write_ct_real(model, path, fmt="pack-quantized", group_size=32, sym=False):
    """Through the compressed-tensors package itself: its QuantizationConfig, its qparams
    (calculate_qparams on group min / max), its ModelCompressor; the reference is its own
    decompression."""
    import copy

    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = copy.deepcopy(model)
    int8 = fmt == "int-quantized"
    weights = QuantizationArgs(
        num_bits=8 if int8 else 4,
        type="int",
        symmetric=True if int8 else sym,
        strategy="channel" if int8 else "group",
        group_size=None if int8 else group_size,
    )
    acts = (
        QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        if int8
        else None
    )
    qc = QuantizationConfig(
        config_groups={
            "group_0": QuantizationScheme(
                targets=["Linear"], weights=weights, input_activations=acts
            )
        },
        ignore=["lm_head"],
    )
    apply_quantization_config(model, qc)
    layers = quantized_linears(model)
    for _, m in layers:
        w = m.weight.detach()
        n, k = w.shape
        wg = w.view(n, -1, group_size) if not int8 else w.view(n, 1, k)
        scale, zp = calculate_qparams(wg.amin(-1), wg.amax(-1), weights)
        m.weight_scale.data.copy_(scale.view_as(m.weight_scale))
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data.copy_(zp.view_as(m.weight_zero_point))
    comp = ModelCompressor.from_pretrained_model(model, fmt)
    comp.compress_model(model)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_folder(model, path, tensors, {})
    comp.update_config(path)  # writes the real quantization_config into config.json
    comp.decompress_model(model)
    return {fqn: m.weight.detach().float().clone() for fqn, m in quantized_linears(model)}
