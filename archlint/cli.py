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

from archlint import __version__, jobs, memory, worker
from archlint.cache import CACHE_DIR_NAME
from archlint.config import DEFAULT_SELECT, ConfigFinder, Settings, UsageError, exclude_patterns, find_config, resolve_settings, validate_codes, validate_device
from archlint.files import is_excluded, iter_python_files, mentions_torch, read_source
from archlint.output import FORMATS
from archlint.measure.budget import DEFAULT_CPU, DEFAULT_GPU
from archlint.worker import DEFAULT_TIMEOUT

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
# What shells report for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
# A worker needs this much to import torch at all: a lower --memory-limit is a mistake.
MIN_MEMORY_LIMIT = 256 * 1024**2
# Without --jobs, each worker keeps at least this much of the memory limit: a verified check
# of a CIFAR model (batch 128) peaks at 1-2 GiB of resident memory, the largest of
# pytorch-cifar's files at 5.4 GiB (docs/speed.md).
AUTO_WORKER_MEMORY = 4 * 1024**3


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
@click.option("--statistics", is_flag=True, help="Print the number of findings per rule instead of the findings.")
@click.option("-o", "--output-file", type=click.Path(dir_okay=False, writable=True), help="Write findings to this file instead of stdout.")
@click.option("--select", metavar="CODES", help=f"Comma-separated rule codes or prefixes to enable (ALL for every rule). Default: {','.join(DEFAULT_SELECT)}.")
@click.option("--extend-select", metavar="CODES", help="Codes or prefixes to enable on top of the selection.")
@click.option("--ignore", metavar="CODES", help="Comma-separated rule codes or prefixes to disable.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings.")
@click.option("--no-verify", is_flag=True, help="Static pass only: skip measuring the model (findings stay `predicted`).")
# No click defaults for options a config file may set: only values given here override it.
@click.option("--device", metavar="auto|cpu|cuda[:N]", help="Where the verification pass runs.  [default: auto]")
@click.option("--batch-size", type=click.IntRange(min=2), help="Batch size of the verification pass.  [default: 128]")
@click.option("--seed", type=int, help="Seed of the synthetic inputs and random directions.  [default: 0]")
@click.option("--measure-budget", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help=f"Time one model's measurement may take: a slower one uses fewer samples or probes (and says so, with the standard error reached), and a model whose single batch does not fit stays unmeasured (ARC905).  [default: {DEFAULT_CPU:g} on a CPU, {DEFAULT_GPU:g} on a GPU]")
@click.option("--memory-budget", metavar="SIZE", help="Largest model (parameters and buffers, e.g. 8GiB) to build for real and measure; larger ones are analysed on the meta device only.  [default: a quarter of the available memory]")
@click.option("--show-dismissed", is_flag=True, help="Also show findings the measurement dismissed, with the measured value.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT, show_default=True, metavar="SECONDS", help="Stop analysing a file when it makes no progress for this long (its code may loop forever) and report it; a model's measurement may also take its --measure-budget.")
@click.option("--memory-limit", default="auto", show_default=True, metavar="SIZE", help="Memory a file's analysis may use, e.g. 4GiB, 512MiB or none (auto: half the physical memory).")
@click.option("-j", "--jobs", "n_jobs", type=click.IntRange(min=1), metavar="N", help="Analyse N files at once, each in its own worker; the workers share --memory-limit and --memory-budget evenly. 1: one file after the other.  [default: the usable cores, at most one per 4 GiB of the memory limit]")
@click.option("--no-isolation", is_flag=True, hidden=True, help="Analyse in this process (debugging): no timeout, no memory limit, model output not redirected.")
@click.option("-q", "--quiet", is_flag=True, help="No summary or progress on stderr.")
@click.option("--exclude", metavar="PATTERNS", help="Comma-separated globs of files and folders to skip (replaces the config's `exclude`), e.g. generated,legacy/*.py.")
@click.option("--extend-exclude", metavar="PATTERNS", help="Globs to skip on top of `exclude`.")
@click.option("--force-exclude", is_flag=True, help="Apply the exclusions to files named on the command line too (pre-commit names every file it checks).")
@click.option("-n", "--no-cache", is_flag=True, envvar="ARCHLINT_NO_CACHE", help="Neither read nor write the cache. [env: ARCHLINT_NO_CACHE]")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="ARCHLINT_CACHE_DIR", help=f"Where to keep the cache (default: {CACHE_DIR_NAME} next to the nearest config, else in the current directory). [env: ARCHLINT_CACHE_DIR]")
@click.option("--fix", is_flag=True, help="Apply the verified fixes (each was checked and measured on an edited copy first), then report what is left. Fixes change what the model computes: review them.")
@click.option("--diff", "show_diff", is_flag=True, help="Print the verified fixes as a unified diff and change nothing; exit 1 when there is something to fix.")
@click.option("--fix-only", is_flag=True, help="Apply the verified fixes and report nothing else (exit 0).")
@click.option("--show-fixes", is_flag=True, help="Propose and verify fixes and show them with the findings; with --fix, also list what was fixed.")
def check(paths: tuple[str, ...], model_expr, inputs_expr, input_shape, data, output_format, statistics, output_file, select, extend_select, ignore, exit_zero, no_verify, device, batch_size, seed, measure_budget, memory_budget, show_dismissed, timeout, memory_limit, n_jobs, no_isolation, quiet, exclude, extend_exclude, force_exclude, no_cache, cache_dir, fix, show_diff, fix_only, show_fixes) -> None:
    """Lint model files and directories (directories are walked for *.py files).

    Each file is analysed in its own worker process with a time and a memory limit; a file
    whose code crashes, exits or hangs is reported (ARC900/ARC903/ARC904) and the run goes on.

    Files found by walking a directory are skipped when they match `exclude` or
    `extend-exclude`; files named explicitly only with --force-exclude. Without PATHS there
    is nothing to check: archlint says so and exits 0.

    Exit status: 0 no findings, 1 findings, 2 usage error or internal crash.
    """
    fixing = FixMode(apply=fix or fix_only, diff=show_diff, only=fix_only, show=show_fixes)
    if fixing.diff and fixing.apply:
        raise click.UsageError("--diff changes nothing: it cannot be combined with --fix or --fix-only")
    log_level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=log_level, format="archlint: %(message)s", stream=sys.stderr)
    try:
        cli_options = _cli_options(model_expr, inputs_expr, input_shape, data, select, extend_select, ignore, no_verify, device, batch_size, seed, show_dismissed, measure_budget)
        memory_bytes = memory.default_memory_limit() if memory_limit == "auto" else memory.parse_size(
            memory_limit, allow_none=True, minimum=MIN_MEMORY_LIMIT)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    except ValueError as exc:
        raise click.UsageError(f"--memory-limit: {exc}") from exc
    budget = None
    if memory_budget is not None:
        try:
            budget = memory.parse_size(memory_budget)
        except ValueError as exc:
            raise click.UsageError(f"--memory-budget: {exc}") from exc

    try:
        files = _collect(paths, model_expr is not None, _patterns(exclude), _patterns(extend_exclude) or (), force_exclude)
        settings = _file_settings(files, cli_options)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        n_workers = 1 if no_isolation else _workers(n_jobs, len(files), memory_bytes)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    for file_settings in settings.values():
        file_settings.memory_budget = budget
        file_settings.workers = n_workers
        file_settings.fixes = fixing.wanted
    if not files:
        if not quiet:
            click.echo("archlint: no model files to check", err=True)
        # Still a valid document in the chosen format (SARIF and JUnit readers need one).
        _write(_render(output_format, statistics, [], os.getcwd(), {}), output_file)
        sys.exit(EXIT_CLEAN)

    from archlint.cache import Cache

    store = None if no_cache else Cache(settings, cache_dir)
    try:
        if no_isolation:
            worker.prepare_process()
            code = _run(files, settings, output_format, statistics, output_file, quiet, worker.analyse_in_process, store, fixing)
        else:
            verify = any(s.verify for s in settings.values())
            # The workers running at once share the memory limit (and the budget: Settings.workers).
            with worker.Isolated(timeout, memory.share(memory_bytes, n_workers), log_level, verify=verify) as isolated:
                code = _run(files, settings, output_format, statistics, output_file, quiet, isolated.analyse, store, fixing,
                            workers=n_workers, isolated=isolated)
    except KeyboardInterrupt:
        # The worker is already killed (Isolated.__exit__); no traceback for a Ctrl-C.
        click.echo("archlint: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:  # a bug in archlint itself, never in the user's code
        click.echo("archlint: internal error, please report it with this traceback:", err=True)
        click.echo(traceback.format_exc(), err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_CLEAN if exit_zero else code)


def _workers(n_jobs: int | None, n_files: int, memory_limit: int | None) -> int:
    """How many files to analyse at once: --jobs, no more than there are files. By default
    the usable cores, as long as each worker's share of the memory limit is at least
    AUTO_WORKER_MEMORY; a --jobs that leaves a worker less than MIN_MEMORY_LIMIT is a usage
    error."""
    n = max(1, min(n_jobs or jobs.usable_cpus(), n_files))
    if memory_limit is None:
        return n
    if n_jobs is None:
        return max(1, min(n, memory_limit // AUTO_WORKER_MEMORY))
    if memory.share(memory_limit, n) < MIN_MEMORY_LIMIT:
        raise UsageError(
            f"--jobs {n_jobs}: the memory limit of {memory.format_size(memory_limit)}, shared by {n} workers, "
            f"leaves each less than {memory.format_size(MIN_MEMORY_LIMIT)}; lower --jobs or raise --memory-limit")
    return n


def _cli_options(model_expr, inputs_expr, input_shape, data, select, extend_select, ignore, no_verify, device, batch_size, seed, show_dismissed, measure_budget=None) -> dict:
    """The options given on the command line, validated: they override the config file."""
    from archlint import rule as rules_api

    known = list(rules_api.registry())
    given = {
        "model": model_expr, "inputs": inputs_expr, "input_shape": input_shape, "data": data,
        "device": device, "batch_size": batch_size, "seed": seed, "measure_budget": measure_budget,
        "select": validate_codes(select.split(","), known, "--select") if select else None,
        "extend_select": validate_codes(extend_select.split(","), known, "--extend-select") if extend_select else None,
        "ignore": validate_codes(ignore.split(","), known, "--ignore") if ignore else None,
    }
    options = {key: value for key, value in given.items() if value is not None}
    options.update(verify=not no_verify, show_dismissed=show_dismissed)
    if device is not None:
        validate_device(device, "--device")
    if input_shape:
        parts = input_shape.split(",")
        if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"--input-shape: {input_shape!r} must be positive integers separated by commas, e.g. 3,32,32")
    return options


def _patterns(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(p.strip() for p in value.split(",") if p.strip())


def _collect(paths: tuple[str, ...], any_file: bool, exclude: tuple[str, ...] | None, extend_exclude: tuple[str, ...], force_exclude: bool) -> list[Path]:
    """The files to check: walked or named, minus exclusions, minus files without models
    (all files when ``any_file``: --model says which model to build)."""
    files = []
    for raw in paths:
        walked = Path(raw).is_dir()
        for path in iter_python_files([raw]):
            # As in ruff, a file named explicitly is checked even when excluded, unless
            # --force-exclude says otherwise.
            if (walked or force_exclude) and _excluded(path, exclude, extend_exclude):
                continue
            source = read_source(path)
            # Unreadable files go to the engine, which reports them as ARC900.
            if source is None or any_file or mentions_torch(source):
                files.append(path)
    return files


def _excluded(path: Path, exclude: tuple[str, ...] | None, extend_exclude: tuple[str, ...]) -> bool:
    """``exclude`` from the command line replaces the nearest config's list; ``extend-exclude``
    from both apply. Config patterns are relative to the config's folder, command-line ones
    to the current directory."""
    cwd = Path.cwd()
    found = find_config(path)
    config_exclude, config_extend = exclude_patterns(*found) if found else ((), ())
    base = found[0].parent if found else cwd
    return (
        is_excluded(path, exclude, cwd) if exclude is not None else is_excluded(path, config_exclude, base)
    ) or is_excluded(path, config_extend, base) or is_excluded(path, extend_exclude, cwd)


def _file_settings(files: list[Path], cli_options: dict) -> dict[Path, Settings]:
    """Each file's settings from its nearest config file and the command line. Every
    config file is validated here, before anything runs, so a bad one is exit 2."""
    from archlint import rule as rules_api

    finder = ConfigFinder(rules_api.registry())
    return {path: resolve_settings(path, cli_options, finder.config_for(path)) for path in files}


def _run(files: list[Path], settings: dict[Path, Settings], output_format: str, statistics: bool, output_file: str | None, quiet: bool, analyse: worker.Analyse, store=None, fixing: "FixMode | None" = None, workers: int = 1, isolated: "worker.Isolated | None" = None) -> int:
    """``analyse(path, settings) -> FileResult`` is the per-file seam: in a worker process
    (the default) or in this one (``--no-isolation``); ``store`` answers unchanged files
    from the cache. With ``workers`` > 1, that many files are analysed at once (``analyse``
    must allow it: ``worker.Isolated`` does), and ``isolated`` is stopped on an error."""
    from archlint import output
    from archlint.progress import Progress

    fixing = fixing or FixMode()

    def check_all(paths: list[Path]) -> dict:
        """{path: FileResult} in the order of ``paths``, whatever order they finish in."""
        with Progress(len(paths), quiet=quiet) as shown:
            cached = {}
            for path in paths:  # the cache first: a run it answers starts no worker
                result = store.get(path) if store is not None else None
                if result is not None:
                    shown.started(path)
                    shown.finished(path)
                    cached[path] = result

            def one(path: Path):
                shown.started(path)
                result = analyse(path, settings[path])
                # A crash, timeout, memory stop or a measurement cut to its time budget
                # depends on the machine: not kept.
                if store is not None and not result.machine_dependent:
                    store.put(path, result)
                shown.finished(path)
                return result

            missing = [path for path in paths if path not in cached]
            if isolated is not None:
                isolated.on_stage = shown.stage
                if workers > 1 and len(missing) > 1:
                    isolated.start()  # from this thread (it handles Ctrl-C), before the others
            analysed = jobs.run(missing, one, workers, stop=isolated.close if isolated is not None else lambda: None)
            return {path: cached[path] if path in cached else analysed[path] for path in paths}

    results = check_all(files)
    n_cached = sum(1 for r in results.values() if r.from_cache)
    if fixing.diff:
        return _show_diffs(results, quiet)
    fixed: list = []
    if fixing.apply:
        fixed = _apply_fixes(results, check_all, quiet)
    findings = []
    sources: dict[str, str] = {}
    n_models = 0
    for result in results.values():
        if result.skipped:
            continue
        n_models += result.n_models
        findings.extend(result.findings)
        for f in result.findings:
            if f.span.path not in sources:
                sources[f.span.path] = read_source(Path(f.span.path)) or ""
    if fixing.show and fixed:
        # A summary, so stderr: stdout stays a valid document in every format.
        click.echo(_fixed_list(fixed), nl=False, err=True)
    if not fixing.only:
        _write(_render(output_format, statistics, findings, os.getcwd(), sources), output_file)
    failing = [f for f in findings if output.fails(f)]
    if not quiet:
        by_status: dict[str, int] = {}
        for f in findings:
            status = f.status or "diagnostic"
            by_status[status] = by_status.get(status, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        done = f"fixed {len(fixed)}, " if fixing.apply else ""
        click.echo(
            f"archlint: {done}{len(findings)} finding{'s' if len(findings) != 1 else ''}"
            f"{' left' if fixing.apply else ''}"
            f"{f' ({detail})' if detail else ''} in {n_models} model{'s' if n_models != 1 else ''} "
            f"across {len(files)} file{'s' if len(files) != 1 else ''}"
            f"{f' ({n_cached} from the cache)' if n_cached else ''}",
            err=True,
        )
    if fixing.only:
        return EXIT_CLEAN
    return EXIT_FINDINGS if failing else EXIT_CLEAN


class FixMode:
    """What the fix options ask for: ``apply`` (--fix, --fix-only), ``diff`` (--diff),
    ``only`` (--fix-only: no report), ``show`` (--show-fixes)."""

    def __init__(self, apply: bool = False, diff: bool = False, only: bool = False, show: bool = False):
        self.apply, self.diff, self.only, self.show = apply, diff, only, show

    @property
    def wanted(self) -> bool:
        """Whether the engine proposes and verifies fixes (each costs a check of a copy)."""
        return self.apply or self.diff or self.show


# --fix repeats: a fix can uncover another, and fixes that failed together go one per round.
MAX_FIX_ROUNDS = 4


def _file_fixes(result) -> list:
    return [f for f in result.findings if f.autofix is not None and f.autofix.verified and f.autofix.apply_now]


def _apply_fixes(results: dict, check_all, quiet: bool) -> list:
    """Apply the verified fixes, re-checking the rewritten files (``check_all(paths)``), until
    none is left; ``results`` is updated in place. Returns the findings that were fixed."""
    from archlint.fix import apply

    fixed: list = []
    for _ in range(MAX_FIX_ROUNDS):
        changed = []
        for path, result in results.items():
            chosen = _file_fixes(result)
            if not chosen:
                continue
            try:
                if apply.write(path, [f.autofix for f in chosen]):
                    fixed.extend(chosen)
                    changed.append(path)
            except apply.NotApplied as exc:
                click.echo(f"archlint: {path}: fixes not applied: {exc}", err=True)
        if not changed:
            break
        results.update(check_all(changed))
    return fixed


def _show_diffs(results: dict, quiet: bool) -> int:
    from archlint.fix import apply
    from archlint.output import display_path

    out = []
    n = 0
    for path, result in results.items():
        chosen = _file_fixes(result)
        if not chosen:
            continue
        try:
            out.append(apply.diff(path, [f.autofix for f in chosen], display_path(str(path), os.getcwd())))
            n += len(chosen)
        except apply.NotApplied as exc:
            click.echo(f"archlint: {path}: no diff: {exc}", err=True)
    _write("".join(out), None)
    if not quiet:
        click.echo(f"archlint: {n} verified fix{'es' if n != 1 else ''} would be applied", err=True)
    return EXIT_FINDINGS if n else EXIT_CLEAN


def _fixed_list(fixed: list) -> str:
    """ruff's --show-fixes list: per file, how many findings of each rule were fixed."""
    from archlint.output import display_path

    lines = [f"Fixed {len(fixed)} finding{'s' if len(fixed) != 1 else ''}:"]
    by_file: dict[str, dict[str, int]] = {}
    for f in fixed:
        counts = by_file.setdefault(f.span.path, {})
        counts[f"{f.code} ({f.name})"] = counts.get(f"{f.code} ({f.name})", 0) + 1
    for path, counts in by_file.items():
        lines.append(f"- {display_path(path, os.getcwd())}:")
        lines.extend(f"    {n} x {what}" for what, n in sorted(counts.items()))
    return "\n".join(lines) + "\n"


def _render(output_format: str, statistics: bool, findings: list, root: str, sources: dict[str, str]) -> str:
    from archlint import output
    from archlint.output import statistics as statistics_format

    ctx = output.Context(root=root, sources=sources)
    return statistics_format.render(findings, ctx) if statistics else output.render(output_format, findings, ctx)


def _write(text: str, output_file: str | None) -> None:
    if output_file:
        Path(output_file).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


@main.command()
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="ARCHLINT_CACHE_DIR", help="Remove this cache folder instead. [env: ARCHLINT_CACHE_DIR]")
def clean(cache_dir: str | None) -> None:
    """Remove the cache: the .archlint_cache folder next to the nearest config and any in or
    below the current directory (only folders archlint created, recognised by their
    CACHEDIR.TAG)."""
    from archlint import cache

    removed = cache.clean(cache_dir)
    for folder in removed:
        click.echo(f"archlint: removed {folder}", err=True)
    if not removed:
        click.echo("archlint: no cache to remove", err=True)


@main.command("rule")
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="Show every rule.")
@click.option("--output-format", type=click.Choice(("text", "json")), default="text", show_default=True)
def rule_cmd(code: str | None, show_all: bool, output_format: str) -> None:
    """Show a rule's documentation, e.g. `archlint rule ARC103`."""
    import json

    from archlint import rule as rules_api
    from archlint.ruledocs import page

    reg = rules_api.registry()
    if show_all:
        chosen = list(reg.values())
    elif code:
        key = rules_api.redirect(code.upper())
        by_name = {r.name: r for r in reg.values()}
        if key in reg:
            chosen = [reg[key]]
        elif code in by_name:
            chosen = [by_name[code]]
        else:
            raise click.UsageError(f"unknown rule {code!r}; `archlint rule --all` lists them")
    else:
        raise click.UsageError("give a rule code (e.g. ARC103) or --all")
    from archlint.fix.registry import has_fixer

    if output_format == "json":
        click.echo(json.dumps([
            {"code": r.code, "name": r.name, "severity": r.severity, "summary": r.summary, "options": r.options,
             "fix_availability": "Sometimes" if has_fixer(r.code) else "None", "explanation": r.doc}
            for r in chosen
        ], indent=2))
    else:
        click.echo("\n\n".join(page(r) for r in chosen))


@main.command()
@click.option("--tcp", is_flag=True, help="Listen on a TCP port instead of stdio (for debugging the server).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on with --tcp.")
@click.option("--port", type=int, default=2087, show_default=True, help="Port to listen on with --tcp.")
def lsp(tcp: bool, host: str, port: int) -> None:
    """Run the language server (stdio by default), for editors: see docs/editors.md."""
    try:
        from archlint.lsp import server
    except ImportError as exc:
        raise click.ClickException(f"the language server needs pygls ({exc}); install it with: pip install \"archlint[lsp]\"") from exc
    server.main(tcp=tcp, host=host, port=port)


# normalize and profile live in their own module (archlint.tools_cli).
from archlint.tools_cli import normalize_cmd, profile_cmd  # noqa: E402

main.add_command(normalize_cmd)
main.add_command(profile_cmd)


if __name__ == "__main__":
    main()
