"""``archlint normalize`` and ``archlint profile``: per-model tools on one model file.

Both load the file the way ``archlint check`` does (``engine.check_file``: discovery or
``--model``, the same seed, the same input inference), in this process: they are run on a
file a user chose, one at a time, and need the built model back.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from archlint.patterns import TARGET_NLC

_MODEL_HELP = "Build the model with this expression (or statements assigning `model`), evaluated in the file's namespace. Replaces discovery."
_INPUTS_HELP = "Forward arguments: an expression (or tuple) evaluated with `torch` and `model` in scope; its rows are the sample."


def _check(path: str, model_expr: str | None, inputs_expr: str | None, input_shape: str | None, seed: int | None, verify: bool):
    """(FileResult, Settings) of ``archlint check`` on one file, in this process."""
    from archlint import engine
    from archlint.cli import _cli_options, _file_settings
    from archlint.config import UsageError

    try:
        options = _cli_options(model_expr, inputs_expr, input_shape, None, None, None, None, not verify, None, None, seed, False)
        settings = _file_settings([Path(path)], options)[Path(path)]
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    result = engine.check_file(path, settings)
    problems = [f for f in result.findings if f.code in ("ARC900", "ARC903", "ARC904")]
    models = [m for m in result.models if m.graph is not None]
    if not models:
        for f in problems:
            click.echo(f"{f.span.path}:{f.span.line}: {f.code} {f.message}", err=True)
        raise click.ClickException(f"{path}: no model could be built and traced" + ("" if problems else " (no models found)"))
    return result, settings, models


def _sample(graph: Any, settings: Any, rows: int) -> Any:
    """The batch to work on: explicit inputs as given, else ``rows`` of --input-shape, else
    None (the tools infer the input family themselves)."""
    import torch

    from archlint import inputs as inputs_mod

    if settings.inputs:
        return graph.example_inputs
    if settings.input_shape:
        spec = inputs_mod.parse_input_shape(settings.input_shape)
        return inputs_mod.make_batch(spec, rows, torch.Generator().manual_seed(settings.seed))
    return None


def _where(span: Any) -> str:
    if span is None:
        return "-"
    try:
        shown = Path(span.path).resolve().relative_to(Path.cwd())
    except ValueError:
        shown = Path(span.path)
    return f"{shown}:{span.line}"


@click.command("normalize")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--target", type=click.FloatRange(min=1.0), default=TARGET_NLC, show_default=True, help="The NLC the normalised model should have at initialisation.")
@click.option("--model", "model_expr", metavar="EXPR", help=_MODEL_HELP)
@click.option("--inputs", "inputs_expr", metavar="EXPR", help=_INPUTS_HELP)
@click.option("--input-shape", metavar="C,H,W", help="Per-sample input shape (batch added), e.g. 3,32,32.")
@click.option("--tolerance", type=click.FloatRange(min=0.005, max=0.5), default=0.03, show_default=True, help="Relative distance from the target that is close enough.")
@click.option("--seed", type=int, help="Seed of the model build and the synthetic inputs.  [default: 0]")
@click.option("--diff", is_flag=True, help="Print the source change (ReLU -> LeakyReLU slopes) as a unified diff; the file is not touched.")
@click.option("--fix", is_flag=True, help="Write the source change (ReLU -> LeakyReLU slopes) into the file.")
def normalize_cmd(path, target, model_expr, inputs_expr, input_shape, tolerance, seed, diff, fix) -> None:
    """Set a model's NLC at initialisation to --target by changing how nonlinear each
    activation is (LeakyReLU slopes, pre-activation gains, interpolation with the identity),
    and print the changes and the measured NLC before and after.

    The file is not modified unless --fix is given.
    """
    logging.basicConfig(level=logging.WARNING, format="archlint: %(message)s", stream=sys.stderr)
    from archlint.normalization import DEFAULT_SAMPLES, NormalizeError, normalize

    _, settings, models = _check(path, model_expr, inputs_expr, input_shape, seed, verify=False)
    results = []
    for m in models:
        graph = m.graph
        try:
            res = normalize(graph.model, _sample(graph, settings, DEFAULT_SAMPLES), target=target, tolerance=tolerance,
                            seed=settings.seed, graph=graph)
        except NormalizeError as exc:
            click.echo(f"{graph.name}: cannot normalise: {exc}", err=True)
            continue
        results.append((graph, res))
        click.echo(f"{graph.name}: {res}".split("\n")[0])
        for c in res.changes:
            what = c.change if c.form != "unchanged" else f"unchanged: {c.reason}"
            click.echo(f"  {_where(c.span)}: {c.name}: {what}; layer NLC {_f(c.layer_nlc_before)} -> {_f(c.layer_nlc_after)}")
    if not results:
        raise click.ClickException("nothing was normalised")
    if diff or fix:
        from archlint import normalize_fix

        text = Path(path).read_text(encoding="utf-8")
        new, notes = normalize_fix.rewrite(text, path, [c for _, r in results for c in r.changes])
        for note in notes:
            click.echo(f"note: {note}", err=True)
        if diff:
            click.echo(normalize_fix.unified_diff(text, new, path), nl=False)
        if fix and new != text:
            Path(path).write_text(new, encoding="utf-8")
            click.echo(f"wrote {path}", err=True)
    if any(not r.converged for _, r in results):
        sys.exit(1)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


@click.command("profile")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, writable=True), default="profile.png", show_default=True, help="Where to write the plot: .png, .svg, .pdf, or .html (the plot and a table).")
@click.option("--model", "model_expr", metavar="EXPR", help=_MODEL_HELP)
@click.option("--inputs", "inputs_expr", metavar="EXPR", help=_INPUTS_HELP)
@click.option("--input-shape", metavar="C,H,W", help="Per-sample input shape (batch added), e.g. 3,32,32.")
@click.option("--seed", type=int, help="Seed of the model build and the synthetic inputs.  [default: 0]")
def profile_cmd(path, output, model_expr, inputs_expr, input_shape, seed) -> None:
    """Plot each model's per-layer profile along depth: the NLC from the input, the layer
    NLC, RMS and spread, neuron bias and dead units, measured beside predicted, with the
    rules' thresholds and the findings marked. Several models in the file get one file
    each (NAME-Model.png)."""
    logging.basicConfig(level=logging.WARNING, format="archlint: %(message)s", stream=sys.stderr)
    from archlint import profile

    try:
        profile._matplotlib()
    except profile.PlotUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    from archlint import device, engine
    from archlint.measure.budget import OverBudget

    result, settings, models = _check(path, model_expr, inputs_expr, input_shape, seed, verify=True)
    out = Path(output)
    for m in models:
        graph = m.graph
        report = graph.measured
        # A clean model got the screening measurement only: the profile wants every node.
        if report is None or m.screened:
            # Measured as `archlint check` measures: the same batch (the entry's own inputs or
            # input shape, --data), seeded, on the resolved device.
            try:
                report = engine.measure_graph(graph, m.entry, settings, device.resolve(settings.device), [])
            except OverBudget as exc:
                raise click.ClickException(f"{graph.name}: {exc}") from exc
        findings = [f for f in result.findings if f.model == graph.name and not f.is_meta and f.status != "dismissed"]
        target = out if len(models) == 1 else out.with_name(f"{out.stem}-{graph.name}{out.suffix}")
        profile.plot(report, graph, findings, target, rule_options=settings.rule_options,
                     title=f"{graph.name}: output NLC {_f(report.output_nlc_population or report.output_nlc)}")
        codes = ", ".join(sorted({f.code for f in findings})) or "no findings"
        click.echo(f"{graph.name}: wrote {target} ({codes})")
