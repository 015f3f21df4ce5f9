"""tersor.distill_: the compressed student learns from its float teacher, its layers keep their
formats (grids, masks) and run on the kernels afterwards."""

import copy

import pytest
import torch
from torch import nn

import tersor


def _data(n, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    return torch.randn(n, k, generator=g) @ mix


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))


CASES = {
    "w4a8 g32": lambda m: tersor.quantize_(m, tersor.W4A8Config(group_size=32), progress=False),
    "w4a16 g32": lambda m: tersor.quantize_(
        m, tersor.W4A8Config(group_size=32, act_bits=16), progress=False
    ),
    "w8a8": lambda m: tersor.quantize_(m, tersor.W8A8Config(), progress=False),
    "w4 act-order gptq": lambda m: tersor.quantize_(
        m,
        tersor.W4Config(group_size=32, method="gptq", act_order=True),
        calibration=_data(256, seed=1),
        progress=False,
    ),
    "2:4 + w8a8": lambda m: (
        tersor.sparsify_(m, tersor.Sparse24Config()),
        tersor.quantize_(m, tersor.W8A8Config(), progress=False),
    ),
    "unstructured": lambda m: tersor.sparsify_(
        m, tersor.SparseConfig(sparsity=0.75, dense_below=0.0)
    ),
}


# relative lr per case: sparse layers (no grid) take larger steps; W8A8's error is its
# activations' rounding, which weight training cannot lower: it must at least not get worse
LR = {"2:4 + w8a8": 1e-2, "unstructured": 1e-2}


@pytest.mark.filterwarnings("ignore:distill_. training did not lower")
@pytest.mark.parametrize("case", list(CASES))
def test_distill_lowers_the_error_and_keeps_the_format(case):
    teacher = _mlp()
    student = copy.deepcopy(teacher)
    CASES[case](student)
    before = [copy.deepcopy(m.fmt) for m in (student[0], student[2])]
    train, test = _data(1024, seed=2).split([768, 256])
    with torch.no_grad():
        ref = teacher(test)
        err0 = (student(test) - ref).norm() / ref.norm()
    losses = tersor.distill_(
        student, teacher, list(train.split(64)), steps=120, lr=LR.get(case, 3e-3), progress=False
    )
    assert len(losses) == 120
    with torch.no_grad():
        err1 = (student(test) - ref).norm() / ref.norm()
    if case == "w8a8":
        assert err1 <= err0 * 1.05, (float(err0), float(err1))
    else:
        assert err1 < 0.9 * err0, (float(err0), float(err1))
    for layer, old in zip((student[0], student[2]), before):
        assert isinstance(layer, tersor.PackedLinear) and type(layer.fmt) is type(old)
        assert layer.scheme == old.scheme and layer.fmt.options() == old.options()
        w_new, w_old = layer.dequantized_weight(), old.dequantize()
        if "w4" in case or case == "w8a8":  # the grid stays: the same scales
            assert torch.equal(layer.fmt.canonical()[1], old.canonical()[1])
        if "2:4" in case or case == "unstructured":  # the mask stays
            assert bool(((w_new != 0) <= (w_old != 0)).all())  # no pruned weight comes back


@pytest.mark.filterwarnings("ignore:distill_. training did not lower")
def test_distill_conv_and_kl_on_logits():
    torch.manual_seed(3)
    teacher = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    student = copy.deepcopy(teacher)
    tersor.quantize_(student, tersor.W4A8Config(group_size=-1), progress=False)
    assert isinstance(student[0], tersor.QConv2d)
    x = torch.randn(128, 1, 8, 8)

    class Out:
        def __init__(self, logits):
            self.logits = logits

    with torch.no_grad():
        ref = teacher(x)
        err0 = (student(x) - ref).norm() / ref.norm()
    losses = tersor.distill_(
        student,
        teacher,
        list(x.split(16)),
        steps=60,
        lr=1e-2,
        forward=lambda m, b: Out(m(b)),
        progress=False,
    )
    assert len(losses) == 60 and all(v == v and v >= 0 for v in losses)  # KL: finite, >= 0
    assert isinstance(student[0], tersor.QConv2d) and student[0].scheme == "w4a8"
    with torch.no_grad():  # improved, or kept as it was (the held-out guard)
        assert (student(x) - ref).norm() / ref.norm() <= err0 + 1e-6


