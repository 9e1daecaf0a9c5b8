"""Forward passes for tests/test_sourcemap.py: functional ops whose call sites must map to
their expression in forward. Tests search this file for snippets; keep them unique."""

import torch
import torch.nn.functional as F
from torch import nn


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        a = F.relu(y)
        b = torch.tanh(a)
        c = b.relu()
        d = a + c
        d += y
        e = d * 0.5
        f = (torch
             .sigmoid(e))
        # A method call on a local that spans lines: Python reports it from `clamp` on.
        g = (f
             .clamp(min=0))
        return g


class FakeModel:
    """Not a module: its forward calls into library-like code, as a traced op would."""

    def __init__(self, library_call):
        self.library_call = library_call

    def forward(self, x):
        z = x * 2
        return self.library_call(z)
