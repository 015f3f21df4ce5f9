"""Tensor-parallel test scenarios, run in spawned gloo processes (1 thread each) by
tests/test_distributed.py: each rank builds the same model from the same seed, computes the
single-process output itself, shards the model, and returns what the test compares."""

from __future__ import annotations

import os
import traceback
import zlib
from datetime import timedelta

import torch
from torch import nn

# every scheme a compressed Linear can have, built straight from the formats (quantize_ and
# sparsify_ may leave a small layer dense when it would not be faster)
SCHEMES = (
    "dense",
    "w8a8",
    "w8",
    "w4a8",
    "w4",
    "w4a8-act-order",
    "w4-act-order",
    "w8a8-input-scale",
    "w4a8-input-scale",
    "2:4",
    "2:4+w8a8",
    "unstructured",
    "unstructured+w8a8",
    "block",
    "block+w8a8",
)


def compress(lin: nn.Linear, scheme: str, seed: int = 0) -> nn.Module:
    import tersor
    from tersor.formats import BlockFormat, CsrFormat, Int4Format, Int8Format, Sparse24Format
    from tersor.formats.sparse_block import prune_block
    from tersor.formats.sparse_csr import prune_unstructured

    if scheme == "dense":
        return lin
    g = torch.Generator().manual_seed(seed)
    w = lin.weight.detach().float()
    k = w.shape[1]
    base = scheme.split("-")[0]
    if base in ("w8a8", "w8"):
        fmt = Int8Format.from_float(w, tersor.W8A8Config() if base == "w8a8" else tersor.W8Config())
    elif base in ("w4a8", "w4"):
        cfg = (tersor.W4A8Config if base == "w4a8" else tersor.W4Config)(group_size=32)
        if scheme.endswith("act-order"):  # GPTQ's stored order: groups of permuted inputs
            perm = torch.randperm(k, generator=g)
            fmt = Int4Format.from_float(w[:, perm].contiguous(), cfg)
            fmt.perm = perm
            fmt._finish()
        else:
            fmt = Int4Format.from_float(w, cfg)
    elif base.startswith("2:4"):
        fmt = Sparse24Format.from_float(w, tersor.Sparse24Config())
    elif base.startswith("unstructured"):
        fmt = CsrFormat.from_float(prune_unstructured(w, 0.8))
    else:
        fmt = BlockFormat.from_float(prune_block(w, 0.5, (8, 4)))
    if base.endswith("+w8a8"):
        fmt = fmt.with_int8_values(tersor.W8A8Config())
    if scheme.endswith("input-scale"):
        fmt = fmt.with_input_scale(torch.rand(k, generator=g) + 0.5)
    return tersor.PackedLinear.wrap(fmt, lin.bias)


def _mlp(scheme: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.Linear(96, 64))
    for i in (0, 2, 3):
        m[i] = compress(m[i], scheme, seed + i)
    return m.eval()


MLP_PLAN = {"0": "colwise", "2": "rowwise", "3": "colwise_gather"}


def scenario_mlp(rank, world, schemes=SCHEMES):
    """Per scheme: the sharded MLP's output against the single-process one, plus the
    column-wise shard's output against its columns of the whole layer's (bitwise)."""
    import tersor

    out = {}
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(1)) * 2
    for scheme in schemes:
        m = _mlp(scheme)
        with torch.no_grad():
            ref = m(x)
            h_ref = m[0](x)
            tersor.distributed.parallelize_(m, plan=MLP_PLAN)
            y = m(x)
            h = m[0](x)
        lo, hi = rank * 64, (rank + 1) * 64
        out[scheme] = {
            "y": y,
            "ref": ref,
            "colwise_bitwise": torch.equal(h, h_ref[:, lo:hi]),
            "types": [type(m[i]).__name__ for i in (0, 2, 3)],
        }
        # M = 1 and a bf16 input through the same shards
        with torch.no_grad():
            out[scheme]["y1"] = m(x[:1])
    return out


