"""Small random-weight architectures the zoo does not hold, exported by both PyTorch exporters.

    python tools/unseen/generate.py --out tests/data/unseen     # needs torch (and onnxscript for dynamo)

Writes ``<name>.onnx`` (TorchScript exporter, opset 17) and ``<name>_dynamo.onnx`` (torch.export-based
exporter, opset 18) for each architecture: a vision transformer, ConvNeXt, DenseNet, EfficientNet
(MBConv with SiLU and squeeze-excitation), MobileNetV3 (HardSwish, HardSigmoid gates), ShuffleNet
(channel shuffle), a GPT-2-style decoder (tanh GELU, causal mask) and a BERT-style encoder with
an attention mask. Widths are small so the files stay small; the layer spellings are the real ones.
The tests in tests/unseen compare onyxrt with onnxruntime on them at every optimization level.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F


class ViTBlock(nn.Module):
    """timm's pre-norm block: fused qkv projection and F.scaled_dot_product_attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    def __init__(self, dim=64, depth=2, heads=4, patch=8, image=32, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.position
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x):
        y = self.depthwise(x).permute(0, 2, 3, 1)
        y = self.gamma * self.down(F.gelu(self.up(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims=(16, 32), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]), ConvNeXtBlock(dims[0]))
        self.down = nn.Conv2d(dims[0], dims[1], 2, 2)
        self.stage2 = nn.Sequential(ConvNeXtBlock(dims[1]))
        self.norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class DenseNet(nn.Module):
    def __init__(self, growth=8, layers=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.ModuleList()
        channels = 16
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 4 * growth, 1, bias=False),
                                             nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)))
            channels += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2))
        self.head = nn.Linear(channels // 2, classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.head(F.adaptive_avg_pool2d(self.transition(x), 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeezed, gate):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate()
        self.inner = nn.ReLU() if isinstance(self.gate, nn.Hardsigmoid) else nn.SiLU()

    def forward(self, x):
        return x * self.gate(self.expand(self.inner(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expand, stride, activation, gate):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), activation(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), activation(),
            SqueezeExcite(mid, max(4, mid // 4), gate),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class EfficientNet(nn.Module):
    """MBConv blocks: SiLU activations and sigmoid squeeze-excitation gates."""

    def __init__(self, classes=10, activation=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), activation())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 2, 1, activation, gate), InvertedResidual(16, 24, 3, 2, activation, gate),
                                    InvertedResidual(24, 24, 3, 1, activation, gate))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), activation())
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class MobileNetV3(EfficientNet):
    """The same blocks with HardSwish activations and HardSigmoid gates."""

    def __init__(self, classes=10):
        super().__init__(classes, nn.Hardswish, nn.Hardsigmoid)


class ShuffleUnit(nn.Module):
    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                                    nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
                                    nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        y = torch.cat([left, self.branch(right)], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.units = nn.Sequential(ShuffleUnit(24), ShuffleUnit(24))
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        return self.head(self.units(self.stem(x)).mean((2, 3)))


class GPT2Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        causal = torch.tril(torch.ones(s, s, dtype=torch.bool, device=x.device))
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(y)
        h = self.up(self.ln2(x))
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        return x + self.down(h)


class GPT2(nn.Module):
    def __init__(self, vocab=256, dim=64, heads=4, layers=2, context=64):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(GPT2Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        return self.head(self.norm(self.blocks(self.tokens(input_ids) + self.positions(positions))))


class Encoder(nn.Module):
    """BERT-style: post-norm layers, additive padding mask from attention_mask, erf GELU."""

    def __init__(self, vocab=256, dim=64, heads=4, layers=2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "q": nn.Linear(dim, dim), "k": nn.Linear(dim, dim), "v": nn.Linear(dim, dim), "o": nn.Linear(dim, dim),
            "ln1": nn.LayerNorm(dim), "up": nn.Linear(dim, 4 * dim), "down": nn.Linear(4 * dim, dim), "ln2": nn.LayerNorm(dim),
        }) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        x = self.norm(self.embed(input_ids))
        b, s, d = x.shape
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            q, k, v = (layer[n](x).view(b, s, self.heads, d // self.heads).transpose(1, 2) for n in "qkv")
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // self.heads) + bias
            y = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, s, d)
            x = layer["ln1"](x + layer["o"](y))
            x = layer["ln2"](x + layer["down"](F.gelu(layer["up"](x))))
        return x


VISION = {"vit": VisionTransformer, "convnext": ConvNeXt, "densenet": DenseNet, "efficientnet": EfficientNet,
          "mobilenet_v3": MobileNetV3, "shufflenet": ShuffleNet}
TEXT = {"gpt2": GPT2, "encoder": Encoder}


def export(name: str, module: nn.Module, out: Path) -> None:
    module.eval()
    if name in VISION:
        args, names, dynamic = (torch.randn(2, 3, 32, 32),), ["input"], {"input": {0: "batch"}}
    elif name == "gpt2":
        args, names, dynamic = (torch.randint(0, 256, (2, 16)),), ["input_ids"], {"input_ids": {0: "batch", 1: "seq"}}
    else:
        args = (torch.randint(0, 256, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
        names, dynamic = ["input_ids", "attention_mask"], {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    with torch.no_grad():
        torch.onnx.export(module, args, str(out / f"{name}.onnx"), input_names=names, output_names=["output"],
                          dynamic_axes={**dynamic, "output": {0: "batch"}}, opset_version=17, dynamo=False)
        labels = {label for axes in dynamic.values() for label in axes.values()}
        shared = {label: torch.export.Dim(label, min=2, max=64) for label in labels}  # one Dim per name, shared by inputs
        dims = [{axis: shared[label] for axis, label in dynamic[key].items()} for key in names]
        program = torch.onnx.export(module, args, input_names=names, output_names=["output"],
                                    dynamic_shapes=dims, opset_version=18, dynamo=True, external_data=False)
        program.save(str(out / f"{name}_dynamo.onnx"), external_data=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("names", nargs="*", default=[*VISION, *TEXT])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        torch.manual_seed(0)
        module = {**VISION, **TEXT}[name]()
        for child in module.modules():  # non-trivial normalization statistics, as trained models have
            if isinstance(child, nn.BatchNorm2d):
                child.running_mean.normal_(0, 0.1)
                child.running_var.uniform_(0.5, 1.5)
        export(name, module, args.out)
        print(name)


if __name__ == "__main__":
    main()
