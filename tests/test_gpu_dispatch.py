"""The device path of the layers without a GPU: the kernel preference (kernel=), the Triton
kernels reached through the layers on CPU tensors under TRITON_INTERPRET=1, the GPU weight
layouts the CUDA kernels read (checked element by element against their specification), and
the errors a request that cannot run gets. GPU runs are in test_cuda.py (-m cuda)."""

import itertools
import os

import pytest
import torch
from torch import nn

import tersor
from tersor.formats.int4 import shuffle_w4_mma
from tersor.formats.sparse24 import compress_24, meta_words_24, prune_24
from tersor.nn import QLinear
from tersor.ops import device

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install '.[test]')")


def layer(scheme, k=64, n=40, kernel="auto", seed=0, **kw):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    cfg = {
        "w8a8": tersor.W8A8Config,
        "w8": tersor.W8Config,
        "w4": tersor.W4Config,
        "w4a8": tersor.W4A8Config,
    }[scheme](kernel=kernel, **kw)
    return QLinear.from_float(lin, cfg, name="fc")


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize(
    "scheme,kw",
    [
        ("w8a8", {}),
        ("w8", {}),
        ("w4", {"group_size": 32}),
        ("w4", {"group_size": 64, "symmetric": True}),
    ],
)
def test_triton_path_through_the_layer_matches_the_cpu_kernel(scheme, kw, m):
    ref = layer(scheme, **kw)
    tri = layer(scheme, kernel="triton", **kw)
    x = torch.randn(m, 64)
    y, y_ref = tri(x), ref(x)
    # same weights; W8A8 differs from the CPU kernel only in fp32 rounding of the epilogue
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_kernel_preference_errors_name_the_layer_and_the_reason():
    lay = layer("w8a8", kernel="cuda")
    with pytest.raises(
        RuntimeError,
        match=r"layer 'fc' \(w8a8.*kernel='cuda' cannot run here "
        r"\(cuda: the input is not a CUDA tensor\)",
    ):
        lay(torch.randn(3, 64))
    w4a8 = layer("w4a8", kernel="triton", group_size=32)
    with pytest.raises(RuntimeError, match="no triton kernel for this scheme"):
        w4a8(torch.randn(3, 64))
    with pytest.raises(ValueError, match="kernel must be one of"):
        tersor.W8A8Config(kernel="cublas")
    with pytest.raises(ValueError, match="kernel must be one of"):
        QLinear(8, 8, kernel="gpu")


def test_pick_order(monkeypatch):
    x = torch.randn(2, 16)
    assert device.pick("ref", x, ("cuda", "triton"), "l") == "ref"
    assert device.pick("auto", x, ("cuda", "triton"), "l") == "triton"  # interpreter, no GPU
    assert device.pick("auto", x, ("cuda",), "l") == "ref"  # auto never raises
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert device.pick("auto", x, ("cuda", "triton"), "l") == "ref"
    with pytest.raises(RuntimeError, match="Triton runs CPU tensors only under"):
        device.pick("triton", x, ("triton",), "l")
    monkeypatch.setattr(device, "cuda_unavailable", lambda x: "")
    assert device.pick("auto", x, ("cuda", "triton"), "l") == "cuda"  # CUDA first when it can


def test_w4_mma_shuffle_matches_its_specification():
    q = torch.randint(0, 16, (70, 48), dtype=torch.uint8)
    w = shuffle_w4_mma(q)
    assert w.shape == (3, 3, 2, 32) and w.dtype == torch.int32

    def code(c, k):
        return int(q[c, k]) if c < 70 else 0

    for cb, kb, p, g, t in itertools.product(range(3), range(3), range(2), range(8), range(4)):
        word = int(w[cb, kb, p, 4 * g + t]) & 0xFFFFFFFF
        c0, k0 = cb * 32 + 16 * p + g, 16 * kb + 2 * t
        c1 = c0 + 8
        expect = [
            code(c0, k0),
            code(c0, k0 + 8),
            code(c1, k0),
            code(c1, k0 + 8),
            code(c0, k0 + 1),
            code(c0, k0 + 9),
            code(c1, k0 + 1),
            code(c1, k0 + 9),
        ]
        assert [(word >> (4 * i)) & 15 for i in range(8)] == expect


def test_24_meta_words_match_their_specification():
    w = prune_24(torch.randn(5, 64))
    _, meta = compress_24(w)
    words = meta_words_24(meta)
    assert words.shape == (5, 2)
    for n, j, c in itertools.product(range(5), range(2), range(8)):
        assert (int(words[n, j]) >> (4 * c)) & 15 == int(meta[n, 8 * j + c])


def test_gpu_weight_cache_follows_the_weights():
    lay = layer("w8a8", kernel="triton")
    x = torch.randn(3, 64)
    y0 = lay(x)
    other = QLinear.from_float(nn.Linear(64, 40), tersor.W8A8Config())
    lay.load_state_dict(other.state_dict())
    assert not torch.equal(lay(x), y0)  # new weights reach the device path
    torch.testing.assert_close(lay(x), other(x), rtol=1e-5, atol=1e-5)
