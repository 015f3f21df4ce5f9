"""The static int8 network as one native call (tersor/static_int8/program.py): bit for bit the
graph's own forward, rebuilt when scales or weights change, and the graph's forward wherever
the program does not apply."""

import copy
import threading

import pytest
import torch
from torch import nn

import tersor
from tersor.bench.cnn import mobilenet_v2, resnet18
from tersor.static_int8 import modules as M
from tersor.static_int8 import program
from test_static_int8 import _Mixed, _randomize_bn


@pytest.fixture(autouse=True)
def _fuse_small_images(monkeypatch):
    """expand_dw for the small test images too (by default only expansions of >= 1 MiB)."""
    monkeypatch.setattr(program, "FUSE_MIN_BYTES", 0)


def _graph(q, x):
    """The output of q's graph, module by module (no program)."""
    with torch.inference_mode():
        return torch.fx.Interpreter(q).run(x)


def _static(build, gen, size=48):
    torch.manual_seed(0)
    model = _randomize_bn(build(num_classes=10), gen)
    cal = [torch.randn(2, 3, size, size, generator=gen) for _ in range(2)]
    return tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)


def _entry(q, x):
    return program._PROGRAMS.get(q, {}).get(tuple(x.shape))


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("build", [resnet18, mobilenet_v2])
def test_program_matches_the_graph(build, batch, layout, isa, gen, c_ref):
    """On every ISA path, bit for bit the graph's output on the portable ref path."""
    q = _static(build, gen)
    x = torch.randn(batch, 3, 48, 48, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = c_ref(lambda: _graph(q, x))
    with torch.inference_mode():
        first = q(x)  # records the graph and builds the program (and returns the graph's output)
        entry = _entry(q, x)
        assert entry is not None and entry[1] is not None, entry
        layers = sum(isinstance(m, (M.Quantize, M.StaticConv, M.Pool, M.Add)) for m in q.modules())
        # one step per module (no view was a step), but each of MobileNetV2's 16 expansions
        # and the depthwise layer after it are one (expand_dw)
        assert entry[1].num_steps() == layers - (16 if build is mobilenet_v2 else 0)
        got = [q(x) for _ in range(3)]  # the program, its arena reused
    for y in [first, *got]:
        assert torch.equal(y, ref)


@pytest.mark.parametrize("band_bytes", [1, 3000, 1 << 30])
def test_expand_dw_bands(band_bytes, isa, gen, monkeypatch):
    """expand_dw at one output row per band (every band's edge rows, the padding rows at the
    top and bottom, stride 2 windows across bands), a few rows, and the whole image in one
    band (then halved until each thread has bands): the graph's bits."""
    monkeypatch.setattr(program, "BAND_BYTES", band_bytes)
    q = _static(mobilenet_v2, gen, size=40)
    x = torch.randn(2, 3, 40, 40, generator=gen)
    with torch.inference_mode():
        p, _, ref = program.build(q, x)
        assert p is not None and p.num_steps() == 55 - 16
        y = torch.empty(ref.shape)
        xi = x.contiguous(memory_format=torch.channels_last)
        p.run(xi.data_ptr(), y.data_ptr(), 2)
    assert torch.equal(y, ref)
    monkeypatch.setattr(program, "FUSE_MIN_BYTES", 2 * 96 * 20 * 20 + 1)  # block 2 at 20x20
    assert program.build(q, x)[0].num_steps() == 55
    monkeypatch.setattr(program, "FUSE_MIN_BYTES", 2 * 96 * 20 * 20)
    assert program.build(q, x)[0].num_steps() == 54
    monkeypatch.setattr(program, "FUSE_EXPAND_DW", False)
    assert program.build(q, x)[0].num_steps() == 55


def test_each_shape_has_its_program(gen):
    q = _static(resnet18, gen)
    xa, xb = torch.randn(2, 3, 48, 48, generator=gen), torch.randn(1, 3, 40, 40, generator=gen)
    with torch.inference_mode():
        for x in (xa, xb, xa, xb):
            assert torch.equal(q(x), _graph(q, x))
    assert _entry(q, xa)[1] is not None and _entry(q, xb)[1] is not None


def test_rebuilt_when_the_scales_change(gen):
    qa, qb = _static(resnet18, gen), _static(resnet18, gen, size=32)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    with torch.inference_mode():
        qb(x), qb(x)
        built = _entry(qb, x)
        qb.load_state_dict(qa.state_dict())
        assert M.GENERATION[0] != built[0]
        y = qb(x)
        assert _entry(qb, x)[0] == M.GENERATION[0]
    assert torch.equal(y, _graph(qa, x)) and torch.equal(qb(x), y)


def test_a_graph_the_program_cannot_hold_keeps_its_forward(gen):
    """_Mixed has a Cat, a kept-float grouped conv (its codes dequantized mid-graph) and a
    reshape: no program, the graph's forward every call, the same outputs."""
    torch.manual_seed(0)
    model = _Mixed().eval()
    cal = [torch.randn(4, 3, 12, 12, generator=gen) for _ in range(3)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)
    x = torch.randn(5, 3, 12, 12, generator=gen)
    ref = _graph(q, x)
    with torch.inference_mode():
        assert torch.equal(q(x), ref)
        entry = _entry(q, x)
        assert entry is not None and entry[1] is None and isinstance(entry[2], str)
        assert torch.equal(q(x), ref)
    p, reason, out = program.build(q, x)
    assert p is None and reason and torch.equal(out, ref)


def test_deep_copies_after_a_call(gen):
    """The programs live outside the model (a program cannot be copied): a deep copy after
    calls works and builds a program of its own."""
    q = _static(mobilenet_v2, gen)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    with torch.inference_mode():
        y = q(x)
        q(x)
        c = copy.deepcopy(q)
        assert torch.equal(c(x), y) and torch.equal(c(x), y)
        assert _entry(c, x)[1] is not None and _entry(c, x)[1] is not _entry(q, x)[1]


def test_autograd_and_other_inputs_take_the_graph(gen):
    q = _static(mobilenet_v2, gen)
    x = torch.randn(1, 3, 48, 48, generator=gen, requires_grad=True)
    y = q(x)  # grad mode: no program is built
    assert _entry(q, x) is None and torch.equal(y.detach(), _graph(q, x.detach()))
    assert program.run(q, (x.detach().double(),), {}) is None  # fp64: the graph's own errors
    assert program.run(q, (x.detach(),), {"extra": 1}) is None


def test_concurrent_calls_share_one_program(gen):
    """Two threads in the program at once: the second takes an arena of its own."""
    q = _static(mobilenet_v2, gen)
    xs = [torch.randn(2, 3, 48, 48, generator=gen) for _ in range(2)]
    refs = [_graph(q, x) for x in xs]
    with torch.inference_mode():
        q(xs[0])  # built
    bad = []

    def work(i):
        with torch.inference_mode():
            for _ in range(20):
                if not torch.equal(q(xs[i]), refs[i]):
                    bad.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_arena_places_no_live_buffers_together(gen):
    """_place on random lifetimes: buffers alive at the same step never share bytes, and a
    buffer written by a step never overlaps one that step reads (end == start is alive)."""
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        bufs = []
        for start in range(30):
            b = program._Buf(64 * int(torch.randint(1, 9, (1,), generator=g)), start)
            b.end = start + int(torch.randint(0, 6, (1,), generator=g))
            bufs.append(b)
        top = program._place(bufs)
        for i, a in enumerate(bufs):
            assert 0 <= a.offset and a.offset + a.nbytes <= top
            for b in bufs[i + 1 :]:
                if a.start <= b.end and b.start <= a.end:  # alive together
                    assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset


def test_unchanged_model_code_paths_still_compile(gen):
    q = _static(resnet18, gen)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    with torch.inference_mode():
        y = q(x)
        compiled = torch.compile(q, backend="eager", fullgraph=True)
        assert torch.equal(compiled(x), y)


class _TwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), h.mean()


