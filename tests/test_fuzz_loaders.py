"""Fuzzed loaders: every format's state_dict loading and the GPTQ / AWQ importers fed corrupted
tensors (wrong dtypes and shapes, NaN / Inf / negative scales, out-of-range codes and indices,
unsorted or decreasing pointers, truncation). Each case either loads (the corruption was
harmless: the layer then runs) or raises a Python error naming the tensor; none reaches the
native code with bad data (the sanitizer job runs this file too)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import tersor
from tersor.nn.linear import PackedLinear

N, K = 40, 64


def _layer(kind: str) -> PackedLinear:
    torch.manual_seed(0)
    lin = nn.Linear(K, N)
    m = nn.Sequential(lin)
    if kind == "w8a8":
        tersor.quantize_(m, tersor.W8A8Config(), progress=False)
    elif kind == "w4 g32":
        tersor.quantize_(m, tersor.W4Config(group_size=32), progress=False)
    elif kind == "w4a8 act-order":
        calib = torch.randn(64, K)
        cfg = tersor.W4A8Config(group_size=32, method="gptq", act_order=True)
        tersor.quantize_(m, cfg, calibration=calib, progress=False)
    elif kind == "w8a8 input scale":
        cfg = tersor.W8A8Config(smooth=0.5)
        tersor.quantize_(m, cfg, calibration=torch.randn(64, K), progress=False)
    elif kind.startswith("2:4"):
        tersor.sparsify_(m, tersor.Sparse24Config(), progress=False)
    elif kind.startswith("csr"):
        tersor.sparsify_(m, tersor.SparseConfig(0.9, dense_below=0.0), progress=False)
    elif kind.startswith("block"):
        m = nn.Sequential(nn.Linear(K, 48))
        tersor.sparsify_(m, tersor.SparseConfig(0.75, block=(16, 4), dense_below=0.0))
    if kind.endswith("+int8"):
        tersor.quantize_(m, tersor.W8A8Config(), progress=False)
    return m[0]


KINDS = [
    "w8a8",
    "w4 g32",
    "w4a8 act-order",
    "w8a8 input scale",
    "2:4",
    "2:4+int8",
    "csr",
    "csr+int8",
    "block",
    "block+int8",
]
LAYERS = {}


def _get(kind):
    if kind not in LAYERS:
        LAYERS[kind] = _layer(kind)
    return LAYERS[kind]


MUTATIONS = ("dtype", "shrink", "grow", "transpose", "nan", "inf", "negative", "huge", "shuffle")


def _mutate(t: torch.Tensor, how: str, pick: int) -> torch.Tensor:
    t = t.clone()
    flat = t.reshape(-1)
    i = pick % max(flat.numel(), 1)
    if how == "dtype":
        others = [torch.float64, torch.float16, torch.int16, torch.int64, torch.uint8, torch.int8]
        return t.to(others[pick % len(others)])
    if how == "shrink":
        return flat[:-1].clone() if t.dim() == 1 else t[:-1].clone()
    if how == "grow":
        return torch.cat([t, t[:1]])
    if how == "transpose":
        return t.t().contiguous() if t.dim() == 2 else t.reshape(1, -1)
    if not flat.numel():
        return t
    if how in ("nan", "inf"):
        if t.is_floating_point():
            flat[i] = float(how)
        return t
    if how == "negative":
        flat[i] = -1 if t.dtype != torch.uint8 else 255
        return t
    if how == "huge":
        flat[i] = torch.iinfo(t.dtype).max if not t.is_floating_point() else 1e38
        return t
    return flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(pick))].view(
        t.shape
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    key=st.integers(0, 10),
    how=st.sampled_from(MUTATIONS),
    pick=st.integers(0, 10**6),
)
def test_corrupted_state_dicts_raise_or_load_cleanly(kind, key, how, pick):
    layer = _get(kind)
    sd = {k: v for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor)}
    name = sorted(sd)[key % len(sd)]
    bad = dict(layer.state_dict())
    bad[name] = _mutate(sd[name], how, pick)
    fresh = PackedLinear.wrap(
        type(layer.fmt).empty(layer.out_features, layer.in_features, **layer.fmt.options()),
        torch.zeros(layer.out_features),
    )
    must_refuse = (
        name.endswith("scale")
        and how in ("nan", "inf", "negative")
        and sd[name].is_floating_point()
    ) or (name.endswith(("rowptr", "crow")) and how in ("negative", "shuffle", "huge"))
    try:
        fresh.load_state_dict(bad)
    except (RuntimeError, ValueError, TypeError) as e:
        assert str(e), "an error without a message"
        return
    assert not must_refuse or torch.equal(bad[name], sd[name]), f"{name} {how} was loaded"
    with torch.no_grad():  # loaded: harmless corruption; the layer runs
        y = fresh(torch.randn(3, layer.in_features))
    assert y.shape == (3, layer.out_features)


def _gptq_tensors(act_order: bool):
    """(qweight, qzeros, scales, g_idx) as AutoGPTQ (v1) stores them (tests/hf_writers.py)."""
    from tests.hf_writers import pack_nibbles_int32

    gen = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(N, K // 32, generator=gen) * 0.02 + 0.005).half()
    zero = torch.randint(0, 16, (N, K // 32), dtype=torch.uint8, generator=gen)
    g_idx = torch.arange(K, dtype=torch.int32) // 32
    if act_order:
        g_idx = g_idx[torch.randperm(K, generator=gen)].contiguous()
    qweight = pack_nibbles_int32(q.t().reshape(K // 8, 8, N).permute(0, 2, 1).reshape(K // 8, -1))
    qzeros = pack_nibbles_int32(((zero.to(torch.int64) - 1) & 0xF).t().contiguous())
    return qweight, qzeros, scale.t().contiguous(), g_idx


@settings(max_examples=80, deadline=None)
@given(
    which=st.integers(0, 3),
    how=st.sampled_from(MUTATIONS),
    pick=st.integers(0, 10**6),
    act_order=st.booleans(),
)
def test_corrupted_gptq_tensors(which, how, pick, act_order):
    tensors = list(_gptq_tensors(act_order))
    tensors[which] = _mutate(tensors[which], how, pick)
    try:
        layer = tersor.QLinear.from_gptq(*tensors)
    except (RuntimeError, ValueError, TypeError) as e:
        assert "GPTQ" in str(e) or str(e)
        return
    assert not (which == 2 and how in ("nan", "inf", "negative")), f"scales {how} loaded"
    with torch.no_grad():
        y = layer(torch.randn(2, layer.in_features))
    assert y.shape == (2, layer.out_features)


def _awq_tensors():
    """(qweight, qzeros, scales) as AutoAWQ's GEMM packing stores them (tests/hf_writers.py)."""
    from tests.hf_writers import AWQ_ORDER, _random_int4, pack_nibbles_int32

    q, z, s = _random_int4(N, K, 32, torch.Generator().manual_seed(3))
    return (
        pack_nibbles_int32(q.t().contiguous(), AWQ_ORDER),
        pack_nibbles_int32(z.t().contiguous(), AWQ_ORDER),
        s.t().contiguous(),
    )


