"""fuse_projections: q/k/v (and gate/up) as one packed call. The numbers must not change, the
module tree stays the model's, members still work alone, and copies / moves / reloads keep
every layer correct."""

import copy
import io

import pytest
import torch
from torch import nn

import tersor
from tersor.nn import PackedLinear


class Attn(nn.Module):
    def __init__(self, d=64, kv=40, bias=False):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, kv, bias=bias)
        self.v_proj = nn.Linear(d, kv, bias=bias)

    def forward(self, x, y=None, order="qkv", mutate=False):
        """The three projections in `order`; k and v read y when given; mutate: x changes in
        place after the first call."""
        out = {}
        for c in order:
            out[c] = getattr(self, f"{c}_proj")(y if (y is not None and c != "q") else x)
            if mutate and len(out) == 1:
                x.add_(1.0)
        return out["q"], out["k"], out["v"]


def _equal(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


def _pair(cfg, bias=False, kv=48):
    torch.manual_seed(0)
    a = Attn(kv=kv, bias=bias).eval()
    b = copy.deepcopy(a)
    tersor.quantize_(a, cfg, progress=False, fuse_projections=False)
    report = tersor.quantize_(b, cfg, progress=False, fuse_projections=True)
    return a, b, report


CFGS = [
    tersor.W8A8Config(),
    tersor.W8A8Config(weight_bits=7),
    tersor.W8Config(),
    tersor.W4A8Config(group_size=32),
    tersor.W4Config(group_size=32),
]


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.scheme + str(getattr(c, "weight_bits", "")))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("m", [1, 7, 33])
def test_fused_outputs_are_bitwise_the_separate_ones(isa, cfg, bias, m):
    sep, fused, report = _pair(cfg, bias)
    assert fused.q_proj._fused is not None and sep.q_proj._fused is None
    assert "one call with k_proj, v_proj" in report.layers[0].reason
    x = torch.randn(2, m, 64)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):  # each member alone, then the group
            assert torch.equal(getattr(fused, name)(x), getattr(sep, name)(x))
        assert _equal(fused(x), sep(x))
        xb = x.to(torch.bfloat16)
        assert _equal(fused(xb), sep(xb))
    with torch.inference_mode():
        assert _equal(fused(x), sep(x))


def test_one_kernel_call_per_parent_forward():
    _, fused, _ = _pair(tersor.W4A8Config(group_size=32))
    g, calls = fused.q_proj._fused, []
    run = g.fmt.cpu_call
    g.fmt.cpu_call = lambda x, b: calls.append(1) or run(x, b)
    for x in (torch.randn(1, 64), torch.randn(2, 5, 64), torch.randn(5, 128)[:, ::2]):
        calls.clear()
        with torch.no_grad():
            fused(x)
            assert len(calls) == 1
            fused(x, torch.randn(x.shape))  # k and v read another input: q's call, then k's
            assert len(calls) == 3
            fused.k_proj(x)  # outside the parent's forward: the member's own call
            assert len(calls) == 3
        g.wasted = 0


@pytest.mark.parametrize("order", ["qkv", "vkq", "kqv"])
def test_members_called_in_any_order_with_other_inputs(order):
    sep, fused, _ = _pair(tersor.W8A8Config())
    x, y = torch.randn(3, 64), torch.randn(3, 64)
    with torch.no_grad():
        assert _equal(fused(x, order=order), sep(x, order=order))
        assert _equal(fused(x, y, order=order), sep(x, y, order=order))  # k, v read y
        # x modified in place after the first call: the pending results are stale
        assert _equal(fused(x.clone(), order=order, mutate=True), sep(x, order=order, mutate=True))


def test_auto_skips_large_layers_and_unaligned_ones():
    torch.manual_seed(0)
    big = nn.Module()
    big.gate_proj, big.up_proj = (
        nn.Linear(2048, 8192, bias=False),
        nn.Linear(2048, 8192, bias=False),
    )
    tersor.quantize_(big, tersor.W8A8Config(), progress=False)
    assert big.gate_proj._fused is None  # measured: no gain at this size
    odd = Attn(kv=40)  # k_proj's 40 columns end mid-block: v_proj's views could not start there
    tersor.quantize_(odd, tersor.W8A8Config(), progress=False, fuse_projections=True)
    assert odd.q_proj._fused is None
    pinned = Attn(kv=48)  # kernel="ref" asks for the reference path: no fused native call
    tersor.quantize_(pinned, tersor.W8A8Config(kernel="ref"), progress=False, fuse_projections=True)
    assert pinned.q_proj._fused is None


