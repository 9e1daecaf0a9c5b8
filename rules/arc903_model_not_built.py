"""ARC903 model-not-built: a top-level model needs constructor arguments archlint was not given.

## What it does
Reports an ``nn.Module`` subclass defined in the file that is not used inside another model
of the file, is not built by a factory function of the file, and whose constructor has
required parameters (or a constructor that raised). The message lists the missing
parameters and how to configure them.

## Why is this bad?
archlint builds models to analyse them; a model it cannot build is not checked, and you
should know that rather than read silence as a clean bill of health.

## Example
```python
class ResNet(nn.Module):
    def __init__(self, depth, num_classes):  # required: depth, num_classes
        ...
```

## Use instead
Tell archlint how to build it, on the command line or in ``pyproject.toml``:

```
archlint check models/resnet.py --model "ResNet(depth=56, num_classes=10)"
```

```toml
[[tool.archlint.models]]
path = "models/resnet.py"
build = "ResNet(depth=56, num_classes=10)"
```

or add a factory function with no required arguments to the file
(``def resnet56(): return ResNet(56, 10)``), which archlint discovers by itself.

## Options
None.

## References
- archlint docs: docs/models.md, "Which models are checked".
"""

CODE = "ARC903"
NAME = "model-not-built"
SEVERITY = "info"
SUMMARY = "A top-level model needs constructor arguments that were not configured"
OPTIONS: dict = {}


def check(graph, options, context):
    # Raised by the engine during discovery, before any graph exists.
    return []
