"""Models for tests/test_sourcemap.py.

The tests find their expected spans by searching this file for snippets, so every snippet a
test names must stay unique here.
"""

import torch
from torch import nn

# An alias, not an import: Python compiles calls on it as method calls, whose reported
# position starts at the method name when the call spans lines.
layers_api = nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        # A library module whose own submodules (out_proj) are built inside torch.
        self.attn = nn.MultiheadAttention(width, 2)

    def forward(self, x):
        return self.fc(x)


def make_stem(cin, cout):
    conv = nn.Conv2d(cin, cout, 1)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(8)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3), nn.Tanh(),
        )
        layers = []
        for i in range(4):
            layers.append(nn.Linear(8, 8))
        self.loop = nn.ModuleList(layers)
        self.comp = nn.ModuleList([nn.Linear(8, 8, bias=False) for _ in range(3)])
        self.head: nn.Linear = nn.Linear(8, 2)
        self.größe = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
        self.wrapped = (nn.LayerNorm(8))
        self.chained = (layers_api
                        .Linear(4, 4))
        self.stem = make_stem(3, 8)
        # TransformerEncoder deep-copies its layer: the copies never run __init__.
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2), 2, enable_nested_tensor=False
        )


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetish(nn.Module):
    """torchvision's ResNet layout: stages built by a helper method in a loop."""

    def __init__(self, layers=(2, 2)):
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layer1 = self._make_layer(8, layers[0])
        self.layer2 = self._make_layer(16, layers[1], stride=2)

    def forward(self, x):
        x = self.layer2(self.layer1(self.conv1(x)))
        return torch.flatten(x, 1)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)


def resnetish():
    return ResNetish((2, 2))


class Outer:
    class Inner(nn.Module):
        pass


def factory():
    class Local(nn.Module):
        pass

    return Local
