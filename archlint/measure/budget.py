"""A measurement that fits a time budget (``--measure-budget``, per model).

A measurement costs a fixed number of plain forward passes per batch of the sample: its
cost grows with the model, and a CIFAR ResNet-101 on a shared CPU takes minutes at the
default sample. Before measuring, ``fit`` times one plain forward pass of one batch on the
measurement's device, estimates what the measurement would cost, and gives things up in
this order until the estimate fits:

1. the extra probes the plan may add for a noisy output (``max_probes``; the plan's notes
   say so when it wanted more);
2. batches: fewer samples, whole batches of the same size. With train-mode BatchNorm the
   batch size is part of the function that is measured, so it is kept as long as it can be;
3. the second probe per sample (one probe; the standard error still covers the probes);
4. the population (eval-mode) value of a train-mode BatchNorm model;
5. the batch size: halved, down to MIN_BATCH rows, each smaller size timed before it is
   chosen and only where a forward-mode pass of it fits the memory a measurement may hold
   (memory.measurement_room); the batches and probes are then chosen again at that size,
   without the population value, and by the cost of reverse-mode probes where the output's
   NLC alone is wanted and that size suits them. A whole batch is not even timed where two
   small timings show that one probe on it would not fit (GUESS_MARGIN). A CIFAR ResNet-101
   on a CPU (one forward pass of 128 rows: about 7 s) is measured on one batch of 64 rows in
   27 s of a 30 s budget.

If one batch of MIN_BATCH rows with one probe and no population value does not fit, the
model is not measured (``OverBudget``): its findings stay ``predicted`` with that reason, and the file's
other models are analysed as usual. What was given up is said in ``Fit.note``, which the
report's notes and the findings' notes carry beside the standard error that was reached.
A float32 measurement's float64 re-check (``allows_float64``) runs only if its estimate
fits what is left; a low-precision model's always runs (ARC304 compares against it).

This module imports no torch at the top: the defaults are read by the parent process too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from archlint import memory
from archlint.measure.report import MeasureError

# Seconds one model's measurement may take by default. On a CPU, 30 s measures the common
# CIFAR-size models in full: a ResNet-18's measurement (128 samples) takes about 8 s on one
# idle core (benchmarks/RESULTS_measure.md), a ResNet-34's 25 s on one core of a loaded
# two-core machine (4.9 s per forward pass), so a file of five such models is done in a few
# minutes; deeper ones (a ResNet-50 and up) get fewer probes, batches or rows per batch (all
# of kuangliu/pytorch-cifar's, down to a DenseNet-161 on 32 rows), or stay unmeasured with the
# reason, instead of stalling the run. A GPU measures a ResNet-18 in 0.2 s
# (benchmarks/RESULTS_cuda.md, an H200): 10 s covers models some 50 times its cost, and a
# model that needs more would need minutes; the check stays interactive (the editor server
# runs it on every save).
DEFAULT_CPU = 30.0
DEFAULT_GPU = 10.0

# The cost of one pass over one batch, in plain forward passes of that batch: PASS_BASE for
# the primal values, the per-node statistics and the bookkeeping, plus PER_PROBE per probe.
# From benchmarks/RESULTS_measure.md (ResNet-18, batch 128, CPU, one thread, an idle
# machine): 2 probes 4.4 forward passes, 2 + 1 probes 5.4. On a loaded machine the same
# measurement took 6.1 (2.36 s forward, 14.5 s measurement): the many small per-node
# reductions suffer more from waiting for a core than the convolutions. Rounded up to that,
# since an estimate that is too low overruns.
PASS_BASE = 3.0
PER_PROBE = 1.0
# The output's NLC alone by reverse-mode probes (measure.cotangents): REVERSE_BASE for the
# forward pass that records the graph (and the signal statistics of the nodes screened with
# it), plus one backward pass per probe. Measured against a plain forward pass of batch 128
# on an idle CPU (one thread; nodes=(), population=False, 1, 2 and 4 probes): 1 probe 2.1x
# (VGG) to 2.8x (MobileNetV2); each further probe 1.0x (VGG) to 1.65x (MobileNetV2);
# ResNet-18 2.15, 3.28, 5.75. Rounded up, as above: 1 probe is estimated at 3.25 passes,
# where forward-mode probes would be 3 + 2.
REVERSE_BASE = 1.5
PER_COTANGENT = 1.75
# A float64 re-check against the float32 measurement it repeats. On this project's CPU a
# ResNet-18 forward pass (batch 16, one thread) took 4.0 s in float64 against 0.98 s in
# float32; on a GPU (not measured here) float64 peaks at about 1/8 of TF32 (H100: 67 against
# 495 TFLOP/s).
FLOAT64_FACTOR = {"cpu": 4.0, "cuda": 8.0}
# Rows of the first, cheap timings: a forward pass of a whole batch is only timed when the
# cost per row between these two, scaled up, shows it may fit (a model that needs minutes
# per batch is not run for minutes to learn that). A difference, so that the fixed cost of a
# call (Python, kernel launches) is not scaled with the rows.
SMALL_ROWS = (2, 8)
# How far that guess may be too high before a whole batch is no longer timed (step 5's
# smaller batches are timed instead): where the smallest measurement of a whole batch, by the
# guess, needs more than this many times the time left.
GUESS_MARGIN = 1.5
# The smallest batch the budget may measure on (the last thing it gives up). With train-mode
# BatchNorm the batch is part of the function that is measured: a CIFAR ResNet-18's output NLC
# on one batch of 32 rows was about 2% below that on one batch of 128 (7.02 against 7.21,
# 7.00 / 7.13, 6.93 / 7.10 on three probe seeds), within one standard error (0.22-0.28).
MIN_BATCH = 32


class OverBudget(MeasureError):
    """Not even the smallest measurement (one batch, one probe) fits the budget."""


def default_budget(device_type: str) -> float:
    """The budget for a measurement on a device of this type ("cpu", "cuda", ...)."""
    return DEFAULT_CPU if device_type == "cpu" else DEFAULT_GPU


@dataclass
class Fit:
    """What the measurement runs with so that its estimate fits the budget."""

    budget: float
    rows: int
    probes: int
    max_probes: int
    population: bool
    # One plain forward pass of one batch, and the estimate of the chosen measurement.
    forward_seconds: float
    estimate: float
    # The estimate of the measurement asked for, and what was given up (empty: nothing).
    full_estimate: float = 0.0
    given_up: list[str] = field(default_factory=list)
    # The rows of each batch (the batch size asked for, unless step 5 made it smaller).
    batch_size: int = 0
    # Seconds of the budget left when the choice was made: tracing, preparing the inputs and
    # timing forward passes spend the same budget, so a full measurement estimated under the
    # budget may still not fit what is left.
    left: float = 0.0

    @property
    def note(self) -> str | None:
        if not self.given_up:
            return None
        return (f"{', '.join(self.given_up)} to fit the measurement budget of {self.budget:g} s "
                f"(the full measurement would take about {_seconds(self.full_estimate)} s, and "
                f"{_seconds(max(self.left, 0.0))} s of the budget were left after tracing and timing the model; "
                f"raise it with --measure-budget)")


def _cost(batches: int, probes: int, population: int, fused: bool, fresh: bool, segments: int,
          sequential: bool = False, reverse: bool = False) -> float:
    """Forward passes of one batch that a measurement costs (see the plan's passes).
    ``sequential``: the probes run one by one, each with its own primal pass. ``reverse``:
    the output's NLC alone is wanted and suits reverse-mode probes (plan.by_cotangents); the
    plan takes that route where the population value, if any, rides along."""
    if _by_cotangents(reverse, population, fused, segments):
        return batches * (REVERSE_BASE + (probes + population) * PER_COTANGENT + (PASS_BASE if fresh else 0))

    def one_pass(k: int) -> float:
        return k * (PASS_BASE + PER_PROBE) if sequential and k else PASS_BASE + k * PER_PROBE

    per_batch = one_pass(probes + (population if fused else 0))
    if population and not fused:
        per_batch += one_pass(population)  # the separate eval-mode pass
    if fresh:
        per_batch += PASS_BASE  # populating fresh eval-mode BatchNorm statistics
    per_batch += segments * one_pass(probes) * (2 if population else 1)
    return batches * per_batch


def _by_cotangents(reverse: bool, population: int, fused: bool, segments: int) -> bool:
    """Whether the plan takes the reverse-mode route (see ``_cost``)."""
    return reverse and (fused or not population) and not segments


def time_forward(run: Any, args: tuple, batch_dims: list[int], rows: int, repeat: int = 1) -> float:
    """Seconds of one plain forward pass of the model on its first ``rows`` rows, on the
    measurement's device, under no_grad (the fastest of ``repeat``); the model's state
    (BatchNorm running statistics) and the random number generators are left as they were."""
    import torch

    from archlint.state import preserved_state

    batch = tuple(run.cast(a.narrow(d, 0, rows)) for a, d in zip(args, batch_dims))
    cuda = run.device.type == "cuda"
    devices = [run.device] if cuda else []
    times = []
    with torch.random.fork_rng(devices=devices), preserved_state(run.root), torch.no_grad():
        for _ in range(repeat):
            if cuda:
                torch.cuda.synchronize(run.device)
            start = time.perf_counter()
            run.root(*batch)
            if cuda:
                torch.cuda.synchronize(run.device)
            times.append(time.perf_counter() - start)
    return min(times)


def passes(run: Any, batch: int, population: bool) -> tuple[bool, bool, bool]:
    """Which of the plan's optional passes this model gets: (a population value, in the main
    pass when the sample is one batch, fresh eval-mode statistics to populate first). The
    same tests as ``plan._Plan.run``, which decides them on the model it is given."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from archlint.measure.model import _is_fresh
    from archlint.measure.plan import _fusable

    bns = [m for m in run.root.modules() if isinstance(m, _BatchNorm)]
    batch_bns = [m for m in bns if m.training or m.running_mean is None]
    fresh = any(not m.training and _is_fresh(m) for m in bns)
    populatable = population and bool(batch_bns) and all(m.running_mean is not None for m in batch_bns)
    fused = populatable and _fusable(run.graph, run, batch_bns, batch)
    return populatable, fused, fresh


