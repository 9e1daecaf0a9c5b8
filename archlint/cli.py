"""The command line: ``archlint check PATHS...`` (a bare ``archlint PATH`` means check).

Results go to stdout (or ``-o FILE``); progress, summaries and logs go to stderr.
Exit codes: 0 no findings, 1 findings, 2 usage error or internal crash.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import click

from archlint import __version__, worker
from archlint.config import DEFAULT_SELECT, Settings, UsageError, find_config, model_entries, validate_codes
from archlint.files import iter_python_files, mentions_torch, read_source
from archlint.worker import DEFAULT_TIMEOUT

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
# What shells report for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
FORMATS = ("full", "concise", "json")


class _DefaultToCheck(click.Group):
    """Route ``archlint PATH ...`` to ``archlint check PATH ...``, as ruff does not but
    flake8 users expect."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["check", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToCheck, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="archlint")
def main() -> None:
    """archlint: find architecture risks in PyTorch models before they cost GPU days.

    archlint imports your model file, builds its models, traces them with torch.fx and
    flags risky patterns (deep stacks without skips, saturated activations, collapsing
    signal) with a value predicted from the architecture; a verification pass then runs
    the model and confirms or dismisses each finding with the measured nonlinearity
    coefficient (NLC).

    \b
    Examples:
      archlint models/resnet.py
      archlint check src/ --output-format concise
      archlint check net.py --model "ResNet(depth=56)" --input-shape 3,32,32
      archlint rule ARC103
    """


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=str))
@click.option("--model", "model_expr", metavar="EXPR", help='Build the model with this expression (or statements assigning `model`), evaluated in the file\'s namespace, e.g. "ResNet(depth=56)". Replaces discovery.')
@click.option("--inputs", "inputs_expr", metavar="EXPR", help='Forward arguments: an expression (or tuple) evaluated with `torch` and `model` in scope, e.g. "torch.randn(8, 3, 32, 32)".')
@click.option("--input-shape", metavar="C,H,W", help="Per-sample input shape (batch added), e.g. 3,32,32.")
@click.option("--data", metavar="MODULE:FUNC", help="A function returning a real batch (tensor or tuple of forward arguments) for the verification pass.")
@click.option("--output-format", type=click.Choice(FORMATS), default="full", show_default=True, help="How findings are printed.")
@click.option("-o", "--output-file", type=click.Path(dir_okay=False, writable=True), help="Write findings to this file instead of stdout.")
@click.option("--select", metavar="CODES", help=f"Comma-separated rule codes or prefixes to enable (ALL for every rule). Default: {','.join(DEFAULT_SELECT)}.")
@click.option("--extend-select", metavar="CODES", help="Codes or prefixes to enable on top of the selection.")
@click.option("--ignore", metavar="CODES", help="Comma-separated rule codes or prefixes to disable.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings.")
@click.option("--no-verify", is_flag=True, help="Static pass only: skip measuring the model (findings stay `predicted`).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]", help="Where the verification pass runs.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True, help="Batch size of the verification pass.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic inputs and random directions.")
@click.option("--show-dismissed", is_flag=True, help="Also show findings the measurement dismissed, with the measured value.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT, show_default=True, metavar="SECONDS", help="Stop analysing a file after this long (its code may loop forever) and report it.")
@click.option("--memory-limit", default="auto", show_default=True, metavar="SIZE", help="Memory a file's analysis may use, e.g. 4GiB, 512MiB or none (auto: half the physical memory).")
@click.option("--no-isolation", is_flag=True, hidden=True, help="Analyse in this process (debugging): no timeout, no memory limit, model output not redirected.")
@click.option("-q", "--quiet", is_flag=True, help="No summary or progress on stderr.")
def check(paths: tuple[str, ...], model_expr, inputs_expr, input_shape, data, output_format, output_file, select, extend_select, ignore, exit_zero, no_verify, device, batch_size, seed, show_dismissed, timeout, memory_limit, no_isolation, quiet) -> None:
    """Lint model files and directories (directories are walked for *.py files).

    Each file is analysed in its own worker process with a time and a memory limit; a file
    whose code crashes, exits or hangs is reported (ARC900/ARC903/ARC904) and the run goes on.

    Exit status: 0 no findings, 1 findings, 2 usage error or internal crash.
    """
    log_level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=log_level, format="archlint: %(message)s", stream=sys.stderr)
    try:
        settings = _settings(model_expr, inputs_expr, input_shape, data, select, extend_select, ignore, no_verify, device, batch_size, seed, show_dismissed)
        memory_bytes = worker.default_memory_limit() if memory_limit == "auto" else worker.parse_size(memory_limit)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    except ValueError as exc:
        raise click.UsageError(f"--memory-limit: {exc}") from exc

    files = []
    for path in iter_python_files(list(paths)):
        source = read_source(path)
        # Unreadable files go to the engine, which reports them as ARC900.
        if source is None or settings.model is not None or mentions_torch(source):
            files.append(path)
    try:
        settings.models = _configured_models(files)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    if not files:
        if not quiet:
            click.echo("archlint: no model files to check", err=True)
        _write("" if output_format != "json" else "[]\n", output_file)
        sys.exit(EXIT_CLEAN)

    try:
        if no_isolation:
            import torch

            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
            code = _run(files, settings, output_format, output_file, quiet, worker.analyse_in_process)
        else:
            with worker.Isolated(timeout, memory_bytes, log_level, verify=settings.verify) as isolated:
                code = _run(files, settings, output_format, output_file, quiet, isolated.analyse)
    except KeyboardInterrupt:
        # The worker is already killed (Isolated.__exit__); no traceback for a Ctrl-C.
        click.echo("archlint: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:  # a bug in archlint itself, never in the user's code
        click.echo("archlint: internal error, please report it with this traceback:", err=True)
        click.echo(traceback.format_exc(), err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_CLEAN if exit_zero else code)


def _settings(model_expr, inputs_expr, input_shape, data, select, extend_select, ignore, no_verify, device, batch_size, seed, show_dismissed) -> Settings:
    from archlint import rule as rules_api

    known = list(rules_api.registry())
    settings = Settings(
        model=model_expr,
        inputs=inputs_expr,
        input_shape=input_shape,
        data=data,
        verify=not no_verify,
        device=device,
        batch_size=batch_size,
        seed=seed,
        show_dismissed=show_dismissed,
    )
    if select:
        settings.select = validate_codes(select.split(","), known, "--select")
    if extend_select:
        settings.extend_select = validate_codes(extend_select.split(","), known, "--extend-select")
    if ignore:
        settings.ignore = validate_codes(ignore.split(","), known, "--ignore")
    if device != "auto" and not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UsageError(f"--device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    if input_shape:
        parts = input_shape.split(",")
        if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"--input-shape: {input_shape!r} must be positive integers separated by commas, e.g. 3,32,32")
    return settings


def _configured_models(files: list[Path]) -> tuple:
    """[[tool.archlint.models]] entries from the nearest config of each file."""
    seen: dict[Path, list] = {}
    for path in files:
        found = find_config(path)
        if found is not None and found[0] not in seen:
            seen[found[0]] = model_entries(*found)
    return tuple(entry for entries in seen.values() for entry in entries)


def _run(files: list[Path], settings: Settings, output_format: str, output_file: str | None, quiet: bool, analyse: worker.Analyse) -> int:
    """``analyse(path, settings) -> FileReport`` is the per-file seam: in a worker process
    (the default) or in this one (``--no-isolation``)."""
    from archlint import output
    from archlint import rule as rules_api

    findings = []
    sources: dict[str, str] = {}
    n_models = 0
    for path in files:
        if not quiet:
            click.echo(f"archlint: checking {path}", err=True)
        result = analyse(path, settings)
        if result.skipped:
            continue
        n_models += result.n_models
        findings.extend(result.findings)
        for f in result.findings:
            if f.span.path not in sources:
                sources[f.span.path] = read_source(Path(f.span.path)) or ""
    ctx = output.Context(root=os.getcwd(), sources=sources)
    _write(output.render(output_format, findings, ctx), output_file)
    failing = [f for f in findings if f.status != "dismissed" and rules_api.get(f.code).affects_exit]
    if not quiet:
        by_status: dict[str, int] = {}
        for f in findings:
            by_status[f.status] = by_status.get(f.status, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        click.echo(
            f"archlint: {len(findings)} finding{'s' if len(findings) != 1 else ''}"
            f"{f' ({detail})' if detail else ''} in {n_models} model{'s' if n_models != 1 else ''} "
            f"across {len(files)} file{'s' if len(files) != 1 else ''}",
            err=True,
        )
    return EXIT_FINDINGS if failing else EXIT_CLEAN


def _write(text: str, output_file: str | None) -> None:
    if output_file:
        Path(output_file).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


@main.command("rule")
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="Show every rule.")
@click.option("--output-format", type=click.Choice(("text", "json")), default="text", show_default=True)
def rule_cmd(code: str | None, show_all: bool, output_format: str) -> None:
    """Show a rule's documentation, e.g. `archlint rule ARC103`."""
    import json

    from archlint import rule as rules_api

    reg = rules_api.registry()
    if show_all:
        chosen = list(reg.values())
    elif code:
        key = code.upper()
        by_name = {r.name: r for r in reg.values()}
        if key in reg:
            chosen = [reg[key]]
        elif code in by_name:
            chosen = [by_name[code]]
        else:
            raise click.UsageError(f"unknown rule {code!r}; `archlint rule --all` lists them")
    else:
        raise click.UsageError("give a rule code (e.g. ARC103) or --all")
    if output_format == "json":
        click.echo(json.dumps([
            {"code": r.code, "name": r.name, "severity": r.severity, "summary": r.summary, "options": r.options, "explanation": r.doc}
            for r in chosen
        ], indent=2))
    else:
        click.echo("\n\n".join(f"# {r.code} {r.name} ({r.severity})\n\n{r.doc}" for r in chosen))


if __name__ == "__main__":
    main()