def test_members_share_the_weights_no_extra_memory():
    _, fused, _ = _pair(tersor.W4A8Config(group_size=32))
    g = fused.q_proj._fused
    for m in (fused.q_proj, fused.k_proj, fused.v_proj):
        assert m.fmt.codes.untyped_storage().data_ptr() == g.fmt.codes.untyped_storage().data_ptr()


def test_copy_pickle_move_and_reload_keep_every_layer_right():
    sep, fused, _ = _pair(tersor.W8A8Config(), bias=True)
    x = torch.randn(5, 64)
    with torch.no_grad():
        ref = sep(x)
        clone = copy.deepcopy(fused)
        buf = io.BytesIO()
        torch.save(fused, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for m in (clone, loaded):
            assert m.q_proj._fused is not None and m.q_proj._fused is not fused.q_proj._fused
            assert _equal(m(x), ref)
        # a state_dict load into one member: the group dissolves, the new weights are used
        other = Attn(kv=48, bias=True)
        tersor.quantize_(other, tersor.W8A8Config(), progress=False, fuse_projections=False)
        fused.k_proj.load_state_dict(other.k_proj.state_dict())
        assert fused.q_proj._fused is None
        assert torch.equal(fused.k_proj(x), other.k_proj(x))
        assert torch.equal(fused.q_proj(x), sep.q_proj(x))
        clone.to("cpu")  # a move dissolves (members then own their tensors)
        assert clone.q_proj._fused is None and _equal(clone(x), ref)


def test_threads_get_their_own_results():
    import threading

    sep, fused, _ = _pair(tersor.W4A8Config(group_size=32))
    xs = [torch.randn(4, 64) for _ in range(4)]
    with torch.no_grad():
        want = [sep(x) for x in xs]
    got = [None] * 4

    def work(i):
        with torch.no_grad():
            for _ in range(50):
                got[i] = fused(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(_equal(a, b) for a, b in zip(got, want))


def test_llama_fused_by_default_same_logits():
    pytest.importorskip("transformers", reason="transformers is not installed")
    from llm_models import tiny_llm

    a = tiny_llm("llama")
    b = copy.deepcopy(a)
    tersor.quantize_(a, tersor.W4A8Config(group_size=32), progress=False)
    tersor.quantize_(b, tersor.W4A8Config(group_size=32), progress=False, fuse_projections=False)
    attn = a.model.layers[0].self_attn
    assert attn.q_proj._fused is not None and a.model.layers[0].mlp.gate_proj._fused is not None
    assert isinstance(attn.k_proj, PackedLinear)  # the tree is the model's
    ids = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
        assert torch.equal(
            a.generate(ids, max_new_tokens=5, do_sample=False),
            b.generate(ids, max_new_tokens=5, do_sample=False),
        )


def test_fused_model_compiles_fullgraph():
    sep, fused, _ = _pair(tersor.W8A8Config())
    x = torch.randn(3, 64)
    with torch.no_grad():
        got = torch.compile(fused, fullgraph=True)(x)
        assert _equal(got, sep(x))


def test_a_group_is_narrow_only_when_every_member_is():
    """The AVX2 kernel trusts the narrow-weight hint (every |w| <= 64) without looking: a group
    holding one 8-bit member must not carry it, and its outputs stay the members' own."""
    torch.manual_seed(0)
    a = Attn(kv=48).eval()
    tersor.quantize_(a, tersor.W8A8Config(weight_bits=7), progress=False, fuse_projections=False)
    q8 = tersor.nn.QLinear.from_float(nn.Linear(64, 48, bias=False), tersor.W8A8Config())
    a.v_proj.load_state_dict(q8.state_dict())  # 8-bit codes in the last member
    assert not a.v_proj.fmt.narrow_w and a.q_proj.fmt.narrow_w
    x = torch.randn(33, 64) * 4
    with torch.no_grad():
        want = a(x)
        tersor.fuse_projections(a, mode=True)
        assert a.q_proj._fused is not None and not a.q_proj._fused.fmt.narrow_w
        assert _equal(a(x), want)