@settings(max_examples=60, deadline=None)
@given(which=st.integers(0, 2), how=st.sampled_from(MUTATIONS), pick=st.integers(0, 10**6))
def test_corrupted_awq_tensors(which, how, pick):
    tensors = list(_awq_tensors())
    tensors[which] = _mutate(tensors[which], how, pick)
    try:
        layer = tersor.QLinear.from_awq(*tensors, group_size=32)
    except (RuntimeError, ValueError, TypeError) as e:
        assert str(e), "an error without a message"
        return
    assert not (which == 2 and how in ("nan", "inf", "negative")), f"scales {how} loaded"
    with torch.no_grad():
        y = layer(torch.randn(2, layer.in_features))
    assert y.shape == (2, layer.out_features)


CKPT = {}


def _checkpoint(tmp_root: str) -> tuple:
    """A saved model with int4 act-order, 2:4 + int8 and dense layers (made once): its folder,
    its files' bytes, an input, and the output it gives."""
    import os

    if "path" not in CKPT:
        torch.manual_seed(0)
        # K -> N int4 act-order, N -> 48 2:4 + int8 (input-scaled W8A8 would need K -> N too),
        # 48 -> 16 dense
        m = nn.Sequential(_get("w4a8 act-order"), nn.ReLU(), nn.Linear(N, 48), nn.Linear(48, 16))
        tersor.sparsify_(m, tersor.Sparse24Config(), filter_fn=lambda mod, f: f == "2")
        tersor.quantize_(m, tersor.W8A8Config(), filter_fn=lambda mod, f: f == "2")
        path = os.path.join(tmp_root, "ckpt")
        tersor.save_pretrained(m, path, max_shard_bytes=4096)
        x = torch.randn(3, K)
        with torch.no_grad():
            y = m(x)
        files = {}
        for f in sorted(os.listdir(path)):
            with open(os.path.join(path, f), "rb") as fh:
                files[f] = fh.read()
        CKPT.update(path=path, files=files, x=x, y=y, model=m)
    return CKPT["path"], CKPT["files"], CKPT["x"], CKPT["y"]


