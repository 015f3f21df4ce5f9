"""Large packed weights live in huge-page mappings (formats/huge_pages.py): the values, the
outputs and the memory a layer holds must be the same as in torch's own allocations."""

import copy
import io

import pytest
import torch
from torch import nn

import tersor
from tersor.formats import huge_pages

pytestmark = pytest.mark.skipif(
    not huge_pages.enabled(),
    reason="no transparent huge pages on this host (THP never, or not Linux)",
)


@pytest.fixture
def small_min(monkeypatch):
    """Layers of a few hundred KiB count as large: the tests stay cheap."""
    monkeypatch.setattr(huge_pages, "MIN_BYTES", 64 << 10)


def test_place_copies_large_tensors_into_aligned_mappings(small_min):
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.int8, torch.uint8, torch.int16):
        t = (torch.randn(301, 517) * 50).to(dtype)
        got = huge_pages.place(t)
        assert got is not t and huge_pages.in_huge_pages(got)
        assert got.dtype == dtype and got.shape == t.shape and torch.equal(got, t)
        assert got.data_ptr() % huge_pages.HUGE_PAGE == 0
        assert huge_pages.place(got) is got  # placed once
        assert huge_pages.in_huge_pages(got[3:7])  # views share the mapping


def test_place_leaves_small_strided_and_disabled_tensors(small_min, monkeypatch):
    small = torch.randn(64, 64)
    strided = torch.randn(600, 600).t()
    assert huge_pages.place(small) is small
    assert huge_pages.place(strided) is strided
    assert not huge_pages.in_huge_pages(small)
    monkeypatch.setenv("TERSOR_HUGE_PAGES", "0")
    big = torch.randn(600, 600)
    assert huge_pages.place(big) is big
    assert not huge_pages.in_huge_pages(huge_pages.empty((600, 600), torch.float32))


def test_empty_maps_only_large_tensors(small_min):
    assert huge_pages.in_huge_pages(huge_pages.empty((600, 600), torch.float32))
    assert not huge_pages.in_huge_pages(huge_pages.empty((60, 60), torch.float32))


CFGS = {
    "w8a8": (tersor.quantize_, tersor.W8A8Config()),
    "w4a8": (tersor.quantize_, tersor.W4A8Config(group_size=32)),
    "w4": (tersor.quantize_, tersor.W4Config(group_size=128)),
    "w8": (tersor.quantize_, tersor.W8Config()),
    "2:4": (tersor.sparsify_, tersor.Sparse24Config()),
    "unstructured": (tersor.sparsify_, tersor.SparseConfig(0.9)),
    "block": (tersor.sparsify_, tersor.SparseConfig(0.75, block=(4, 4))),
}


def _converted(name, lin):
    verb, cfg = CFGS[name]
    m = nn.Sequential(copy.deepcopy(lin))
    verb(m, cfg, progress=False)
    return m[0]


@pytest.mark.parametrize("name", list(CFGS))
def test_layers_stream_from_huge_pages_with_the_same_outputs(small_min, monkeypatch, name):
    """Every scheme's streamed tensors are placed (at conversion, not by a copy afterwards for
    the packing loops that write into huge_pages.empty) and the outputs are bit for bit those
    of the layer built in torch's memory."""
    torch.manual_seed(1)
    lin = nn.Linear(1024, 780).eval()
    monkeypatch.setenv("TERSOR_HUGE_PAGES", "0")
    plain = _converted(name, lin)
    monkeypatch.delenv("TERSOR_HUGE_PAGES")
    placed = _converted(name, lin)
    fmt = placed.fmt
    names = [n for n in (fmt.streamed_names or fmt.tensor_names) if getattr(fmt, n) is not None]
    large = [n for n in names if getattr(fmt, n).nbytes >= huge_pages.MIN_BYTES]
    assert large, f"{name}: no tensor large enough to test"
    for n in large:
        assert huge_pages.in_huge_pages(getattr(fmt, n)), f"{name}.{n}"
        assert not huge_pages.in_huge_pages(getattr(plain.fmt, n))
    with torch.inference_mode():
        for m in (1, 7, 33):
            x = torch.randn(m, 1024)
            assert torch.equal(placed(x), plain(x)), (name, m)


def test_fused_members_share_the_groups_mapping(small_min):
    """A fused group's members read views of its concatenated tensors: one mapping, no copy
    per member."""
    torch.manual_seed(2)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(512, 512) for _ in range(3))

    model = Attn().eval()
    tersor.quantize_(model, tersor.W8A8Config(), progress=False, fuse_projections=True)
    group = model.q_proj._fused
    assert group is not None and huge_pages.in_huge_pages(group.fmt.packed)
    storage = group.fmt.packed.untyped_storage().data_ptr()
    for m in (model.q_proj, model.k_proj, model.v_proj):
        assert m.fmt.packed.untyped_storage().data_ptr() == storage


def test_copies_and_pickles_land_in_huge_pages_again(small_min):
    torch.manual_seed(3)
    layer = _converted("w8a8", nn.Linear(700, 600).eval())
    x = torch.randn(5, 700)
    with torch.inference_mode():
        want = layer(x)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    for other in (copy.deepcopy(layer), torch.load(buf, weights_only=False)):
        assert huge_pages.in_huge_pages(other.fmt.packed)
        assert other.fmt.packed.data_ptr() != layer.fmt.packed.data_ptr()
        with torch.inference_mode():
            assert torch.equal(other(x), want)
