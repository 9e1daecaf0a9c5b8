"""Which rules have a fixer: rule code -> the fixer's ``propose(ctx)``.

Rules without an entry offer no machine-applicable fix; their documentation says why."""

from __future__ import annotations

from typing import Callable

FIXERS: dict[str, str] = {
    "ARC103": "archlint.fix.leaky_slope",
    "ARC104": "archlint.fix.init_gain",
    "ARC403": "archlint.fix.branch_scale",
    "ARC201": "archlint.fix.norm_before_activation",
    "ARC205": "archlint.fix.init_gain",
    "ARC409": "archlint.fix.init_gain",
    "ARC301": "archlint.fix.remove_activation",
    "ARC303": "archlint.fix.groupnorm",
}


def has_fixer(code: str) -> bool:
    return code in FIXERS


def fixer(code: str) -> Callable:
    import importlib

    return importlib.import_module(FIXERS[code]).propose
