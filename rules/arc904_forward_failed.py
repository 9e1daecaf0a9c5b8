"""ARC904 forward-failed: the model raised on the example inputs.

## What it does
Reports a model whose forward pass raised on the example inputs archlint used: the inputs
you configured with ``--inputs``/``--input-shape``/``inputs = ...``, or the ones it inferred
from the first layer that consumes the input (Conv2d channels with a 32x32 image, Linear
features, Embedding token ids, RNN features). The diagnostic points at the line in your code
where the exception was raised when there is one, else at the model's class or factory.

## Why is this bad?
Without a forward pass there is no graph and no measurement: the model is not checked.
Often the inferred input shape is simply wrong for the model (e.g. a CNN for 224x224
images whose classifier expects a fixed flattened size).

## Example
```python
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 222 * 222, 10)  # needs 224x224 inputs
```

## Use instead
Give the inputs explicitly: ``--input-shape 3,224,224`` or
``--inputs "torch.randn(8, 3, 224, 224)"``, or an ``inputs = "..."`` entry under
``[[tool.archlint.models]]``. Where the error says that memory ran out (an allocator's
"can't allocate memory", "out of memory", a ``MemoryError``), the inputs are not the cause
and the message says so: raise ``--memory-limit``, or analyse fewer files at once
(``--jobs``), whose workers share it.

## Options
None.

## References
- archlint docs: docs/models.md, "Example inputs".
"""

CODE = "ARC904"
NAME = "forward-failed"
SEVERITY = "error"
SUMMARY = "The model raised on the example inputs"
OPTIONS: dict = {}


def check(graph, options, context):
    # Raised by the engine when the trace's forward pass fails; no graph exists then.
    return []
