import dataclasses

import pytest
import torch
from torch import nn

import tersor
from tersor.nn import QLinear


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(37, 64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.fp64 = nn.Linear(64, 64).double()  # bf16 / fp16 layers convert; fp64 does not
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h, _ = self.attn(h, h, h)
        return self.head(h)


def test_quantize_report_and_skips():
    model = Block()
    x = torch.randn(2, 5, 37)
    ref = model(x)
    report = tersor.quantize_(model, tersor.W8A8Config(skip_names=("head",)))
    by_name = {r.fqn: r for r in report.layers}
    assert isinstance(model.fc1, QLinear) and by_name["fc1"].scheme == "w8a8"
    assert by_name["fc1"].bytes_after < by_name["fc1"].bytes_before / 2  # padded to tiles
    assert (
        by_name["attn.out_proj"].scheme == "dense"
        and "MultiheadAttention" in by_name["attn.out_proj"].reason
    )
    assert "float64" in by_name["fp64"].reason and isinstance(model.fp64, nn.Linear)
    assert by_name["head"].reason == "listed in config.skip_names"
    assert isinstance(model.head, nn.Linear)
    out = model(x)
    assert (out - ref).norm() / ref.norm() < 0.03
    text = str(report)
    assert "fc1" in text and "1 converted to w8a8" in text and "left dense" in text


def test_filter_fn():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    report = tersor.quantize_(model, tersor.W8Config(), filter_fn=lambda m, name: name == "1")
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], QLinear)
    assert report.layers[0].reason == "filter_fn returned False"


def test_shared_module_converted_once():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    tersor.quantize_(model, tersor.W8A8Config())
    assert isinstance(model[0], QLinear) and model[0] is model[2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "cfg",
    [tersor.W8A8Config(), tersor.W8Config(), tersor.W4A8Config(group_size=32), tersor.W4Config()],
    ids=lambda c: c.scheme,
)
def test_failed_conversion_leaves_model_unchanged(bad, cfg):
    model = nn.Sequential(nn.Linear(128, 8), nn.Linear(128, 8))
    with torch.no_grad():
        model[1].weight[5, 77] = bad
    before = [id(m) for m in model]
    with pytest.raises(ValueError, match="converting '1' failed.*NaN or Inf.*model is unchanged"):
        tersor.quantize_(model, cfg)
    assert [id(m) for m in model] == before and all(isinstance(m, nn.Linear) for m in model)


def test_config_validation():
    with pytest.raises(ValueError, match="W8A8Config.kernel must be one of"):
        tersor.W8A8Config(kernel="fast")
    with pytest.raises(ValueError, match="skip_names must be a tuple of str"):
        tersor.W8Config(skip_names="head")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tersor.W8A8Config().kernel = "ref"
    with pytest.raises(TypeError, match="config must be one of"):
        tersor.quantize_(nn.Sequential(nn.Linear(2, 2)), {"bits": 8})
    with pytest.raises(ValueError, match="bare nn.Linear"):
        tersor.quantize_(nn.Linear(2, 2), tersor.W8A8Config())


def test_already_quantized_layers_are_left_alone_and_reported():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    tersor.quantize_(model, tersor.W8A8Config(), filter_fn=lambda m, fqn: fqn == "0")
    first = model[0]
    report = tersor.quantize_(model, tersor.W4Config(group_size=-1))
    assert model[0] is first and isinstance(model[1], QLinear) and model[1].scheme == "w4"
    kept, new = report.layers
    assert (kept.fqn, kept.scheme, kept.status) == ("0", "w8a8", "already compressed")
    assert "already w8a8" in kept.reason and new.status == "converted"
    assert report.kept == [kept] and report.converted == [new]
    assert "1 converted to w4, 1 already compressed (kept), 0 left dense" in str(report)


def test_int4_quantize_report_skips_indivisible_layers():
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 100), nn.Linear(100, 8))
    report = tersor.quantize_(model, tersor.W4A8Config(group_size=32))
    assert isinstance(model[0], QLinear) and isinstance(model[2], QLinear)
    assert isinstance(model[3], nn.Linear)
    reason = {r.fqn: r.reason for r in report.layers}["3"]
    assert "K=100 is not a multiple of group_size=32" in reason
    conv = {r.fqn: r for r in report.layers}["0"]
    assert conv.bytes_after < conv.bytes_before / 5