def _fresh_model():
    m = nn.Sequential(nn.Linear(K, N), nn.ReLU(), nn.Linear(N, 48), nn.Linear(48, 16))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(0.5)
    return m


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 50),
    how=st.sampled_from(("truncate", "byte", "delete", "json")),
    at=st.floats(0.0, 1.0),
    value=st.integers(0, 255),
)
def test_corrupted_checkpoint_files(which, how, at, value, tmp_path_factory):
    """A checkpoint folder with one file truncated, one byte overwritten, a file deleted, or a
    manifest value changed: load_pretrained raises an error naming a file or a tensor and
    leaves the model as it was, or (a harmless byte) loads a model that runs."""
    import json
    import os
    import tempfile

    _, files, x, y = _checkpoint(str(tmp_path_factory.getbasetemp()))
    names = sorted(files)
    name = names[which % len(names)]
    with tempfile.TemporaryDirectory() as d:
        for f, data in files.items():
            if how == "delete" and f == name:
                continue
            if f == name and how == "truncate":
                data = data[: int(at * len(data))]
            elif f == name and how == "byte" and data:
                i = min(int(at * len(data)), len(data) - 1)
                data = data[:i] + bytes([value]) + data[i + 1 :]
            elif f == name == "tersor.json" and how == "json":
                manifest = json.loads(data)
                layer = sorted(manifest["layers"])[value % len(manifest["layers"])]
                entry = manifest["layers"][layer]
                key = ("scheme", "in_features", "out_features", "options", "bias")[value % 5]
                entry[key] = {
                    "scheme": "w3",
                    "in_features": 7,
                    "out_features": 0,
                    "options": {"group_size": 5},
                    "bias": not entry["bias"],
                }[key]
                data = json.dumps(manifest).encode()
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(data)
        _loads_or_fails_cleanly(d, x, y)


@pytest.mark.parametrize("where", ["absolute", "parent", "empty"])
def test_manifest_shards_outside_the_folder(where, tmp_path_factory):
    """A manifest naming a shard outside its folder (an absolute path, "../", as a byte
    changed by the fuzzing above once made "/odel-00001-of-00002.safetensors", which
    os.path.join took as it was), or an empty name: an error naming the checkpoint before any
    file is read, the model unchanged, even where the outside file exists and is the real
    shard."""
    import json
    import os
    import tempfile

    path, files, x, y = _checkpoint(str(tmp_path_factory.getbasetemp()))
    with tempfile.TemporaryDirectory() as d:
        manifest = json.loads(files["tersor.json"])
        key = sorted(manifest["weight_map"])[0]
        real = manifest["weight_map"][key]
        manifest["weight_map"][key] = {
            "absolute": os.path.join(path, real),
            "parent": os.path.join("..", os.path.basename(path), real),
            "empty": "",
        }[where]
        for f, data in files.items():
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(json.dumps(manifest).encode() if f == "tersor.json" else data)
        with pytest.raises(ValueError, match="not a file of this folder"):
            tersor.load_pretrained(_fresh_model(), d)
        _loads_or_fails_cleanly(d, x, y)


def _loads_or_fails_cleanly(d: str, x, y, fresh=None) -> None:
    """load_pretrained of folder d into a fresh model (fresh(), default _fresh_model) raises an
    error naming d and leaves the model as it was, or loads a model that runs."""
    model = (fresh or _fresh_model)()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model]
    try:
        tersor.load_pretrained(model, d)
    except (ValueError, KeyError, FileNotFoundError, TypeError, RuntimeError, OSError) as e:
        assert d in str(e), f"the error does not name the checkpoint: {e}"
        assert [type(m) for m in model] == types, "a failed load changed the model"
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "half loaded"
        return
    with torch.no_grad():
        got = model(x)
    assert got.shape == y.shape


