"""Building the discovered entries: on the meta device first (size, init statistics), then
for real within the memory budget, keeping only the top-level models."""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from archlint import metainit
from archlint.memory import default_memory_budget, format_size
from archlint.load.discovery import BuiltModel, ClassNeedingArgs, Discovery, ModelEntry, NotBuilt
from archlint.load.isolation import BuildError, _display, innermost_line_in, describe_exception, project_root


# --------------------------------------------------------------------------------------
# Building


def build_all(discovery: Discovery, seed: int | None = None, memory_budget: int | None = None,
              on_entry: Callable[[ModelEntry], None] | None = None) -> tuple[list[BuiltModel], list[NotBuilt]]:
    """Build every entry and keep the top-level models.

    With ``seed``, each entry is built right after seeding torch's global RNG with it, so its
    random init is the same on every run whatever else the file builds; the caller's RNG
    state is restored afterwards.

    Each entry is first built on the meta device (no memory, ~10x faster than a real build
    of a ResNet-18) to learn its size; only a model within ``memory_budget`` bytes (default:
    ``default_memory_budget()``) is then built for real. A larger one stays on the meta
    device, with the reason in ``BuiltModel.meta_reason``.

    A class is dropped when another built model contains an instance of it (it is a
    block); a class that needs arguments is reported (ARC903) only when no built model
    contains or is an instance of it, so a class a factory builds is not reported.
    ``on_entry`` is called before each entry is built (the worker's progress).
    """
    budget = memory_budget if memory_budget is not None else default_memory_budget()
    built: list[BuiltModel] = []
    failed: list[tuple[ModelEntry, NotBuilt]] = []
    for entry in discovery.entries:
        if on_entry is not None:
            on_entry(entry)
        try:
            built.append(_build(entry, budget, seed))
        except BuildError as exc:
            if entry.kind == "factory":
                continue  # a zero-argument function returning something else: not a model
            failed.append((entry, NotBuilt(entry.name, entry.span, [], str(exc), error=str(exc))))
        except (Exception, SystemExit) as exc:
            failed.append((entry, _raised(entry, exc)))

    sub_types = [{type(m) for m in b.model.modules() if m is not b.model} for b in built]
    every_module = [m for b in built for m in b.model.modules()]
    called_by_built = {
        callee for b in built if b.entry.kind == "factory"
        for callee in discovery.factory_calls.get(b.entry.name, ())
    }

    top: list[BuiltModel] = []
    for i, b in enumerate(built):
        t = type(b.model)
        if b.entry.kind == "class" and any(t in types for j, types in enumerate(sub_types) if j != i):
            continue
        if b.entry.kind == "factory" and b.entry.name in called_by_built:
            continue
        top.append(b)

    not_built: list[NotBuilt] = []
    for entry, nb in failed:
        if entry.kind == "class" and any(isinstance(m, entry.target) for m in every_module):
            continue
        not_built.append(nb)
    for c in discovery.needs_args:
        if c.cls is not None and any(isinstance(m, c.cls) for m in every_module):
            continue
        not_built.append(_needs_args(c, discovery.path or c.span.path))
    not_built.sort(key=lambda n: (n.span.line, n.span.col))
    return top, not_built


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, shared (tied) tensors counted once."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _seeded_build(entry: ModelEntry, seed: int | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return entry.build()


def _build(entry: ModelEntry, budget: int, seed: int | None = None) -> BuiltModel:
    meta = _build_on_meta(entry)
    if meta is None:
        return BuiltModel(entry, _seeded_build(entry, seed))
    size = model_bytes(meta)
    if size <= budget:
        del meta
        return BuiltModel(entry, _seeded_build(entry, seed), size=size)
    meta.to("meta")  # a tensor the constructor put on a device explicitly
    reason = (f"its parameters and buffers take {format_size(size)}, above the memory budget of "
              f"{format_size(budget)}: analysed on the meta device (shapes and init formulas), "
              f"not built or measured")
    return BuiltModel(entry, meta, size=size, meta_reason=reason)


def _build_on_meta(entry: ModelEntry) -> nn.Module | None:
    """The entry built under ``torch.device("meta")`` with its init statistics recorded, or
    None when its code does not work without real values (``.item()``, ``.tolist()``...):
    the real build then reports whatever is wrong."""
    try:
        with warnings.catch_warnings(), metainit.record_init() as recorder, torch.device("meta"):
            warnings.simplefilter("ignore")  # the real build warns, once
            model = entry.build()
    except (Exception, SystemExit):
        return None
    metainit.attach(model, recorder)
    return model


def _needs_args(c: ClassNeedingArgs, path: str) -> NotBuilt:
    name = c.name
    call = f"{name}({', '.join(f'{p}=...' for p in c.missing)})"
    s = "s" if len(c.missing) > 1 else ""
    what = "its constructor needs" if c.cls is not None else "it needs"
    message = (
        f"{name} was not built: {what} argument{s} {', '.join(c.missing)}; "
        f'configure it with --model "{call}" or a [[tool.archlint.models]] entry with '
        f'path = "{_display(path, project_root(path))}" and build = "{call}"'
    )
    return NotBuilt(name, c.span, list(c.missing), message)


def _raised(entry: ModelEntry, exc: BaseException) -> NotBuilt:
    path = entry.span.path
    error = describe_exception(exc, path)
    line = innermost_line_in(exc, path)
    where = f" at line {line}" if line else ""
    call = entry.built_as or (f"{entry.name}()" if entry.kind != "explicit" else f"build {entry.name!r}")
    message = f"{entry.name} was not built: {call} raised{where}: {error}"
    return NotBuilt(entry.name, entry.span, [], message, error=error, error_line=line)
