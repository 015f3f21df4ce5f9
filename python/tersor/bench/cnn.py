"""``python -m tersor.bench --family cnn``: whole CNNs in the torchvision layer layout (written
out here: torchvision is not a dependency), random weights, batch 8, 224x224, channels_last:
torch fp32 against tersor W8A8 (every convolution converted, depthwise ones included;
activations quantized per image at each layer's input, fp32 between layers).

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


def run_cnn(batch: int = 8, size: int = 224, rounds: int = 5) -> list:
    rows = []
    print(
        f"{'model':<13}{'fp32 ms':>9}{'W8A8 ms':>9}{'vs fp32':>9}{'convs converted':>17}"
        f"{'logit cosine':>14}  (batch {batch}, {size}x{size}, channels_last)"
    )
    for name, build in MODELS.items():
        torch.manual_seed(0)
        fp32 = fold_bn(build().eval())
        q = copy.deepcopy(fp32)
        rep = tersor.quantize_(q, tersor.W8A8Config(), progress=False)
        convs = sum(isinstance(m, nn.Conv2d) for m in fp32.modules())
        done = sum(1 for r in rep.converted if len(r.shape) == 4)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref, got = fp32(x), q(x)
            cos = torch.nn.functional.cosine_similarity(ref, got, dim=1).mean().item()
            if not cos > 0.9:
                raise SystemExit(f"{name}: W8A8 logits cosine {cos:.3f} to fp32; not timing it")
            t = time_interleaved(
                {"fp32": lambda x, i: fp32(x), "w8a8": lambda x, i: q(x)}, x, rounds
            )
        row = dict(impl=f"cnn {name} W8A8", fp32_s=t["fp32"], ours_s=t["w8a8"], cosine=cos)
        row["ratio"] = t["fp32"] / t["w8a8"]
        rows.append(row)
        print(
            f"{name:<13}{t['fp32'] * 1e3:>9.1f}{t['w8a8'] * 1e3:>9.1f}{row['ratio']:>8.2f}x"
            f"{f'{done} / {convs}':>17}{cos:>14.4f}"
        )
    return rows
