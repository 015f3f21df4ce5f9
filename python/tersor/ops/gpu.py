"""The device path of the ops (any tensor that is not served by the native CPU kernels: CUDA
tensors, and kernel="triton" / "ref" on CPU tensors): GPU weight forms, cached per packed
tensor, and one function per family that runs the kernel ops/device.py picks ("cuda",
"triton" or "ref"). The ops' device registrations call these; nothing else does.

GPU weight forms (built from the canonical form once per packed tensor, ``forms``):
    int8:  q int8 [N, K], scale fp32 [N]                       (Triton, CUDA W8A8)
    int4:  nibbles uint8 [N, K/2], scale fp16 [N, NG], zero uint8 [N, NG] or None (Triton);
           words int32 (formats/int4.py shuffle_w4_mma), scale / 1024 + zero fp16 [NG, Np] (CUDA)
    2:4:   values fp16 [N, K/2], meta words int32 [N, K/32]     (CUDA mma.sp; sparse24_forms)

Large M: past DEQUANT_ROWS rows a weight-only layer dequantizes the whole weight (Triton) and
runs cuBLAS, the dequantize + GEMM path DESIGN allows where it is faster; the thresholds are
what bench/gpu_check.sh measures (they are the CPU-side defaults until a GPU run sets them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from tersor.ops import device

DEQUANT_ROWS = {"w8": 1, "w4": 256}  # W8 has no fused GPU kernel: always dequantize + GEMM


_FORMS = WeakIdKeyDictionary()


def forms(key: torch.Tensor, build):
    """The GPU weight form built from a packed weight by build(), cached per tensor: keyed by
    the identity of the packed tensor `key` (formats replace their tensors when they load new
    weights or move, so a cached form never outlives the weights it came from)."""
    hit = _FORMS.get(key)
    if hit is None:
        hit = build()
        _FORMS[key] = hit
    return hit


def _cuda_ext():
    return device.cuda_extension()[0]


def w8a8(x2, q, scale, bias, kernel, what):
    """x2 [M, K] float (fp32 / fp16 / bf16) -> [M, N] in x2's dtype."""
    k = device.pick(kernel, x2, ("cuda", "triton") if x2.shape[1] % 16 == 0 else ("triton",), what)
    if k == "cuda":
        ext, s = _cuda_ext(), device.stream_of(x2)
        m, kk = x2.shape
        xin = x2 if x2.dtype in (torch.float32, torch.float16) else x2.float()
        xin = xin.contiguous()
        xq = torch.empty(m, kk, dtype=torch.int8, device=x2.device)
        sx = torch.empty(m, dtype=torch.float32, device=x2.device)
        ext.quantize_rows(
            xin.data_ptr(),
            xin.dtype == torch.float16,
            m,
            kk,
            xin.stride(0),
            xq.data_ptr(),
            kk,
            sx.data_ptr(),
            s,
        )
        half = x2.dtype == torch.float16
        y = torch.empty(
            m, q.shape[0], dtype=torch.float16 if half else torch.float32, device=x2.device
        )
        b = None if bias is None else bias.float().contiguous()
        ext.gemm_w8a8(
            xq.data_ptr(),
            sx.data_ptr(),
            q.data_ptr(),
            scale.data_ptr(),
            0 if b is None else b.data_ptr(),
            y.data_ptr(),
            half,
            m,
            q.shape[0],
            kk,
            s,
        )
        return y.to(x2.dtype)
    if k == "triton":
        from tersor.triton_kernels import gemm_w8a8 as tw8

        return tw8.gemm_w8a8(x2.float().contiguous(), q, scale, bias).to(x2.dtype)
    from tersor.ref.int8 import gemm_w8a8_ref

    return gemm_w8a8_ref(x2.float(), q, scale, bias).to(x2.dtype)


def w8(x2, q, scale, bias, kernel, what):
    k = device.pick(kernel, x2, ("triton",), what)
    if k == "triton":
        from tersor.triton_kernels import dequant as tdq

        w = tdq.dequant_w8(q, scale, x2.dtype)
        return F.linear(x2, w, None if bias is None else bias.to(x2.dtype))
    from tersor.ref.int8 import gemm_w8_ref

    return gemm_w8_ref(x2.float(), q, scale, bias).to(x2.dtype)


