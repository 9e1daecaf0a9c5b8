"""archlint: a linter for PyTorch model definitions, built on the nonlinearity coefficient.

Importing the package is cheap (no torch): the CLI must be able to skip files without models
without paying for torch.
"""

__version__ = "0.1.0"