def fit(run: Any, args: tuple, batch_dims: list[int], *, batch_size: int, probes: int, max_probes: int,
        population: int, fused: bool, fresh: bool, segments: int, budget: float, spent: float = 0.0,
        reverse: Callable[[int], bool] | None = None) -> Fit:
    """Choose the sample (whole batches), the probes, the population pass and last the batch
    size so that the measurement's estimate fits ``budget`` seconds: ``spent`` is already gone (tracing, the
    inputs), and the forward passes timed here count too.

    ``population``: the population probes when a population value is asked and possible
    (0 otherwise); ``fused``: it rides along in the main pass when the sample is one batch;
    ``fresh``: eval-mode BatchNorm statistics must be populated first (see ``passes``);
    ``reverse(rows)``: whether the output's NLC alone is wanted and a batch of that many rows
    suits reverse-mode probes (plan.by_cotangents; see ``_cost``): a reverse pass holds every
    value of its batch, so a smaller batch may suit them where the full one does not.
    Raises OverBudget.
    """
    started = time.perf_counter() - spent
    n = args[0].shape[batch_dims[0]]
    batch = min(batch_size, n)
    batches = math.ceil(n / batch)
    # functorch cannot batch the probes of most models that torch.fx could not trace either
    # (data-dependent Python in forward): the runner then runs them one by one.
    sequential = getattr(run.graph, "traced_with", None) == "eager"
    route = reverse is not None and reverse(batch)
    cheapest = _cost(1, 1, 0, False, fresh, segments, sequential, route)
    few, more = SMALL_ROWS
    full_passes = _cost(batches, probes, population, fused and batches == 1, fresh, segments, sequential, route)
    forward = per_rows = None
    too_slow = short_of_memory = False
    asked = population

    def left() -> float:
        return budget - (time.perf_counter() - started)

    def cost(forward: float, fused: bool, b: int, p: int, pop: int) -> float:
        return forward * _cost(b, p, pop, fused and b == 1, fresh, segments, sequential, route)
    if batch > more:

        def guess() -> tuple[float, float]:
            # The fastest of two: the difference is scaled up ~20 times, and a busy
            # machine's pause in one call must not make a model look too slow to try.
            return tuple(time_forward(run, args, batch_dims, rows, repeat=2) for rows in (few, more))

        def at(timings: tuple[float, float]):
            t_few, t_more = timings
            return lambda rows: t_more + max(0.0, t_more - t_few) / (more - few) * (rows - more)

        # Three times the budget: the guess is rough, and a model wrongly left unmeasured
        # costs more than timing its batch (a fraction of the budget) does.
        over = 3 * (budget - spent) / cheapest
        per_rows = at(guess())
        if per_rows(batch) > over:
            # Confirmed before it counts: on a loaded machine a pause of seconds in both
            # timings of a size happens (a ResNet-34 looked 117 s slow per batch, not 5 s).
            second = at(guess())
            if second(batch) < per_rows(batch):
                per_rows = second
        guessed = per_rows(batch)
        too_slow = guessed > over
        if not too_slow and guessed * full_passes * 4 <= left():
            # Far inside the budget even if the guess is 4 times too low (the usual model):
            # the whole measurement runs, and timing a whole batch would only add to it.
            forward = guessed
        elif guessed * cheapest > GUESS_MARGIN * left():
            # Not even the smallest measurement of a whole batch fits, unless the guess is
            # GUESS_MARGIN times too high: timing that batch would only spend what smaller
            # batches (step 5) need. kuangliu's PreActResNet152 spent 13 s of its 30 s on it.
            too_slow = True
    if forward is None and not too_slow:
        forward = time_forward(run, args, batch_dims, batch)

    def search(forward: float, batches: int, population: int, fused: bool) -> tuple[int, int, int] | None:
        """The most batches, then probes, that fit what is left, with the population value
        if it fits at all."""
        room = left()
        for pop in dict.fromkeys((population, 0)):
            for p in range(probes, 0, -1):
                for b in range(batches, 0, -1):
                    if cost(forward, fused, b, p, pop) <= room:
                        return b, p, pop
        return None

    choice = search(forward, batches, population, fused) if forward is not None else None
    size, full_forward = batch, forward
    if choice is None and per_rows is not None:
        # Step 5: smaller batches, down to MIN_BATCH rows, without the population value (its
        # batch statistics would be those of a smaller batch too).
        room = memory.measurement_room(run.device)
        for smaller in _halvings(batch):
            route = reverse is not None and reverse(smaller)
            if per_rows(smaller) * _cost(1, 1, 0, False, fresh, segments, sequential, route) > left():
                continue
            if (1 + probes) * _held_at_once(run.graph, args, batch_dims, smaller) > room:
                # A worker near its memory cap (the heap keeps what earlier models freed):
                # an allocation failing inside the measurement is worse than not measuring.
                short_of_memory = True
                continue
            forward, count = time_forward(run, args, batch_dims, smaller), math.ceil(n / smaller)
            choice = search(forward, count, 0, False)
            if choice is not None:
                size, batches, fused = smaller, count, False
                break
    if choice is None:
        slowest = full_forward if full_forward is not None else per_rows(batch)
        about = "" if full_forward is not None else "about "
        reason = _too_slow(slowest, batch, cheapest, budget, left(), about, bool(_halvings(batch)))
        if short_of_memory:
            reason += "; smaller batches that would fit the time need more memory than this process may still use"
        raise OverBudget(reason)
    b, p, pop = choice
    estimate = cost(forward, fused, b, p, pop)
    # Extra probes (one more pass) only as far as the time left allows.
    spare = (left() - estimate) / (forward * b) - PASS_BASE
    per_probe = (PASS_BASE + PER_PROBE if sequential else PER_PROBE) * (1 + segments)
    if _by_cotangents(route, pop, fused and b == 1, segments):
        # More cotangents are backward passes over the first batch's recorded graph.
        spare, per_probe = (left() - estimate) / (forward * b), PER_COTANGENT
    extra = max(0, min(max_probes - p, math.floor(spare / per_probe)))
    given_up = []
    if size < batch:
        given_up.append(f"batches of {size} rows instead of {batch}")
    if b < batches:
        given_up.append(f"{b * size} of {batches * size} samples")
    if p < probes:
        given_up.append(f"{p} probe per sample instead of {probes}")
    if pop < asked:
        given_up.append("no population (eval) value")
    rows = n if b == batches else b * size
    full = (full_forward if full_forward is not None else per_rows(batch)) * full_passes
    return Fit(budget, rows, p, p + extra, bool(pop), forward, estimate, full, given_up, size, left=left())


