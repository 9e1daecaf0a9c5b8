"""A ResNet-style file: blocks and a model that need arguments, factories that build them,
and functions that look like factories but must never be called."""

import os
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

TRAINED = False


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, width=8, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.layers = nn.Sequential(*[block(width, width) for _ in range(sum(num_blocks))])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


@dataclass
class HeadConfig:
    width: int = 8
    classes: int = 10


def resnet4():
    """A tiny ResNet."""
    return ResNet(BasicBlock, [1, 1])


def resnet6(width=8):
    cfg = HeadConfig(width=width)
    cfg.classes = 5
    return ResNet(BasicBlock, [1, 1, 1], width=cfg.width, num_classes=cfg.classes)


def classifier():
    return nn.Sequential(resnet4(), nn.ReLU(), nn.Linear(10, 2))


def default_config():
    return HeadConfig()


def train(model):
    global TRAINED
    TRAINED = True
    marker = os.environ.get("ARCHLINT_TEST_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write("trained")


def main():
    model = resnet4()
    train(model)


def opens_file():
    log = open(os.environ.get("ARCHLINT_TEST_MARKER", os.devnull), "w")
    return resnet4()


def sneaky():
    model = resnet4()
    done = train(model)
    return model


if __name__ == "__main__":
    main()
