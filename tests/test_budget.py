"""The measurement's time budget (archlint.measure.budget): a slow model is measured on fewer
samples, or not at all, instead of being stopped; and the worker's timeout stops hangs, not
files that take long because they hold many models.

The slow models sleep in forward for a time proportional to the rows they are given, so
that they are slow whatever the machine's load, and their cost per row is known. Their
forward has a data-dependent branch: torch.fx cannot trace it, so every measured pass runs
the model's own forward (and sleeps) rather than a traced graph.
"""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
from torch import nn

from archlint import worker
from archlint.config import Settings
from archlint.results import FileResult
from archlint.engine import check_file
from archlint.measure import measure
from archlint.measure.budget import OverBudget
from archlint.trace import trace

SLEEPY = '''
import time

import torch
from torch import nn


def sleepy(x, per_row):
    # Data-dependent: torch.fx cannot trace it, so every measured pass sleeps too.
    if x.sum() > -1e9:
        time.sleep(per_row * x.shape[0])
'''

HOT_MLP = '''
class {name}(nn.Module):
    """12 Linear-tanh layers with weight variance 9/fan_in: ARC103 and ARC104."""

    def __init__(self, width=32, depth=12):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=3.0 / width**0.5)
            nn.init.zeros_(layer.bias)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        sleepy(x, {per_row})
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)
'''


def sleepy_module(per_row: float) -> nn.Module:
    namespace: dict = {}
    exec(SLEEPY + HOT_MLP.format(name="Sleepy", per_row=per_row), namespace)  # noqa: S102
    return namespace["Sleepy"]()


class BNSleepy(nn.Module):
    """Sleepy with train-mode BatchNorm after it: its batch is part of the function."""

    def __init__(self, per_row):
        super().__init__()
        self.inner = sleepy_module(per_row)
        self.bn = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.bn(self.inner(x))


def model_file(tmp_path, *models: tuple[str, float], name: str = "models.py"):
    path = tmp_path / name
    path.write_text(SLEEPY + "".join(HOT_MLP.format(name=name, per_row=per_row) for name, per_row in models))
    return path


def test_a_model_slower_than_the_budget_is_measured_on_fewer_samples():
    torch.manual_seed(0)
    model = sleepy_module(0.01)  # a batch of 32 rows: 0.32 s per forward pass
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="Sleepy")
    assert graph.traced_with == "eager"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # The full measurement (4 batches of 32, 2 probes each) needs about 18 forward passes.
    report = measure(model, x, graph=graph, batch_size=32, budget=5.0)
    # The budget is met on an estimate (one forward pass times what a measurement costs in
    # forward passes), so a loaded machine may overrun it a little.
    assert report.seconds < 1.5 * 5.0
    assert report.batch_size == 32 and report.samples in (32, 64, 96)
    assert report.budget_note is not None and report.notes[0] == report.budget_note
    assert f"{report.samples} of 128 samples" in report.budget_note and "budget of 5 s" in report.budget_note
    # What tracing and timing left of the budget is said: a full estimate under the budget
    # may not fit it.
    left = re.search(r"and ([0-9.]+) s of the budget were left after tracing and timing", report.budget_note)
    assert left is not None and 0 < float(left.group(1)) < 5.0
    assert report.output_nlc_se is not None and report.output_nlc_se > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_output_alone_is_estimated_at_the_cost_of_reverse_mode_probes():
    # The output's NLC alone is measured by reverse-mode probes (measure.cotangents): about
    # 3.25 forward passes a batch, where this model's forward-mode probes (one by one: it
    # cannot be traced) would cost 2 x 4. A budget that the first fits for the whole sample,
    # and the second for one batch, measures every sample.
    torch.manual_seed(0)
    model = sleepy_module(0.01)  # a batch of 32 rows: 0.32 s per forward pass
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="Sleepy")
    report = measure(model, x, graph=graph, batch_size=32, nodes=(), budget=5.5)
    assert any("reverse-mode probes" in note for note in report.notes)
    assert report.samples == 128 and report.budget_note is None
    assert report.seconds < 5.5


def test_a_smaller_batch_that_suits_reverse_mode_probes_is_estimated_at_their_cost():
    # A reverse-mode pass holds every value of its batch, so a batch of 32 may suit it where
    # one of 128 does not (plan.by_cotangents): the budget asks again at each smaller size.
    from archlint.measure import budget
    from archlint.measure.model import _Runnable

    torch.manual_seed(0)
    model = sleepy_module(0.01)  # 0.01 s per row in every forward pass
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="Sleepy")
    asked = []

    def reverse(rows):
        asked.append(rows)
        return rows <= 32

    fitted = budget.fit(_Runnable(graph, model, torch.device("cpu")), (x,), [0], batch_size=128, probes=1, max_probes=1,
                        population=0, fused=False, fresh=False, segments=0, budget=2.5, reverse=reverse)
    # After 0.2 s of small timings, neither 128 rows (forward mode: 4 forward passes, 5.1 s)
    # nor 64 (2.6 s) fit; 32 rows by reverse-mode probes (3.25 passes, 1 s, after 0.3 s timing
    # them) do, with about 0.9 s to spare.
    assert asked[0] == 128 and 32 in asked
    assert fitted.batch_size == 32 and fitted.rows == 32
    assert fitted.estimate == pytest.approx(fitted.forward_seconds * (budget.REVERSE_BASE + budget.PER_COTANGENT))


