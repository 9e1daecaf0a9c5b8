"""archlint: a linter for PyTorch model definitions, built on the nonlinearity coefficient.

Importing the package is cheap (no torch): the CLI must be able to skip files without models
without paying for torch.

``archlint.measure(model, inputs=None, *, device="auto", batch_size=128, seed=0)`` measures a
model (see ``archlint.measure``). ``archlint.measure`` is the submodule, made callable, so
that ``archlint.measure(model)``, ``from archlint.measure import Report`` and
``from archlint import measure`` all keep meaning the same thing; it is imported (with torch)
on first use. ``archlint.normalize(model, inputs=None, *, target=2.0)`` returns a copy of
the model whose NLC at initialisation is the target (``archlint.normalization``).
"""

__version__ = "0.1.0"
__all__ = ["measure", "normalize", "__version__"]


def __getattr__(name: str):
    # PEP 562: `archlint.measure` before anything imported the submodule. The import binds
    # it as the package attribute, so this runs once.
    if name == "measure":
        import importlib

        return importlib.import_module("archlint.measure")
    if name == "normalize":
        # The function; its module is archlint.normalization (Interpolated, the result types).
        from archlint.normalization import normalize

        return normalize
    raise AttributeError(f"module 'archlint' has no attribute {name!r}")