def scenario_styles(rank, world):
    """torch's ParallelStyle objects and a DeviceMesh give what our plan strings give; a
    replicated input to a row-wise layer; act_scale="local"."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    import tersor

    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    out = {}
    with torch.no_grad():
        m = _mlp("w4a8")
        out["ref"] = m(x)
        tersor.distributed.parallelize_(m, plan=MLP_PLAN)
        out["strings"] = m(x)
        m = _mlp("w4a8")
        torch_plan = {
            "0": ColwiseParallel(),
            "2": RowwiseParallel(),
            "3": ColwiseParallel(output_layouts=Replicate()),
        }
        tersor.distributed.parallelize_(m, init_device_mesh("cpu", (world,)), torch_plan)
        out["torch_styles"] = m(x)
        m = _mlp("w8a8")
        ref = m[2](x.new_ones(3, 128).cumsum(-1).sin())
        tersor.distributed.parallelize_(m, plan={"2": RowwiseParallel(input_layouts=Replicate())})
        out["replicated_input"] = (m[2](x.new_ones(3, 128).cumsum(-1).sin()), ref)
        m = _mlp("w8a8")
        ref = m(x)
        tersor.distributed.parallelize_(m, plan=MLP_PLAN, act_scale="local")
        out["local"] = (m(x), ref)
    return out


def tiny_llama(dtype=torch.float32, seed: int = 0):
    """tests/llm_models.py's tiny Llama with intermediate 128: down_proj's half of K (64) then
    holds whole int4 groups of 32."""
    import transformers

    from llm_models import SIZES

    cfg = transformers.LlamaConfig(**{**SIZES, "intermediate_size": 128})
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


LLM_SCHEMES = ("w8a8", "w4a8", "w4", "w4a8-act-order", "2:4+w8a8", "block+w8a8", "dense")


def _compress_llm(model, scheme):
    for fqn, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and fqn != "lm_head":
            parent, _, child = fqn.rpartition(".")
            setattr(
                model.get_submodule(parent), child, compress(m, scheme, zlib.crc32(fqn.encode()))
            )
    return model


def scenario_llama(rank, world, schemes=LLM_SCHEMES, dtype=torch.float32):
    """The Llama-shaped model (2 blocks, GQA) per scheme: logits of a prompt, and greedy
    decoding with the KV cache, sharded vs single-process."""
    import tersor

    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    out = {}
    for scheme in schemes:
        model = _compress_llm(tiny_llama(dtype), scheme)
        with torch.no_grad():
            ref = model(ids).logits.float()
            ref_gen = model.generate(ids, max_new_tokens=6, do_sample=False)
            _, rep = tersor.distributed.parallelize_(model, plan="auto", report=True)
            y = model(ids).logits.float()
            gen = model.generate(ids, max_new_tokens=6, do_sample=False)
        out[scheme] = {
            "y": y,
            "ref": ref,
            "gen": gen,
            "ref_gen": ref_gen,
            "ratio": rep.shard_bytes / rep.full_bytes,
            "layers": len(rep.rows),
        }
    return out


def scenario_families(rank, world, families=("qwen2", "qwen3", "mistral", "phi3")):
    """The other decoder layouts under plan="auto": q/k/v biases (Qwen2), per-head q/k norms
    (Qwen3), sliding-window attention (Mistral), fused qkv_proj / gate_up_proj cut per part
    (Phi-3, whose attention splits qkv with its head counts: they become this rank's)."""
    import tersor
    from llm_models import tiny_llm

    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    out = {}
    for family in families:
        model = _compress_llm(tiny_llm(family), "w8a8")
        with torch.no_grad():
            ref = model(ids).logits
            ref_gen = model.generate(ids, max_new_tokens=5, do_sample=False)
            _, rep = tersor.distributed.parallelize_(model, plan="auto", report=True)
            y = model(ids).logits
            gen = model.generate(ids, max_new_tokens=5, do_sample=False)
        out[family] = {"y": y, "ref": ref, "gen": gen, "ref_gen": ref_gen, "rows": len(rep.rows)}
    return out


def scenario_errors(rank, world):
    """Bad plans: each must raise the same clear error on every rank, the model unchanged."""
    import tersor

    out = {}

    def attempt(key, model, plan, **kw):
        before = [type(m).__name__ for m in model.modules()]
        try:
            tersor.distributed.parallelize_(model, plan=plan, **kw)
            out[key] = "no error"
        except Exception as e:  # noqa: BLE001 - the message is what the test checks
            out[key] = f"{type(e).__name__}: {e}"
        out[key + "/unchanged"] = before == [type(m).__name__ for m in model.modules()]

    torch.manual_seed(0)
    attempt("odd_out", nn.Sequential(nn.Linear(16, 31)), {"0": "colwise"})
    m = nn.Sequential(nn.Linear(16, 32), nn.Linear(96, 16))
    m[1] = compress(m[1], "w4a8")  # K = 96: 48 per rank cuts a group of 32
    attempt("cut_group", m, {"0": "colwise", "1": "rowwise"})
    m = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32))
    m[0] = compress(m[0], "w8a8")
    m[0].fmt.scale[40] = float("nan")  # only rank 1's rows hold it: rank 1 alone fails
    attempt("one_rank_fails", m, {"1": "rowwise", "0": "colwise"})
    plan = {"0": "colwise", "1": "rowwise"} if rank == 0 else {"0": "rowwise", "1": "colwise"}
    attempt("mismatch", nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32)), plan)
    attempt("unknown_style", nn.Sequential(nn.Linear(32, 32)), {"0": "diagonal"})
    # one rank's plan does not resolve, the other's does: neither waits for the other
    plan = {"0": "diagonal"} if rank == 0 else {"0": "colwise"}
    attempt("one_rank_bad_plan", nn.Sequential(nn.Linear(32, 32)), plan)
    attempt("no_match", nn.Sequential(nn.Linear(32, 32)), {"lm_head": "colwise"})
    return out


