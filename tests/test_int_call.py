"""The kernels bound as integer functions (csrc/bindings/int_call.h, not pybind11's dispatcher):
the calls pybind11 took (positional, keyword, defaults, numpy integers) give the same outputs,
and every malformed call raises the error pybind11 raised, naming the function and argument."""

import numpy as np
import pytest
import torch

from tersor import _C
from tersor.formats.int8 import pack_int8, quantize_per_channel_int8

INT_FUNCTIONS = [
    "gemm_w8a8",
    "gemm_w8",
    "gemm_w8_bf16",
    "gemm_w8_bf16_tiles",
    "gemm_w8_fp32_tiles",
    "gemm_w4",
    "gemm_w4_bf16",
    "gemm_w4_bf16_tiles",
    "gemm_w4_fp32_tiles",
    "gemm_w4a8",
    "spmm_24",
    "spmm_24_w8a8",
    "spmm_csr",
    "spmm_csr_w8a8",
    "spmm_block_f32",
    "spmm_block_w8a8",
]


def _w8a8(gen, m=7, k=37, n=33):
    x = torch.randn(m, k, generator=gen)
    q, s = quantize_per_channel_int8(torch.randn(n, k, generator=gen))
    p = pack_int8(q, s)
    bias = torch.randn(n, generator=gen)
    pos = [x.data_ptr(), m, k, k, p.packed.data_ptr(), p.colsum.data_ptr(), p.scale.data_ptr(), n]
    return (x, p), bias, pos, n  # (x, p): the tensors behind the addresses, kept alive


def _run(pos, bias, n, m, **kw):
    y = torch.full((m, n), float("nan"))
    _C.gemm_w8a8(*pos, bias.data_ptr(), y.data_ptr(), n, 1, **kw)
    return y


@pytest.mark.parametrize("name", INT_FUNCTIONS)
def test_signature_line_as_pybind11_wrote_it(name):
    fn = getattr(_C, name)
    assert type(fn).__name__ == "builtin_function_or_method" and fn.__module__ == "tersor._C"
    first = fn.__doc__.partition("\n")[0]
    assert first.startswith(f"{name}(x: int, M: int, K: int, ldx: int, ")
    assert first.endswith(", nthreads: int) -> None") or "nthreads: int, " in first
    if name.startswith("gemm"):
        assert "io: int = 0, x_scale: int = 0" in first


def test_keywords_defaults_and_numpy_integers_give_the_same_output(gen):
    (x, _), bias, pos, n = _w8a8(gen)
    m = x.shape[0]
    want = _run(pos, bias, n, m)
    assert torch.isfinite(want).all()
    assert torch.equal(_run(pos, bias, n, m, io=0, x_scale=0, row_amax=0, narrow_w=False), want)
    assert torch.equal(_run(pos, bias, n, m, narrow_w=np.bool_(False), row_amax=np.int64(0)), want)
    names = ["x", "M", "K", "ldx", "w", "colsum", "w_scale", "N"]
    y = torch.full((m, n), float("nan"))
    kw = dict(zip(names, pos), bias=bias.data_ptr(), y=y.data_ptr(), ldy=n, nthreads=1)
    _C.gemm_w8a8(**kw)
    assert torch.equal(y, want)
    y2 = torch.full((m, n), float("nan"))
    _C.gemm_w8a8(*[np.int64(v) for v in pos], bias.data_ptr(), y2.data_ptr(), n, True)
    assert torch.equal(y2, want)
    # the argument is read: no bias differs by the bias
    y3 = torch.full((m, n), float("nan"))
    _C.gemm_w8a8(*pos, 0, y3.data_ptr(), n, 1)
    torch.testing.assert_close(y3 + bias, want)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda p: _C.gemm_w8a8(*p[:5]), TypeError, ["gemm_w8a8()", "missing 'colsum'"]),
        (lambda p: _C.gemm_w8a8(*p, 0, 0, 1, 1, 0, 0, 0, 0, 0), TypeError, ["takes 16"]),
        (lambda p: _C.gemm_w8a8(*p, 0, 0, 1, 1, bogus=1), TypeError, ["named 'bogus'"]),
        (lambda p: _C.gemm_w8a8(*p, 0, 0, 1, 1, x=1), TypeError, ["'x' given twice"]),
        (lambda p: _C.gemm_w8a8(*p, 0, 0, 1, 1.0), TypeError, ["'nthreads'", "float"]),
        (lambda p: _C.gemm_w8a8(*p, None, 0, 1, 1), TypeError, ["'bias'", "NoneType"]),
        (lambda p: _C.gemm_w8a8(*p, 1 << 64, 0, 1, 1), OverflowError, ["'bias'"]),
        (lambda p: _C.gemm_w8a8(*p, -(1 << 63) - 1, 0, 1, 1), OverflowError, ["'bias'"]),
    ],
)
def test_malformed_calls_raise_naming_the_argument(gen, call, error, words):
    held, _, pos, _ = _w8a8(gen)
    with pytest.raises(error) as e:
        call(pos)
    for w in words:
        assert w in str(e.value)


