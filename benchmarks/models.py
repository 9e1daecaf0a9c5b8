"""Models for the measurement benchmarks. Seeded by the caller (torch.manual_seed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(depth: int, width: int, act: type[nn.Module], sigma_w2: float = 2.0, batchnorm: bool = False,
        d_in: int = 32, d_out: int = 10) -> nn.Sequential:
    """Linear (+BatchNorm) + activation, ``depth`` times, then a linear head. Weights
    N(0, sigma_w2 / fan_in), zero biases."""
    layers: list[nn.Module] = []
    fan_in = d_in
    for _ in range(depth):
        lin = nn.Linear(fan_in, width)
        nn.init.normal_(lin.weight, 0.0, (sigma_w2 / fan_in) ** 0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin] + ([nn.BatchNorm1d(width)] if batchnorm else []) + [act()]
        fan_in = width
    head = nn.Linear(width, d_out)
    nn.init.normal_(head.weight, 0.0, (1.0 / width) ** 0.5)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


class SmallCNN(nn.Module):
    """Three conv-ReLU-maxpool stages and a linear head, for 3x32x32 images."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision-style BasicBlock ResNet for 32x32 inputs (3x3 stem, no max-pool)."""

    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = widths[0]
        for i, (count, planes) in enumerate(zip(blocks, widths)):
            for j in range(count):
                layers.append(BasicBlock(in_planes, planes, 2 if (j == 0 and i > 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18(classes: int = 10) -> ResNet:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), classes)


def small_resnet(classes: int = 10) -> ResNet:
    """Three stages of one BasicBlock, widths 16/32/64."""
    return ResNet((1, 1, 1), (16, 32, 64), classes)


class PreLNBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token and position embeddings, pre-LayerNorm blocks, final LayerNorm, mean-pooled
    classification head. Input: token ids (batch, seq). ``language_model``: a head over the
    vocabulary at every position instead (seq x vocab logits per row)."""

    def __init__(self, vocab: int = 100, seq: int = 16, d: int = 32, heads: int = 4, hidden: int = 64,
                 blocks: int = 1, classes: int = 10, language_model: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.Sequential(*[PreLNBlock(d, heads, hidden) for _ in range(blocks)])
        self.ln = nn.LayerNorm(d)
        self.language_model = language_model
        self.head = nn.Linear(d, vocab if language_model else classes)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(positions)
        x = self.ln(self.blocks(x))
        return self.head(x if self.language_model else x.mean(1))


class ThinResidualCNN(nn.Module):
    """Full resolution throughout: a 3x3 stem, ``blocks`` residual blocks (conv-BN-ReLU-conv-BN
    + skip, then ReLU) of ``width`` channels, no downsampling, a pooled linear head."""

    def __init__(self, blocks: int = 6, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[BasicBlock(width, width) for _ in range(blocks)])
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def vgg_bn(widths=(64, 64, "M", 128, 128, "M", 256, 256, "M"), classes: int = 10) -> nn.Sequential:
    """VGG-style plain CNN: conv-BN-ReLU, max-pool at "M", a linear head (32x32 inputs)."""
    layers: list[nn.Module] = []
    c = 3
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


class LSTMLanguageModel(nn.Module):
    """Embedding, a 2-layer LSTM, a linear head over the vocabulary at every position."""

    def __init__(self, vocab: int = 1000, d: int = 128, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection (BN after
    each, ReLU6 after the first two), with a skip when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6):
        super().__init__()
        hidden = c_in * expand
        self.skip = stride == 1 and c_in == c_out
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return x + self.body(x) if self.skip else self.body(x)


class MobileNetV2Small(nn.Module):
    """A CIFAR-size MobileNetV2: stem, inverted residual blocks (16-64 channels, expansion 6),
    1x1 head conv, pooled linear classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        cfg = [(16, 1), (24, 1), (24, 1), (32, 2), (32, 1), (64, 2), (64, 1)]
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        c = 32
        for c_out, stride in cfg:
            layers.append(InvertedResidual(c, c_out, stride, expand=1 if c == 32 and c_out == 16 else 6))
            c = c_out
        layers += [nn.Conv2d(c, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(256, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))
