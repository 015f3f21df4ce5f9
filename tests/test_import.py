"""Checkpoints users hold (GPTQ, AWQ, compressed-tensors), imported straight into tersor
layers by tersor.from_pretrained / load_pretrained, compared with dequantize-then-F.linear; and
every kind of bad checkpoint, which must fail naming the file and tensor and leave the model
unchanged."""

import copy
import json
import os

import pytest
import torch

import tersor
from tersor.nn import PackedLinear

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
from hf_writers import (  # noqa: E402
    write_awq,
    write_ct_24,
    write_ct_int8,
    write_ct_pack,
    write_ct_real,
    write_gptq,
)
from llm_models import tiny_llm  # noqa: E402


def _llama():
    return tiny_llm("llama")


def _reference(model, ref_weights):
    """The float model with each quantized layer's weight replaced by its dequantized one."""
    ref = copy.deepcopy(model)
    for fqn, w in ref_weights.items():
        ref.get_submodule(fqn).weight.data.copy_(w)
    return ref


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(7))

CASES = {
    "gptq g32 v1": (write_gptq, {"group_size": 32}, "w4", ""),
    "gptq g32 sym v2": (write_gptq, {"group_size": 32, "sym": True, "version": 2}, "w4", ""),
    "gptq act-order 2 shards": (write_gptq, {"act_order": True, "shards": 2}, "w4", "act-order"),
    "gptq per-channel": (write_gptq, {"group_size": -1}, "w4", ""),
    "awq g32": (write_awq, {"group_size": 32}, "w4", ""),
    "ct pack sym bf16 scales": (write_ct_pack, {}, "w4", ""),
    "ct pack asym act-order": (write_ct_pack, {"sym": False, "act_order": True}, "w4", "act-order"),
    "ct pack channel": (write_ct_pack, {"group_size": -1}, "w4", ""),
    "ct int8 w8a8": (write_ct_int8, {}, "w8a8", ""),
    "ct int8 w8a16": (write_ct_int8, {"act": False}, "w8", ""),
    "ct 2:4 fp": (write_ct_24, {}, "2:4", ""),
    "ct 2:4 int8 w8a8": (write_ct_24, {"int8": True}, "2:4+w8a8", ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_dequantize_then_linear(tmp_path, case):
    writer, kw, scheme, note = CASES[case]
    model = _llama()
    ref = _reference(model, writer(model, str(tmp_path), **kw))
    loaded, report = tersor.load_pretrained(_empty(), str(tmp_path), report=True)
    layers = [m for m in loaded.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 2 * 7 and {m.scheme for m in layers} == {scheme}
    assert isinstance(loaded.lm_head, torch.nn.Linear)  # ignored / not quantized: stays float
    assert len(report.converted) == 14 and all(note in r.reason for r in report.converted)
    got, want = _logits(loaded, IDS), _logits(ref, IDS)
    if scheme in ("w4", "w8", "2:4"):  # float activations: only the summation order differs
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    else:  # dynamic int8 activations
        assert _cos(got, want) > 0.999


def _empty(dtype=torch.float32):
    with tersor.empty_weights():
        model = _llama().to(dtype)
    return model


def test_from_pretrained_builds_the_model_and_runs_w4a16_as_w4a8(tmp_path):
    model = _llama()
    ref = _reference(model, write_gptq(model, str(tmp_path), group_size=32))
    loaded = tersor.from_pretrained(str(tmp_path), activations="int8")
    assert {m.scheme for m in loaded.modules() if isinstance(m, PackedLinear)} == {"w4a8"}
    assert _cos(_logits(loaded, IDS), _logits(ref, IDS)) > 0.999
    # the rotary buffers were computed (empty_weights keeps buffers real), params all loaded
    assert not any(t.is_meta for t in loaded.state_dict().values())


@pytest.mark.parametrize("writer", [write_gptq, write_awq, write_ct_pack])
def test_int16_activations_run_w4a16_on_the_planes(tmp_path, writer):
    """activations="int16": int4 layers on the W4A8 kernel over two planes (act_bits=16), much
    nearer the float-activation logits than int8 activations."""
    model = _llama()
    ref = _reference(model, writer(model, str(tmp_path), group_size=32))
    ids = IDS[:, :3]  # 6 rows, PLANES_MAX_ROWS: the planes (float rows above)
    want = _logits(ref, ids)
    got16 = tersor.load_pretrained(_empty(), str(tmp_path), activations="int16")
    layers = [m for m in got16.modules() if isinstance(m, PackedLinear)]
    assert {(m.scheme, m.fmt.act_bits) for m in layers} == {("w4a8", 16)}
    got8 = tersor.load_pretrained(_empty(), str(tmp_path), activations="int8")
    err16 = (_logits(got16, ids) - want).norm() / want.norm()
    err8 = (_logits(got8, ids) - want).norm() / want.norm()
    assert 0 < err16 < 1e-3 and err16 * 20 < err8, (err16, err8)


def test_import_into_a_bf16_model_casts_the_float_rest(tmp_path):
    model = _llama()
    write_ct_pack(model, str(tmp_path))
    loaded = tersor.load_pretrained(_empty(torch.bfloat16), str(tmp_path))
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert _logits(loaded, IDS).isfinite().all()


def test_tersor_checkpoint_round_trip_through_from_pretrained(tmp_path):
    model = _llama()
    tersor.quantize_(model, tersor.W4A8Config(group_size=32), progress=False)
    tersor.save_pretrained(model, str(tmp_path))
    loaded = tersor.from_pretrained(str(tmp_path))
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())
    )
    # HF picks its attention implementation anew, so only the summation order may differ
    torch.testing.assert_close(_logits(loaded, IDS), _logits(model, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("fmt", "sym"), [("pack-quantized", False), ("pack-quantized", True), ("int-quantized", True)]
)
def test_real_compressed_tensors_package(tmp_path, fmt, sym):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")
    model = _llama()
    ref = _reference(model, write_ct_real(model, str(tmp_path), fmt, sym=sym))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["quantization_config"]["format"] == fmt
    loaded = tersor.load_pretrained(_empty(), str(tmp_path))
    got, want = _logits(loaded, IDS), _logits(ref, IDS)
    if fmt == "pack-quantized":
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    else:
        assert _cos(got, want) > 0.999


# ---- bad checkpoints ---------------------------------------------------------------------------


def _edit_tensors(path, fn):
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, file)


def _edit_config(path, fn):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    fn(cfg["quantization_config"])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)