def _held_at_once(graph: Any, args: tuple, batch_dims: list[int], rows: int) -> float:
    """Bytes of values a forward pass of ``rows`` rows holds at its peak, by the graph's
    shapes: each node's value from its node until its last user (the graph runs node by node
    and drops what nothing reads any more). A forward-mode measurement holds one such set
    per probe besides, so (1 + probes) times this is its own peak."""
    from archlint.measure.plan import _trace_batch

    traced = _trace_batch(graph, batch_dims)
    if not traced:
        return 0.0
    order = {node.name: i for i, node in enumerate(graph)}
    last = {}
    for node in graph:
        for name in node.inputs:
            last[name] = order[node.name]
    itemsize = next((a.element_size() for a in args if a.is_floating_point()), 4)
    peak = held = 0.0
    ends: dict[int, float] = {}
    for i, node in enumerate(graph):
        if node.shape:
            size = memory.values_size([node.shape], traced, rows, itemsize)
            held += size
            ends[last.get(node.name, i)] = ends.get(last.get(node.name, i), 0.0) + size
        peak = max(peak, held)
        held -= ends.pop(i, 0.0)
    return peak


def _halvings(batch: int) -> list[int]:
    """The smaller batch sizes step 5 tries, largest first: halving, down to MIN_BATCH."""
    sizes, size = [], batch // 2
    while size >= MIN_BATCH:
        sizes.append(size)
        size //= 2
    if batch > MIN_BATCH and (not sizes or sizes[-1] > MIN_BATCH):
        sizes.append(MIN_BATCH)
    return sizes