def test_kernel_exceptions_become_pybind11s_python_exceptions():
    # gemm_w8a8 throws std::invalid_argument above its K limit (before reading any row)
    with pytest.raises(ValueError, match="K > 65536"):
        _C.gemm_w8a8(0, 0, 70000, 70000, 0, 0, 0, 16, 0, 0, 16, 1)


def test_int_partial_runs_the_kernel_with_the_bound_arguments(gen):
    (x, p), bias, pos, n = _w8a8(gen)
    m = x.shape[0]
    want = _run(pos, bias, n, m)
    names = ["x", "M", "K", "ldx", "w", "colsum", "w_scale", "N"]
    bound = dict(zip(names[2:], pos[2:]), ldy=n)
    call = _C.int_partial(_C.gemm_w8a8, **bound)
    assert (
        call.__name__ == "gemm_w8a8" and "K, ldx, w, colsum, w_scale, N, ldy bound" in call.__doc__
    )
    for args, kw in [
        ((x.data_ptr(), m, bias.data_ptr()), {"nthreads": 1}),  # y by keyword below
        ((x.data_ptr(), m, bias.data_ptr()), {"nthreads": 2, "narrow_w": False}),
    ]:
        y = torch.full((m, n), float("nan"))
        call(*args, y=y.data_ptr(), **kw)
        assert torch.equal(y, want)
    y = torch.full((m, n), float("nan"))
    call(x.data_ptr(), m, bias.data_ptr(), y.data_ptr(), 1, 0)  # positional: the unbound ones
    assert torch.equal(y, want)
    with pytest.raises(TypeError, match="argument 'K' is bound"):
        call(x.data_ptr(), m, bias.data_ptr(), y.data_ptr(), 1, K=3)
    with pytest.raises(TypeError, match="takes 9 arguments, got 10"):  # x M bias y nthreads io..
        call(*range(10))
    with pytest.raises(TypeError, match="missing 'nthreads'"):
        call(x.data_ptr(), m, bias.data_ptr(), y.data_ptr())
    with pytest.raises(TypeError, match="no unbound argument 'K'"):
        _C.int_partial(call, K=1)  # a partial of a partial binds only what is left
    with pytest.raises(TypeError, match="no unbound argument 'bogus'"):
        _C.int_partial(_C.gemm_w8a8, bogus=1)
    with pytest.raises(TypeError, match="'w' must be an int"):
        _C.int_partial(_C.gemm_w8a8, w=1.5)
    with pytest.raises(TypeError, match="integer functions"):
        _C.int_partial(print, K=1)
    with pytest.raises(TypeError, match="integer functions"):
        _C.int_partial(_C.cpu_info, K=1)
    # a partial is freed with its last reference (a layer's prepared calls die with it)
    import weakref

    ref = weakref.ref(call)
    del call
    assert ref() is None