def test_two_outputs_keep_the_graph(gen):
    torch.manual_seed(0)
    model = _TwoOut().eval()
    cal = [torch.randn(2, 3, 8, 8, generator=gen)]
    q = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.inference_mode():
        a, b = q(x)
        ra, rb = _graph(q, x)
        assert torch.equal(a, ra) and torch.equal(b, rb)
        assert _entry(q, x)[1] is None


def test_profile_static_names_and_times_each_step(gen):
    """profile_static: one (description, seconds) per program step, in order, the convolutions
    named by their geometry; a graph without a program is a clear error."""
    q = _static(resnet18, gen)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    with torch.inference_mode():
        rows = tersor.static_int8.profile_static(q, x, rounds=2)
    assert len(rows) == _entry(q, x)[1].num_steps()
    assert rows[0][0] == "quantize 13824"  # 2 x 48 x 48 x 3
    assert rows[-1][0] == "conv 1x1/1 512->10 2x1x1 fp32"  # the classifier
    assert rows[1][0] == "conv 7x7/2 4->64 2x24x24"  # the stem (3 channels read as 4)
    assert sum(d.startswith("conv 3x3/1 64->64 2x12x12") for d, _ in rows) == 4
    assert sum(d.endswith("+res") for d, _ in rows) == 8  # the second conv of every block
    assert all(t > 0 for _, t in rows)
    model = _Mixed().eval()
    q = tersor.quantize_static(
        model, tersor.W8A8StaticConfig(), calibration=[torch.randn(2, 3, 12, 12, generator=gen)]
    )
    with pytest.raises(ValueError, match=r"no native program for an input of shape \(2, 3"):
        tersor.static_int8.profile_static(q, torch.randn(2, 3, 12, 12, generator=gen))
    with pytest.raises(TypeError, match="expected the model quantize_static returned, got _Mixed"):
        tersor.static_int8.profile_static(model, torch.randn(2, 3, 12, 12, generator=gen))