def _overwrite_start(file):
    with open(file, "r+b") as f:
        f.write(b"\xff" * 16)


P = "model.layers.1.mlp.down_proj"
BAD = {
    "missing tensor": (
        write_gptq,
        lambda p: _edit_tensors(p, lambda t: t.pop(f"{P}.qzeros")),
        f"'{P}.qzeros' is missing",
    ),
    "extra tensor": (
        write_gptq,
        lambda p: _edit_tensors(p, lambda t: t.update({"model.stray": torch.ones(3)})),
        "unexpected ['model.stray']",
    ),
    "wrong dtype": (
        write_gptq,
        lambda p: _edit_tensors(p, lambda t: t.update({f"{P}.qweight": t[f"{P}.qweight"].float()})),
        "qweight must be int32",
    ),
    "wrong shape": (
        write_awq,
        lambda p: _edit_tensors(p, lambda t: t.update({f"{P}.scales": t[f"{P}.scales"][:, :8]})),
        "scales must be float",
    ),
    "layer of another size": (
        write_ct_pack,
        lambda p: _edit_tensors(
            p, lambda t: t.update({f"{P}.weight_shape": torch.tensor([64, 88])})
        ),
        "weight_packed must be int32 (64, 11)",
    ),
    "group size does not divide K": (
        write_gptq,
        lambda p: _edit_tensors(
            p, lambda t: t.update({f"{P}.scales": t[f"{P}.scales"].repeat(2, 1)[:5]})
        ),
        "5 scale rows do not divide K=96",
    ),
    "unknown method": (
        write_gptq,
        lambda p: _edit_config(p, lambda q: q.update({"quant_method": "hqq"})),
        "quant_method 'hqq' is not supported",
    ),
    "unknown packing": (
        write_awq,
        lambda p: _edit_config(p, lambda q: q.update({"version": "gemv"})),
        "version = 'gemv' is not supported",
    ),
    "unknown ct format": (
        write_ct_pack,
        lambda p: _edit_config(p, lambda q: q.update({"format": "nvfp4-pack-quantized"})),
        "'nvfp4-pack-quantized' is not supported",
    ),
    "NaN scales": (
        write_ct_pack,
        lambda p: _edit_tensors(
            p, lambda t: t[f"{P}.weight_scale"].view(-1).__setitem__(3, float("nan"))
        ),
        "scales hold NaN, Inf or negative values",
    ),
    "not 2:4": (
        write_ct_24,
        lambda p: _edit_tensors(p, lambda t: t[f"{P}.bitmask"].fill_(0xFF)),
        "does not keep exactly 2 of every 4",
    ),
    "corrupted header": (
        write_gptq,
        lambda p: _overwrite_start(os.path.join(p, "model.safetensors")),
        "not a readable safetensors file",
    ),
    "missing shard": (
        lambda m, p: write_gptq(m, p, shards=2),
        lambda p: os.remove(os.path.join(p, "model-00002-of-00002.safetensors")),
        "model-00002-of-00002.safetensors: shard missing",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_names_file_and_tensor_and_leaves_model_unchanged(tmp_path, case):
    writer, corrupt, message = BAD[case]
    model = _llama()
    writer(model, str(tmp_path))
    corrupt(str(tmp_path))
    target = _llama()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises((ValueError, KeyError, FileNotFoundError)) as e:
        tersor.load_pretrained(target, str(tmp_path))
    assert message in str(e.value), str(e.value)
    assert str(tmp_path) in str(e.value)  # names the file (or the folder)
    assert not any(isinstance(m, PackedLinear) for m in target.modules())
    after = target.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_activations_argument_is_checked(tmp_path):
    write_gptq(_llama(), str(tmp_path))
    with pytest.raises(ValueError, match="activations must be one of"):
        tersor.load_pretrained(_empty(), str(tmp_path), activations="fp8")