def _too_slow(forward: float, batch: int, cheapest: float, budget: float, left: float, about: str,
              smaller: bool = False) -> str:
    """Why a model is not measured. ``left``: what was left of the budget once the model was
    traced and timed, when that is what the smallest measurement exceeds; ``smaller``:
    smaller batches were tried too."""
    room = f"the measurement budget of {budget:g} s"
    if forward * cheapest <= budget:
        room = f"the {_seconds(max(left, 0.0))} s left (after tracing and timing it) of {room}"
    tried = f", as does one of {MIN_BATCH} rows" if smaller else ""
    return (f"one forward pass of a batch of {batch} takes {about}{_seconds(forward)} s, so even the smallest "
            f"measurement (one batch, one probe: about {_seconds(forward * cheapest)} s) exceeds {room}{tried} "
            f"(raise it with --measure-budget)")


def _seconds(value: float) -> str:
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def allows_float64(fitted: Fit | None, run_seconds: float, spent: float, device_type: str) -> bool:
    """Whether a float64 re-check of a measurement that took ``run_seconds`` fits the time
    left of the budget (always, without a budget)."""
    if fitted is None:
        return True
    return spent + run_seconds * FLOAT64_FACTOR.get(device_type, FLOAT64_FACTOR["cuda"]) <= fitted.budget