def scenario_checkpoint(rank, world, path, scheme):
    """Each rank loads only its slices from the same checkpoint (meta-device model) and
    matches the single-process model loaded whole."""
    import tersor

    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(3))
    whole = tersor.load_pretrained(tiny_llama(), path)
    with torch.no_grad():
        ref = whole(ids).logits
    with torch.device("meta"):
        model = tiny_llama()
    _, rep = tersor.distributed.load_pretrained(model, path, plan="auto", report=True)
    with torch.no_grad():
        y = model(ids).logits
    return {"y": y, "ref": ref, "ratio": rep.shard_bytes / rep.full_bytes, "rows": len(rep.rows)}


def dp_batches():
    g = torch.Generator().manual_seed(4)
    return [torch.randint(0, 128, (2, 16), generator=g) for _ in range(4)]


def gptq_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if "weight_int4" in k or "scale" in k}


def scenario_dp(rank, world):
    """GPTQ with each rank's half of the batches, Hessians summed over the ranks."""
    import tersor

    batches = dp_batches()[rank::world]
    model = tiny_llama()
    cfg = tersor.W4A8Config(group_size=32, method="gptq")
    tersor.quantize_(model, cfg, calibration=tersor.distributed.DataParallel(batches))
    out = {"state": gptq_state(model)}
    try:
        awq = tersor.W4A8Config(group_size=32, method="awq")
        tersor.quantize_(tiny_llama(), awq, calibration=tersor.distributed.DataParallel(batches))
        out["awq"] = "no error"
    except ValueError as e:
        out["awq"] = str(e)
    return out


def worker(rank, world, port, scenario, out_dir, kwargs):
    """One rank: gloo, 1 thread, the scenario; results (or the error) saved for the test."""
    import torch.distributed as dist

    import tersor.distributed

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        result = globals()[f"scenario_{scenario}"](rank, world, **kwargs)
    except Exception:  # noqa: BLE001 - reported to the test process
        result = {"crash": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    tersor.distributed._exit_spawned_rank(rank, world, out_dir)
