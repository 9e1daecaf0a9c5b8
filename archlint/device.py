"""The ``--device`` setting: its grammar, and what it resolves to.

``auto | cpu | cuda | cuda:N`` is validated where settings are read (no torch needed) and
resolved to a ``torch.device`` once per model by the engine, which passes the result down to
the memory budget and the verification pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class DeviceError(ValueError):
    pass


def validate(value: str, what: str) -> str:
    """``value`` if it is a device archlint understands, else DeviceError naming ``what``."""
    if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise DeviceError(f"{what}: {value!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def resolve(value: "str | torch.device") -> "torch.device":
    """``auto`` is the GPU when torch sees one, else the CPU."""
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


def may_use_cuda(value: str) -> bool:
    """Whether a run with this setting can touch CUDA, decided without initialising it: the
    CUDA driver's address-space accounting does not mix with RLIMIT_DATA."""
    if value == "cpu":
        return False
    if value == "auto":
        import torch

        return torch.version.cuda is not None  # a CPU build has no driver to initialise
    return True
