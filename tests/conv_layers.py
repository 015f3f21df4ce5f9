"""Layer-level checks shared by the depthwise and grouped convolution tests: what other schemes
say of the layer, and the round trips (state_dict, checkpoint into a meta model, to_float,
torch.compile) of a quantized block (tests/test_conv_dw.py, tests/test_conv_grouped.py)."""

import torch
from torch import nn

import tersor


def check_w8a8_only(build, index: int, what: str) -> None:
    """The other schemes leave block `build()`'s layer `index` dense, saying only W8A8 has a
    `what` ("depthwise" / "grouped") kernel."""
    for config in (tersor.W8Config(), tersor.W4A8Config(group_size=-1), tersor.Sparse24Config()):
        m = build()
        verb = tersor.sparsify_ if isinstance(config, tersor.Sparse24Config) else tersor.quantize_
        by = {r.fqn: r for r in verb(m, config).layers}
        assert f"only W8A8 has a {what} kernel" in by[str(index)].reason
        assert type(m[index]) is nn.Conv2d


def check_round_trips(build, x: torch.Tensor, index: int, groups: int, tmp_path) -> None:
    """A W8A8 block: a fresh block loads its state_dict, a meta block its checkpoint (layer
    `index` with `groups`), the same outputs; to_float keeps the groups; torch.compile."""
    torch.manual_seed(0)
    model = build()
    tersor.quantize_(model, tersor.W8A8Config())
    y = model(x)
    fresh = build()
    tersor.quantize_(fresh, tersor.W8A8Config())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), y)
    tersor.save_pretrained(model, str(tmp_path / "ck"))
    with torch.device("meta"):
        meta = build()
    tersor.load_pretrained(meta, str(tmp_path / "ck"))
    assert meta[index].groups == groups and torch.equal(meta(x), y)
    dense = model[index].to_float()
    assert dense.groups == groups
    h = torch.randn(1, dense.in_channels, 6, 6)
    torch.testing.assert_close(dense(h), model[index](h), rtol=0.05, atol=0.05)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), y, rtol=1e-5, atol=1e-5)
