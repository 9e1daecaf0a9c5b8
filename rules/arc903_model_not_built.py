"""ARC903 model-not-built: a top-level model needs constructor arguments archlint was not given.

## What it does
Reports an ``nn.Module`` subclass defined in the file that is not used inside another model
of the file, is not built by a factory function of the file, and whose constructor has
required parameters (or a constructor that raised). The message lists the missing
parameters and how to configure them.

When the file itself shows a construction with literal arguments (``VGG('VGG11')`` in a
``test()``, a ``__main__`` block, module-level code or a default argument value), archlint
builds the class that way instead, evaluating that call alone, and reports ARC903 only if
it raises (with the call, its line and the exception; the file's other calls are not tried).

A class that needs arguments, that no build covers and that looks like a building block
rather than a model is not reported:

- its name ends like a part (``Block``, ``Layer``, ``Unit``, ``Cell``, ``Stage``,
  ``Bottleneck``, ``Stem``, ``Head``, ``Attention``, ``Transition``, ``Shortcut``,
  ``Downsample``, ``Upsample``, ``Embedding``, ``Norm``, ``Conv``);
- or a class of another file of its folder uses it;
- or nothing in the file refers to it while the file's other models are built, and its
  name does not say model (``Net``, ``Model``, ``Network``, ``former``, ``GPT``, ``Bert``,
  ``MLP``, ``Mixer``).

Every other such class looks like a top-level model and is reported.

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

or show the construction in the file (``def resnet56(): return ResNet(56, 10)``, or
``net = ResNet(56, 10)`` in a ``test()`` or ``__main__`` block), which archlint finds by
itself.

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
