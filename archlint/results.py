"""One checked file's result, as every stage after the analysis sees it.

The engine fills it in the analysing process, the worker sends it to the parent as plain
JSON (``to_dict``/``from_dict``: no pickles from the model's process), the cache stores the
same dict, and the CLI and the editor server read it. Importing this module never imports
torch: the parent process reads results without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archlint.rule import Finding


@dataclass
class FileResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    # How many models of the file were analysed (traced and checked by the rules).
    n_models: int = 0
    # The file never mentions torch or nn.Module: nothing was imported.
    skipped: bool = False
    # Files of the project's own modules the file imported (itself included): the cache
    # keys on their content.
    local_modules: list[str] = field(default_factory=list)
    # Why the worker did not finish (crash, exit, timeout, memory), else None. A cache
    # should not keep such a result: a timeout or memory stop depends on the machine.
    failure: str | None = None
    # A model's measurement was cut to fit its time budget (fewer samples or probes, or
    # none): that too depends on the machine and its load, so the cache does not keep it.
    over_budget: bool = False
    from_cache: bool = False
    # In the analysing process only (never serialised): each model's engine.ModelResult,
    # with its graph and measurement, for the API and the tests.
    models: list[Any] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "findings": [f.to_dict() for f in self.findings],
            "n_models": self.n_models,
            "skipped": self.skipped,
            "local_modules": list(self.local_modules),
            "failure": self.failure,
            "over_budget": self.over_budget,
        }

    @property
    def machine_dependent(self) -> bool:
        """Whether the result depends on the machine (a crash, a timeout, a memory stop, a
        measurement cut to its time budget): a cache should not keep it."""
        return self.failure is not None or self.over_budget

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, from_cache: bool = False) -> "FileResult":
        return cls(
            path=str(d["path"]),
            findings=[Finding.from_dict(f) for f in d["findings"]],
            n_models=int(d["n_models"]),
            skipped=bool(d["skipped"]),
            local_modules=[str(p) for p in d.get("local_modules", [])],
            failure=d.get("failure"),
            over_budget=bool(d.get("over_budget", False)),
            from_cache=from_cache,
        )