def test_a_whole_batch_that_cannot_fit_is_not_timed(monkeypatch):
    # The small timings say that even one probe on a whole batch (4 forward passes of 1.28 s)
    # needs more than 1.5 times the budget: timing that batch would spend half of it, so the
    # smaller batches are timed instead, and one of them is measured.
    from archlint.measure import budget

    timed = []
    time_forward = budget.time_forward

    def recorded(run, args, batch_dims, rows, repeat=1):
        timed.append(rows)
        return time_forward(run, args, batch_dims, rows, repeat)

    monkeypatch.setattr(budget, "time_forward", recorded)
    torch.manual_seed(0)
    model = sleepy_module(0.01)
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="Sleepy")
    report = measure(model, x, graph=graph, budget=2.5)
    assert 128 not in timed and max(timed) == report.batch_size < 128
    assert report.seconds < 1.5 * 2.5 and f"batches of {report.batch_size} rows instead of 128" in report.budget_note


def test_train_mode_batchnorm_keeps_its_batch_size_under_the_budget():
    torch.manual_seed(0)
    model = BNSleepy(0.01)
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="BNSleepy")
    report = measure(model, x, graph=graph, batch_size=32, budget=5.0)
    # Fewer batches, each of the 32 rows that the trained function sees.
    assert report.mode == "train-bn" and report.batch_size == 32 and report.samples < 128
    assert report.budget_note is not None


def test_a_model_that_does_not_fit_one_batch_is_measured_on_a_smaller_one():
    torch.manual_seed(0)
    model = BNSleepy(0.01)  # 1.28 s a forward pass of 128 rows, 0.32 s of 32
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="BNSleepy")
    # One batch of 128 with one probe: about 4 forward passes, 5.1 s; of 32 rows: 1.3 s.
    report = measure(model, x, graph=graph, budget=4.0)
    assert report.mode == "train-bn" and report.batch_size == 32 and report.samples == 32
    assert report.seconds < 1.5 * 4.0
    assert "batches of 32 rows instead of 128" in report.budget_note
    assert "no population (eval) value" in report.budget_note and report.output_nlc_population is None
    assert report.output_nlc is not None and report.output_nlc_se > 0


def test_a_smaller_batch_is_chosen_only_within_the_memory_a_measurement_may_hold(monkeypatch):
    import archlint.memory as memory

    torch.manual_seed(0)
    model = BNSleepy(0.01)
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="BNSleepy")
    monkeypatch.setattr(memory, "measurement_room", lambda device: 1000)
    with pytest.raises(OverBudget, match="smaller batches that would fit the time need more memory"):
        measure(model, x, graph=graph, budget=4.0)


def test_what_a_forward_pass_holds_at_its_peak():
    from archlint.measure.budget import _held_at_once

    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(10, 16)
    graph = trace(model, (x[:4],), name="chain")
    # At the ReLU: its input (64) and its value (64); the input (16) was dropped after the
    # first layer read it.
    assert _held_at_once(graph, (x,), [0], 10) == 128 * 10 * 4


def test_a_model_over_the_budget_is_not_run_for_a_whole_batch():
    model = sleepy_module(0.1)  # a batch of 128 rows would sleep 12.8 s
    x = torch.randn(128, 32)
    graph = trace(model, (x[:2],), name="Sleepy")
    with pytest.raises(OverBudget, match=r"takes about .* exceeds the measurement budget of 1 s, as does one of 32 rows "
                                         r"\(raise it with --measure-budget\)"):
        measure(model, x, graph=graph, budget=1.0)


def test_a_budget_that_fits_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(128, 8)
    plain = measure(model, x, batch_size=64)
    timed = measure(model, x, batch_size=64, budget=600.0)
    assert timed.budget_note is None
    assert (timed.samples, timed.probes, timed.population_probes) == (plain.samples, plain.probes, plain.population_probes)
    # The timing forward pass draws nothing from the seeded random numbers the probes use.
    assert timed.output_nlc == plain.output_nlc and timed.output_nlc_population == plain.output_nlc_population


