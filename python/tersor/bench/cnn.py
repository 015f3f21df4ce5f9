"""``python -m tersor.bench --family cnn``: whole CNNs in the torchvision layer layout (written
out here: torchvision is not a dependency), random weights (BN statistics drawn as a trained
network has them), batch 1 and 8, 224x224, channels_last: torch fp32, tersor W8A8 (dynamic:
activations quantized per image at each layer's input, fp32 between layers), tersor static int8
(``quantize_static``: int8 between layers), torch.ao FX static int8 (x86 engine), torchao's
pt2e x86 quantizer + torch.compile, and OpenVINO int8 (NNCF post-training quantization), the
last two where they install.

The residual adds live in ``forward``, as in torchvision: tersor converts the modules and
leaves the model code alone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import tersor
from tersor.bench.timing import time_interleaved


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
    cfg += [(6, 160, 3, 2), (6, 320, 1, 1)]
    layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.down is None else self.down(x)))


class _UntiedBlock(BasicBlock):
    """BasicBlock with its second ReLU a module of its own (the same math): torchao's
    X86InductorQuantizer rejects torchvision's one ReLU module called twice ("Input partition
    has more than one output node")."""

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_out(y + (x if self.down is None else self.down(x)))


def _untie_relus(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if type(m) is BasicBlock:
            m.__class__, m.relu_out = _UntiedBlock, nn.ReLU()
    return model


def resnet18(num_classes: int = 1000) -> nn.Module:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    layers.append(nn.MaxPool2d(3, 2, 1))
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
    )


def fold_bn(model: nn.Module) -> nn.Module:
    """Each Conv2d followed by a BatchNorm2d gets the BN folded in (what inference runs)."""
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.data = conv.weight.data * s[:, None, None, None]
                bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.bias)
                conv.bias = nn.Parameter((bias - bn.running_mean) * s + bn.bias.data)
                parent._modules[b] = nn.Identity()
        if isinstance(parent, BasicBlock):  # its BNs are attributes, not a sequence
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                c, n = getattr(parent, conv), getattr(parent, bn)
                if isinstance(n, nn.BatchNorm2d):
                    s = n.weight / torch.sqrt(n.running_var + n.eps)
                    c.weight.data = c.weight.data * s[:, None, None, None]
                    c.bias = nn.Parameter(n.bias.data - n.running_mean * s)
                    setattr(parent, bn, nn.Identity())
    return model


MODELS = {"MobileNetV2": mobilenet_v2, "ResNet-18": resnet18}


def _torch_ao_static(model: nn.Module, cal: list, x: torch.Tensor):
    """torch.ao's FX static int8 (x86 engine, its default qconfig: conv+bn+relu fused, u8
    activations with reduce_range), calibrated on the same batches as tersor."""
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
        with torch.no_grad():
            for c in cal:
                p(c)
        return convert_fx(p)


