"""Classes only: one plain model, a block it uses, a model that needs arguments, a broken one."""

import torch
from torch import nn

MAIN_RAN = False


class Block(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


class MLP(nn.Module):
    def __init__(self, depth=3, *args, **kwargs):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.Sequential(*[Block(16) for _ in range(depth)])
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


class ConvNet(nn.Module):
    def __init__(self, channels, depth, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth)])
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class Broken(nn.Module):
    def __init__(self, width=-1):
        super().__init__()
        self.fc = nn.Linear(4, width)

    def forward(self, x):
        return self.fc(x)


class Mixin(nn.Module):
    """No forward: a base class, not a model."""

    def __init__(self):
        super().__init__()


if __name__ == "__main__":
    MAIN_RAN = True
    raise SystemExit("the __main__ block must not run")