def test_a_file_whose_first_model_is_over_the_budget_reports_the_others(tmp_path):
    path = model_file(tmp_path, ("TooSlow", 0.1), ("Slow", 0.01), ("Fast", 0.0))
    result = check_file(path, Settings(batch_size=32, measure_budget=5.0))
    by_model: dict = {}
    for f in result.findings:
        by_model.setdefault(f.model, []).append(f)
    # TooSlow: a batch of 32 rows sleeps 3.2 s; one pass with one probe is 3.5 of those.
    (not_measured,) = [f for f in by_model["TooSlow"] if f.code == "ARC905"]
    assert "TooSlow was not measured: one forward pass of a batch of 32 takes" in not_measured.message
    assert "exceeds the measurement budget of 5 s" in not_measured.message
    assert {f.status for f in by_model["TooSlow"] if f.code in ("ARC103", "ARC104")} == {"predicted"}
    # Slow: measured on fewer samples, and its findings say so with the standard error.
    (slow,) = [f for f in by_model["Slow"] if f.code == "ARC103"]
    assert slow.status == "confirmed"
    assert "measured with" in slow.reason and "of 128 samples" in slow.reason and "±" in slow.reason
    # Fast: measured as usual.
    (fast,) = [f for f in by_model["Fast"] if f.code == "ARC103"]
    assert fast.status == "confirmed"
    assert not any(f.code == "ARC905" for f in by_model["Slow"] + by_model["Fast"])


def test_the_budget_is_a_setting_with_a_config_key_and_an_option(tmp_path):
    from click.testing import CliRunner

    from archlint import cli

    (tmp_path / "pyproject.toml").write_text("[tool.archlint]\nmeasure-budget = 12.5\n")
    target = tmp_path / "net.py"
    target.write_text("import torch\n")

    def budget(*args: str) -> float | None:
        options = cli._cli_options(None, None, None, None, None, None, None, False, None, None, None, False, *args)
        return cli._file_settings([target], options)[target].measure_budget

    assert budget() == 12.5
    assert budget(3.0) == 3.0  # the command line wins
    (tmp_path / "pyproject.toml").write_text("[tool.archlint]\nmeasure-budget = 0\n")
    bad = CliRunner().invoke(cli.main, ["check", str(target), "--no-verify"])
    assert bad.exit_code == 2 and "measure-budget must be a number of seconds > 0" in bad.stderr
    assert CliRunner().invoke(cli.main, ["check", str(target), "--measure-budget", "0"]).exit_code == 2
    assert "--measure-budget" in CliRunner().invoke(cli.main, ["check", "--help"]).stdout


# --------------------------------------------------------------------------------------
# The worker's timeout: hangs, not large files

SLOW_TRACE = '''
class Net{i}(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        sleepy(x, 0.5)  # 1 s for the 2 rows it is traced with
        return self.fc(x)
'''


def test_a_file_of_many_models_is_not_stopped_while_it_makes_progress(tmp_path):
    path = tmp_path / "many.py"
    path.write_text(SLEEPY + "".join(SLOW_TRACE.format(i=i) for i in range(4)))
    # Four models of about a second each: longer than the timeout, but each stage is shorter.
    with worker.Isolated(timeout=3.0, verify=False) as isolated:
        result = isolated.analyse(path, Settings(verify=False))
    assert result.failure is None
    assert result.n_models == 4
    assert not any("did not finish" in f.message for f in result.findings)


def test_a_hang_in_the_measurement_is_stopped_after_the_timeout_and_the_budget(tmp_path):
    path = tmp_path / "hangs.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn


        class HangsOnLargeBatches(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                # Traced on 2 rows; loops forever on the measurement's larger batches.
                while x.shape[0] > 2: pass  # noqa: E701
                return self.fc(x)
    '''))
    with worker.Isolated(timeout=2.0) as isolated:
        result = isolated.analyse(path, Settings(measure_budget=1.0))
    (stopped,) = [f for f in result.findings if f.code == "ARC905"]
    assert stopped.message == (
        "HangsOnLargeBatches was not measured: the measurement did not finish within 3 s (the --timeout of 2 s "
        "beyond its measurement budget of 1 s) and was stopped (an endless loop? raise the limit with --timeout); "
        "its verdicts are static predictions")
    assert stopped.span.line == path.read_text().splitlines().index("        while x.shape[0] > 2: pass  # noqa: E701") + 1


def test_a_result_cut_to_the_budget_is_not_cached(tmp_path):
    path = model_file(tmp_path, ("TooSlow", 0.1), ("Fast", 0.0))
    settings = Settings(batch_size=32, measure_budget=5.0)
    result = check_file(path, settings)
    # It depends on the machine's speed and load, like a timeout: the next run measures again.
    assert result.over_budget and result.machine_dependent
    assert FileResult.from_dict(result.to_dict()).over_budget
    fast_only = check_file(model_file(tmp_path, ("Fast", 0.0), name="fast.py"), Settings(batch_size=32, measure_budget=600.0))
    assert fast_only.findings and not fast_only.over_budget and not fast_only.machine_dependent