def _torchao_pt2e(model: nn.Module, cal: list, x: torch.Tensor):
    """torchao's pt2e flow with its X86InductorQuantizer (static int8, u8 activations), then
    torch.compile (inductor) with freezing, as torchao's x86 guide runs it (without freezing
    the weights stay fp32 behind quantize / dequantize nodes: 2.4x slower on MobileNetV2 at
    batch 8, Zen 3), calibrated on the same batches (at the timed batch size: the exported
    graph is specialized to it); the ResNet's shared ReLU untied (_untie_relus); None (with the
    reason printed) when torchao is absent or the flow fails on this model."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        print("  torchao pt2e skipped: torchao is not installed (pip install torchao --no-deps)")
        return None
    try:
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        untied = _untie_relus(copy.deepcopy(model))
        p = prepare_pt2e(torch.export.export(untied, (x,)).module(), quantizer)
        with torch.no_grad():
            for c in cal:
                p(torch.cat([c] * (-(-len(x) // len(c))))[: len(x)])
            compiled = torch.compile(convert_pt2e(p))

        def run(t):  # a recompile (another grad mode, a new shape) keeps the freezing
            with torch._inductor.config.patch(freezing=True):
                return compiled(t)

        with torch.inference_mode():  # the mode the bench checks and times in
            run(x)
        return run
    except Exception as e:  # noqa: BLE001 - a peer's failure is reported, not ours
        print(f"  torchao pt2e skipped: {type(e).__name__}: {str(e)[:120]}")
        return None


def _openvino_int8(model: nn.Module, cal: list, x: torch.Tensor):
    """OpenVINO's CPU plugin on the model converted by ov.convert_model and quantized by NNCF's
    post-training quantization (int8 weights and activations) on the same batches, 2 inference
    threads, the LATENCY hint; None (with the reason printed) when it does not install."""
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        print(f"  OpenVINO int8 skipped: {e.name} is not installed (pip install openvino nncf)")
        return None
    om = ov.convert_model(model, example_input=x)
    qm = nncf.quantize(om, nncf.Dataset(cal, lambda b: b.numpy()), subset_size=len(cal) * 8)
    cfg = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
    req = ov.Core().compile_model(qm, "CPU", cfg).create_infer_request()
    return lambda t: torch.from_numpy(next(iter(req.infer({0: t.numpy()}).values())).copy())


STATIC7 = "tersor static w7"


def run_cnn(
    batches=(1, 8), size: int = 224, rounds: int = 5, peers=("torch.ao", "torchao", "openvino")
):
    """Each model at each batch: torch fp32, tersor W8A8 (dynamic, fp32 between layers),
    tersor static int8 (quantize_static), and the int8 peers; logits checked against fp32
    before timing; ratios from one interleaved run."""
    rows = []
    for name, build in MODELS.items():
        torch.manual_seed(0)
        model = build().eval()
        g = torch.Generator().manual_seed(1)
        for m in model.modules():  # BN statistics as a trained network has them
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
        fp32 = fold_bn(copy.deepcopy(model))
        cal = [torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
        dyn = copy.deepcopy(fp32)
        rep = tersor.quantize_(dyn, tersor.W8A8Config(), progress=False)
        convs = sum(isinstance(m, nn.Conv2d) for m in fp32.modules())
        done = sum(1 for r in rep.converted if len(r.shape) == 4)
        static = tersor.quantize_static(model, tersor.W8A8StaticConfig(), calibration=cal)
        n_static = len(static.tersor_report.converted)
        # 7-bit weights: the grid OpenVINO's NNCF picks on CPUs without VNNI (configs.py)
        cfg7 = tersor.W8A8StaticConfig(weight_bits=7)
        static7 = tersor.quantize_static(model, cfg7, calibration=cal)
        impls = {"fp32": fp32, "tersor W8A8": dyn, "tersor static": static, STATIC7: static7}
        x0 = torch.randn(max(batches), 3, size, size, generator=g)
        if "torch.ao" in peers:
            impls["torch.ao static"] = _torch_ao_static(model, cal, x0)
        for b in batches:
            x = x0[:b].contiguous(memory_format=torch.channels_last)
            run = dict(impls)
            if "torchao" in peers:
                pt2e = _torchao_pt2e(model, cal, x)
                if pt2e is not None:
                    run["torchao pt2e"] = pt2e
            if "openvino" in peers:
                ov_model = _openvino_int8(model, cal, x0[:b])
                if ov_model is not None:
                    run["OpenVINO int8"] = ov_model
            with torch.inference_mode():
                ref = fp32(x)
                cos = {}
                for k, f in run.items():
                    cos[k] = torch.nn.functional.cosine_similarity(ref, f(x), dim=1).min().item()
                    if not cos[k] > 0.9:
                        raise SystemExit(f"{name} {k}: logits cosine {cos[k]:.3f} to fp32")
                # (with a pause between blocks: timing.POOL_QUIET_S)
                t = time_interleaved(
                    {k: (lambda x, i, f=f: f(x)) for k, f in run.items()}, x, rounds
                )
            peer_t = {k: v for k, v in t.items() if k != "fp32" and not k.startswith("tersor")}
            print(f"{name} batch {b} ({size}x{size}, channels_last; {done} / {convs} convs "
                  f"converted by W8A8, {n_static} layers by static int8)")  # fmt: skip
            print(f"  {'impl':<18}{'ms':>9}{'fp32 / impl':>13}{'static vs it':>14}{'cosine':>9}")
            for k, v in t.items():
                print(f"  {k:<18}{v * 1e3:>9.1f}{t['fp32'] / v:>12.2f}x"
                      f"{v / t['tersor static']:>13.2f}x{cos[k]:>9.4f}")  # fmt: skip
            row = dict(impl=f"cnn {name} b{b} static int8", fp32_s=t["fp32"],
                       ours_s=t["tersor static"], ratio=t["fp32"] / t["tersor static"],
                       cosine=cos["tersor static"], dynamic_s=t["tersor W8A8"],
                       static7_s=t[STATIC7], cosine7=cos[STATIC7])  # fmt: skip
            if peer_t:  # the fastest int8 peer, and its time over ours (> 1: tersor is faster)
                row["best_peer"] = min(peer_t, key=peer_t.get)
                row["peer_ratio"] = peer_t[row["best_peer"]] / row["ours_s"]
            rows.append(row)
    return rows