def test_manifest_tables_missing_or_of_the_wrong_type(tmp_path_factory):
    """Every key of the manifest, and every key of each layer's entry, removed or turned into a
    string: an error naming the checkpoint, or a model that runs (a byte changed in the key
    'weight_map' once raised a bare KeyError)."""
    import copy
    import json
    import os
    import tempfile

    def conv_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))

    conv = conv_model()
    tersor.quantize_(conv, tersor.W8A8Config())
    conv_dir = str(tmp_path_factory.mktemp("conv_ckpt"))
    tersor.save_pretrained(conv, conv_dir)
    conv_files = {}
    for f in os.listdir(conv_dir):
        with open(os.path.join(conv_dir, f), "rb") as fh:
            conv_files[f] = fh.read()
    xc = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        yc = conv(xc)
    root = str(tmp_path_factory.getbasetemp())
    for (_, files, x, y), fresh in (
        (_checkpoint(root), None),
        ((0, conv_files, xc, yc), conv_model),
    ):
        manifest = json.loads(files["tersor.json"])
        cases = [((), key) for key in manifest]
        for fqn, entry in manifest["layers"].items():
            cases += [(("layers", fqn), key) for key in entry]
            cases += [(("layers", fqn, "conv"), key) for key in entry.get("conv", {})]
        for where, key in cases:
            for how in ("drop", "string"):
                m = copy.deepcopy(manifest)
                table = m
                for step in where:
                    table = table[step]
                if how == "drop":
                    del table[key]
                else:
                    table[key] = "x"
                with tempfile.TemporaryDirectory() as d:
                    for f, data in files.items():
                        with open(os.path.join(d, f), "wb") as fh:
                            fh.write(json.dumps(m).encode() if f == "tersor.json" else data)
                    _loads_or_fails_cleanly(d, x, y, fresh)


CT = {}


def _ct_folder(kind: str, tmp_root: str):
    """A compressed-tensors folder of a tiny Llama (tests/hf_writers.py; made once per kind):
    its path and its tensors."""
    import os

    from safetensors.torch import load_file
    from tests.hf_writers import write_ct_24, write_ct_int8, write_ct_pack
    from tests.llm_models import tiny_llm

    if kind not in CT:
        writer, kw = {
            "pack sym": (write_ct_pack, {}),
            "pack asym act-order": (write_ct_pack, {"sym": False, "act_order": True}),
            "int8": (write_ct_int8, {}),
            "2:4 int8": (write_ct_24, {"int8": True}),
            "2:4": (write_ct_24, {}),
        }[kind]
        path = os.path.join(tmp_root, "ct-" + kind.replace(" ", "-").replace(":", ""))
        writer(tiny_llm("llama"), path, **kw)
        CT[kind] = (path, load_file(os.path.join(path, "model.safetensors")))
    return CT[kind]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(("pack sym", "pack asym act-order", "int8", "2:4 int8", "2:4")),
    which=st.integers(0, 10**6),
    how=st.sampled_from(MUTATIONS),
    pick=st.integers(0, 10**6),
)
def test_corrupted_compressed_tensors_folders(kind, which, how, pick, tmp_path_factory):
    """A compressed-tensors checkpoint (llm-compressor's format) with one quantized layer's
    tensor corrupted: load_pretrained raises an error naming the folder's file and the layer
    with the model unchanged, or (harmless corruption) loads a model that runs. NaN / Inf /
    negative scales are always refused."""
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file
    from tests.llm_models import tiny_llm

    path, tensors = _ct_folder(kind, str(tmp_path_factory.getbasetemp()))
    quantized = sorted(
        k
        for k in tensors
        if k.rsplit(".", 1)[-1]
        in ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")
        or k.endswith((".compressed", ".bitmask", ".shape"))
        or (k.endswith(".weight") and tensors[k].dtype == torch.int8)
    )
    name = quantized[which % len(quantized)]
    bad = dict(tensors)
    bad[name] = _mutate(tensors[name], how, pick)
    must_refuse = (name.endswith("weight_scale") and how in ("nan", "inf", "negative")) or (
        kind == "2:4" and name.endswith(".compressed") and how in ("nan", "inf")
    )
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(os.path.join(path, "config.json"), d)
        save_file({k: v.contiguous() for k, v in bad.items()}, os.path.join(d, "model.safetensors"))
        with tersor.empty_weights():
            model = tiny_llm("llama")
        types = [type(m) for m in model.modules()]
        try:
            tersor.load_pretrained(model, d)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            assert d in str(e) or "model.safetensors" in str(e), f"names no file: {e}"
            assert [type(m) for m in model.modules()] == types, "a failed load changed the model"
            return
        assert not must_refuse or torch.equal(bad[name], tensors[name]), f"{name} {how} loaded"
        with torch.no_grad():
            logits = model(torch.randint(0, 128, (1, 5))).logits
        assert logits.shape == (1, 5, 128)