def w4(x2, gw, group_size, bias, kernel, what):
    """Weight-only int4; gw: dict of the int4 GPU forms."""
    m, kk = x2.shape
    cuda_ok = x2.dtype == torch.float16 and group_size % 16 == 0 and kk % group_size == 0
    k = device.pick(kernel, x2, ("cuda", "triton") if cuda_ok else ("triton",), what)
    n = gw["nibbles"].shape[0]
    if k == "cuda":
        ext = _cuda_ext()
        xin = x2.contiguous()
        if xin.stride(0) % 8:
            xin = F.pad(xin, (0, 8 - kk % 8))[:, :kk]
        from tersor.triton_kernels.gemm_w4 import split_k_for

        sms = torch.cuda.get_device_properties(x2.device).multi_processor_count
        split = split_k_for(m, n, kk // group_size, 128, sms)
        y = (torch.zeros if split > 1 else torch.empty)(m, n, dtype=torch.float32, device=x2.device)
        b = None if bias is None else bias.float().contiguous()
        ext.gemm_w4(
            xin.data_ptr(),
            xin.stride(0),
            gw["words"].data_ptr(),
            gw["scale_t"].data_ptr(),
            gw["zf_t"].data_ptr(),
            gw["scale_t"].shape[1],
            0 if b is None else b.data_ptr(),
            y.data_ptr(),
            m,
            n,
            kk,
            group_size,
            split,
            device.stream_of(x2),
        )
        return y.to(x2.dtype)
    if k == "triton":
        from tersor.triton_kernels import dequant as tdq
        from tersor.triton_kernels import gemm_w4 as tw4

        if m >= DEQUANT_ROWS["w4"] and x2.is_cuda:
            w = tdq.dequant_w4(gw["nibbles"], gw["scale"], gw["zero"], group_size, kk, x2.dtype)
            return F.linear(x2, w, None if bias is None else bias.to(x2.dtype))
        bk = 32 if group_size % 32 == 0 else 16
        return tw4.gemm_w4(
            x2.contiguous(), gw["nibbles"], gw["scale"], gw["zero"], group_size, bias, block_k=bk
        )
    from tersor.formats.int4 import dequantize_int4, from_nibbles

    w = dequantize_int4(from_nibbles(gw["nibbles"], kk), gw["scale"], gw["zero"], group_size)
    y = x2.double() @ w.double().t()
    return (y if bias is None else y + bias.double()).to(x2.dtype)


def int4_forms(q, scale, zero, group_size: int, cuda: bool) -> dict:
    """The int4 GPU forms from the canonical (q [N, K], scale fp16 [N, NG], zero or None)."""
    from tersor.formats.int4 import shuffle_w4_mma, to_nibbles

    dev = scale.device
    forms = {
        "nibbles": to_nibbles(q.cpu()).to(dev),
        "scale": scale.contiguous(),
        "zero": None if zero is None else zero.contiguous(),
    }
    if cuda and q.shape[1] % 16 == 0 and group_size % 16 == 0:
        n = q.shape[0]
        np_ = -(-n // 32) * 32
        z = (
            zero.to(torch.float32)
            if zero is not None
            else torch.full_like(scale, 8.0, dtype=torch.float32)
        )
        st = torch.zeros(scale.shape[1], np_, dtype=torch.float16, device=dev)
        zt = torch.full((scale.shape[1], np_), 1024.0 + 8, dtype=torch.float16, device=dev)
        st[:, :n] = scale.t()
        zt[:, :n] = (1024.0 + z).t().to(torch.float16)  # exact: integers below 2048
        forms.update(words=shuffle_w4_mma(q.cpu()).to(dev), scale_t=st, zf_t=zt)
    return forms


def spmm_24(x2, sf, bias, kernel, what, dense_weight):
    """2:4 on a device: CUDA mma.sp for fp16 activations (K % 32 == 0), else the dense product
    on the decompressed weight (cuBLAS: the reference here; Triton has no sparse dot).
    sf: sparse24_forms()."""
    k = device.pick(
        kernel, x2, ("cuda",) if x2.dtype == torch.float16 and x2.shape[1] % 32 == 0 else (), what
    )
    if k == "cuda":
        ext = _cuda_ext()
        xin = x2.contiguous()
        m, kk = xin.shape
        n = sf["values16"].shape[0]
        y = torch.empty(m, n, dtype=torch.float16, device=x2.device)
        vals, words = sf["values16"], sf["words"]
        b = None if bias is None else bias.to(torch.float16).contiguous()
        ext.spmm_24(
            xin.data_ptr(),
            xin.stride(0),
            vals.data_ptr(),
            words.data_ptr(),
            0 if b is None else b.data_ptr(),
            y.data_ptr(),
            m,
            n,
            kk,
            device.stream_of(x2),
        )
        return y
    w = dense_weight().to(x2.dtype)
    return F.linear(x2, w, None if bias is None else bias.to(x2.dtype))


# ---- entry points of the ops' device registrations ---------------------------------------------
# x [..., K] on any device (float32, or float16 / bfloat16 on a GPU); the weights in the CPU
# kernel form of their format, on x's device; the result in x's dtype.


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def int8_linear(x, packed, scale, bias, n: int, kernel: str, act_int8: bool):
    from tersor.formats.int8 import unpack_int8

    q, s = forms(packed, lambda: unpack_int8(packed, scale, n, x.shape[-1]))
    fn = w8a8 if act_int8 else w8
    what = "tersor::gemm_w8a8" if act_int8 else "tersor::gemm_w8"
    return fn(_rows(x), q, s, bias, kernel, what).view(*x.shape[:-1], n)


def int4_linear(
    x, codes, scale, zero, bias, n: int, group_size: int, kernel: str, act_int8: bool, x_planes=1
):
    from tersor.formats.int4 import unpack_int4

    k = x.shape[-1]
    x2 = _rows(x)
    if act_int8:  # no GPU kernel: the GPU int4 path is W4 with fp16 activations
        device.pick(kernel, x2, (), "tersor::gemm_w4a8")
        from tersor.ref.int4 import gemm_w4a8_ref

        q, s, z = forms(codes, lambda: unpack_int4(codes, scale, zero, n, k))
        y = gemm_w4a8_ref(x2.float(), q, s, z, group_size, bias, x_planes=x_planes).to(x.dtype)
    else:
        gw = forms(
            codes,
            lambda: int4_forms(*unpack_int4(codes, scale, zero, n, k), group_size, codes.is_cuda),
        )
        y = w4(x2, gw, group_size, bias, kernel, "tersor::gemm_w4")
    return y.view(*x.shape[:-1], n)


def sparse24_forms(values, meta, n: int, k: int) -> dict:
    """The 2:4 GPU forms from the packed ones: canonical values / meta, plus, where the CUDA
    kernel can run (a CUDA tensor, K % 32 == 0), fp16 values and its metadata words."""
    from tersor.formats.sparse24 import meta_words_24, unpack_24

    v, m = unpack_24(values, meta, n, k)
    sf = {"values": v, "meta": m}
    if v.is_cuda and k % 32 == 0:
        sf.update(values16=v.to(torch.float16).contiguous(), words=meta_words_24(m))
    return sf


def sparse24_linear(x, values, meta, bias, n: int, kernel: str):
    from tersor.formats.sparse24 import decompress_24

    k = x.shape[-1]
    sf = forms(values, lambda: sparse24_forms(values, meta, n, k))
    dense = lambda: decompress_24(sf["values"].float(), sf["meta"], k)
    y = spmm_24(_rows(x), sf, bias, kernel, "tersor::spmm_24", dense)
    return y.view(*x.shape[:-1], n)


def reference_linear(x, weight_fn, bias, n: int, kernel: str, what: str, int8_scale=None):
    """Families without a GPU kernel: the torch reference on the dense weight (int8 values
    with int8_scale: the W8A8 reference, exact integer sums; tersor.ref.sparse)."""
    from tersor.ref.sparse import dense_ref

    x2 = _rows(x)
    device.pick(kernel, x2, (), what)
    y = dense_ref(x2, weight_fn(), bias, int8_scale).to(x.dtype)
    return y.view(*x.shape[:-1], n)