def test_distill_errors():
    with pytest.raises(ValueError, match="no tersor layers"):
        tersor.distill_(_mlp(), _mlp(), torch.randn(4, 64), steps=1)
    student = _mlp()
    tersor.quantize_(student, tersor.W8A8Config(), progress=False)
    with pytest.raises(ValueError, match="loss must be"):
        tersor.distill_(student, _mlp(), torch.randn(4, 64), steps=1, loss="l1")
    # the failed call left the student's layers in place and runnable
    assert isinstance(student[0], tersor.PackedLinear)
    student(torch.randn(2, 64))


def test_distill_keeps_the_layers_when_held_out_loss_rises():
    """An lr far too large wrecks the shadows: the held-out batch says so, the layers stay."""
    teacher = _mlp()
    student = copy.deepcopy(teacher)
    tersor.quantize_(student, tersor.W4A8Config(group_size=32), progress=False)
    old = student[0].fmt.canonical()
    batches = list(_data(512, seed=4).split(64))  # 8 batches: the last one held out
    with pytest.warns(UserWarning, match="did not lower the loss on 1 held-out batch"):
        tersor.distill_(student, teacher, batches, steps=20, lr=30.0, progress=False)
    for a, b in zip(student[0].fmt.canonical(), old):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:distill_. training did not lower")
def test_distill_llm_smoke():
    """A tiny Llama (KL on logits, fused q/k/v): a few steps run, the layers come back packed and
    fused, and the model still generates."""
    pytest.importorskip("transformers")
    from tests.llm_models import tiny_llm

    teacher = tiny_llm("llama")
    student = copy.deepcopy(teacher)
    tersor.quantize_(student, tersor.W4A8Config(group_size=32), progress=False)
    attn = student.model.layers[0].self_attn
    assert attn.q_proj._fused is not None
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 128, (2, 16), generator=gen) for _ in range(5)]
    losses = tersor.distill_(student, teacher, batches, steps=6, progress=False)
    assert len(losses) == 6 and all(v == v for v in losses)
    attn = student.model.layers[0].self_attn
    assert isinstance(attn.q_proj, tersor.PackedLinear) and attn.q_proj._fused is not None
    with torch.no_grad():
        out = student.generate(batches[0][:1], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 19)


def test_distill_block_loss():
    """block_loss adds each decoder block's output MSE against the teacher's: the student's
    blocks end closer to the teacher's than they started; models without blocks refuse it."""
    pytest.importorskip("transformers")
    from tests.llm_models import tiny_llm

    teacher = tiny_llm("llama")
    student = copy.deepcopy(teacher)
    tersor.quantize_(student, tersor.W4A8Config(group_size=-1), progress=False)
    gen = torch.Generator().manual_seed(6)
    batches = [torch.randint(0, 128, (2, 16), generator=gen) for _ in range(8)]

    def block_err(model):
        outs = {}
        hooks = [
            b.register_forward_hook(lambda m, a, o, i=i, k=k: outs.__setitem__((k, i), o))
            for k, net in enumerate((model, teacher))
            for i, b in enumerate(net.model.layers)
        ]
        with torch.no_grad():  # a training batch: what the block term pulls together
            model(batches[0])
            teacher(batches[0])
        for h in hooks:
            h.remove()
        first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
        return sum(
            float((first(outs[(0, i)]) - first(outs[(1, i)])).square().mean())
            for i in range(len(model.model.layers))
        )

    before = block_err(student)
    losses = tersor.distill_(
        student, teacher, batches, steps=40, lr=1e-2, block_loss=1.0, progress=False
    )
    assert len(losses) == 40 and losses[-1] < losses[0]
    assert block_err(student) < 0.85 * before
    mlp = _mlp()
    tersor.quantize_(mlp, tersor.W8A8Config(), progress=False)
    with pytest.raises(ValueError, match="block_loss needs a model"):
        tersor.distill_(mlp, _mlp(), torch.randn(4, 64), steps=1, block_loss=1.0)


def test_sixteen_bit_activations_train_as_float_ones():
    """act_bits=16 layers are within amax / 64516 of float activations: no int8 fake-quant."""
    from tersor.distill import _Shadow

    for bits, fq in ((8, True), (16, False)):
        m = _mlp()
        tersor.quantize_(m, tersor.W4A8Config(group_size=32, act_bits=bits), progress=False)
        assert _Shadow(m[0]).act_int8 is fq
