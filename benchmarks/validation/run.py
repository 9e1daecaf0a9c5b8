"""Run the validation study: for each architecture of generate.py, archlint at initialisation,
the baselines, and training at every learning rate of the grid. One JSON line per
architecture is appended (and flushed) to the results file, so an interrupted run resumes
where it stopped: ids already in the file are skipped.

    python benchmarks/validation/run.py --out benchmarks/validation/results.jsonl
    python benchmarks/validation/run.py --quick --out /tmp/quick.jsonl     # 24 archs, minutes (the test)
    python benchmarks/validation/run.py --limit 20 --workers 2 --device cuda

Per architecture (protocol in config.py):
- ``archlint``: the findings of ``archlint.engine.check_file`` with the default settings (the
  model written to a temporary file, the inputs a batch of real training rows), and every
  rule's value: each rule run with options that make it report its value for every model it
  applies to (config.PERMISSIVE_OPTIONS), the predicted value from the mean-field
  prediction and the measured one from one ``archlint.measure`` of the model;
- ``stats``: the measured and predicted output statistics at initialisation (NLC, batch and
  population NLC for train-mode BatchNorm, std, neuron bias);
- ``baselines``: parameter count, depth, synflow and jacob_cov (as NASLib computes them);
- ``train``: per seed and learning rate, the final test and training error and whether the
  run diverged; the best rate by test error.

Training: all the rates of the grid train at once from the same initialisation, as one
``torch.func.vmap`` over parameters stacked with ``torch.func.stack_module_state``-style
stacking (``--train loop`` trains them one after the other instead, for comparison).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import config  # noqa: E402
import generate  # noqa: E402

# ---------------------------------------------------------------------------------------
# Data

_DATA: dict[str, dict] = {}


def load_data(name: str) -> dict:
    """Standardised float32 features (flat) and int64 labels, train and test."""
    if name in _DATA:
        return _DATA[name]
    spec = config.DATASETS[name]
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float64), d.target.astype(np.int64)
        order = np.random.default_rng(spec["split_seed"]).permutation(len(x))
        test, train = order[: spec["test_size"]], order[spec["test_size"]:]
        xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]
    elif name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        xtr, ytr = np.asarray(d["x"], np.float64), np.asarray(d["y"], np.int64)
        xte, yte = np.asarray(d["x_test"], np.float64), np.asarray(d["y_test"], np.int64)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    out = {
        "x_train": torch.tensor((xtr - mean) / std, dtype=torch.float32),
        "y_train": torch.tensor(ytr),
        "x_test": torch.tensor((xte - mean) / std, dtype=torch.float32),
        "y_test": torch.tensor(yte),
    }
    _DATA[name] = out
    return out


def shaped(x: torch.Tensor, spec: dict) -> torch.Tensor:
    return x.reshape(len(x), *generate.input_shape(spec))


def measurement_batch(spec: dict) -> torch.Tensor:
    """The real training rows archlint measures on (fixed per dataset)."""
    x = load_data(spec["dataset"])["x_train"]
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.MEASURE_SEED))[: config.MEASURE_SAMPLES]
    return shaped(x[rows], spec)


# ---------------------------------------------------------------------------------------
# archlint at initialisation


def _finding_dict(f) -> dict:
    out = {"code": f.code, "severity": f.severity, "status": f.status, "predicted": _num(f.predicted),
           "measured": _num(f.measured), "threshold": _num(f.threshold), "node": f.node, "message": f.message}
    for key in ("layers", "branch_skip_ratio", "kind"):
        if key in f.data:
            out[key] = _num(f.data[key]) if isinstance(f.data[key], float) else f.data[key]
    return out


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def default_findings(spec: dict, device: str, workdir: Path, source: str | None = None):
    """archlint's findings with its default settings, as a user gets them: the model written
    to a file (``source``, by default the spec's generated one), the inputs a batch of real
    training rows. Returns (record, check_file's result, the batch)."""
    from archlint.config import Settings
    from archlint.engine import check_file

    path = workdir / f"{spec['id'].replace('-', '_')}.py"
    path.write_text(generate.source(spec) if source is None else source)
    inputs_path = workdir / f"inputs_{spec['dataset']}_{spec['family']}.pt"
    batch = measurement_batch(spec)
    if not inputs_path.exists():
        torch.save(batch, inputs_path)
    settings = Settings(model="Net()", inputs=f"torch.load({str(inputs_path)!r})", device=device, batch_size=config.BATCH_SIZE,
                        seed=config.MEASURE_SEED)
    started = time.perf_counter()
    result = check_file(path, settings)
    check_seconds = time.perf_counter() - started
    record: dict = {"findings": [_finding_dict(f) for f in result.findings], "check_seconds": check_seconds}
    record["warning"] = any(f.severity in ("warning", "error") and f.status != "dismissed" and not f.code.startswith("ARC9")
                            for f in result.findings)
    return record, result, batch


def analysed_graph(result):
    """The traced graph of the one model check_file analysed; RuntimeError, with archlint's
    diagnostics, where it did not analyse it."""
    if not result.models or result.models[0].graph is None:
        meta = [f.code for f in result.findings if f.code.startswith("ARC9")]
        raise RuntimeError(f"archlint did not analyse the model: {meta} {[f.message for f in result.findings]}")
    return result.models[0].graph


def rule_values(graph, batch: torch.Tensor, device: str) -> tuple[dict, dict, object]:
    """Every rule's value for the traced model: each rule's static check with permissive
    options (config.PERMISSIVE_OPTIONS), judged by one measurement with every segment they
    ask for, and, for a rule whose ``find`` judges one measured value
    (config.VALUE_FOUND_BY_MEASUREMENT), that value where its check reported nothing (no
    prediction): the product reports those too. Returns (values by code, errors by code,
    the measurement)."""
    from archlint import patterns
    from archlint import measure as measure_mod
    from archlint import rule as rules_api

    context = rules_api.RunContext(batch_size=config.BATCH_SIZE)
    found, errors = [], {}
    # A rule that moved after the run (ARC105 is ARC403) is the same computation, recorded
    # under the code the protocol names.
    value_rules = [(rules_api.redirect(code), code, opts) for code, opts in config.PERMISSIVE_OPTIONS.items()]
    # ARC101 and ARC103 left CNNs with BatchNorm to ARC401 and ARC402 (off by default) during
    # the run: the same computation, whose value is still recorded under the original code.
    successors = {successor: origin for (origin, _), successor in config.LEFT_TO_OFF_BY_DEFAULT.items()}
    value_rules += [(successor, origin, config.PERMISSIVE_OPTIONS[origin]) for successor, origin in successors.items()]
    for code, recorded_as, opts in value_rules:
        rule = rules_api.get(code)
        # The successor has the original's options but one threshold (no conv-threshold).
        options = {**rule.options, **{k: v for k, v in opts.items() if k in rule.options}}
        try:
            found += [(rule, recorded_as, options, f) for f in rule.check(graph, options, context)]
        except Exception as exc:  # a rule that breaks out of its usual range is recorded, not fatal
            errors[code] = f"{type(exc).__name__}: {exc}"
    # As the engine does: a segment from where the signal enters is its end node's own NLC.
    sources = set(patterns.sources(graph))
    segments = sorted({f.segment for _, _, _, f in found if f.segment is not None and f.segment[0] not in sources})
    report = measure_mod.measure(graph.model, batch, graph=graph, device=device, batch_size=config.BATCH_SIZE,
                                 seed=config.MEASURE_SEED, segments=segments)
    values: dict[str, list] = {}
    for rule, recorded_as, options, f in found:
        verdict = rule.confirm(f, report, options)
        entry = {"predicted": _num(f.predicted), "measured": _num(verdict.measured), "node": f.node}
        for key in ("layers", "kind"):
            if key in f.data:
                entry[key] = f.data[key]
        values.setdefault(recorded_as, []).append(entry)
    # The successors (ARC407 for ARC203's CNNs with BatchNorm) find their share the same way.
    by_measurement = [(rules_api.redirect(code), code) for code in config.VALUE_FOUND_BY_MEASUREMENT]
    by_measurement += [(successor, origin) for successor, origin in successors.items() if origin in config.VALUE_FOUND_BY_MEASUREMENT]
    for code, recorded_as in by_measurement:
        if values.get(recorded_as):
            continue
        rule = rules_api.get(code)
        options = {**rule.options, **{k: v for k, v in config.PERMISSIVE_OPTIONS[recorded_as].items() if k in rule.options}}
        try:
            found_here = rule.find(graph, report, options, context)
        except Exception as exc:
            errors[code] = f"{type(exc).__name__}: {exc}"
            continue
        for f in found_here:
            values.setdefault(recorded_as, []).append({"predicted": _num(f.predicted), "measured": _num(f.measured),
                                                       "node": f.node, "found_by_measurement": True, "reason": f.reason})
    return values, errors, report


def archlint_at_init(spec: dict, device: str, workdir: Path) -> tuple[dict, nn.Module]:
    """Default findings, every rule's value, and the output statistics. Returns the record
    and the model archlint built (seed ``config.MEASURE_SEED``)."""
    from archlint import evidence

    record, result, batch = default_findings(spec, device, workdir)
    graph = analysed_graph(result)
    model = graph.model

    # Every rule's value: permissive options, one measurement with every segment they ask for.
    started = time.perf_counter()
    values, errors, report = rule_values(graph, batch, device)
    record["values"] = values
    record["value_errors"] = errors
    out = report.output_stats
    pred = evidence.predicted(graph, graph.output)
    record["stats"] = {
        "mode": report.mode,
        "status": out.status,
        "nlc": _num(out.nlc), "nlc_se": _num(out.nlc_se),
        "nlc_population": _num(out.nlc_population), "status_population": out.status_population,
        "std": _num(out.std), "neuron_bias": _num(out.neuron_bias),
        "dtype": out.dtype,
        "predicted_nlc": _num(pred.nlc) if pred is not None else None,
        "predicted_std": _num(evidence.predicted_std(graph, graph.output)),
        "predicted_neuron_bias": _num(pred.neuron_bias) if pred is not None else None,
        # Why the output was not predicted (an op the mean-field predictor does not model).
        "predicted_reason": (graph.prediction.nodes[graph.output].reason
                             if pred is None and graph.prediction is not None and graph.output in graph.prediction.nodes
                             else None if pred is not None else "no prediction"),
        "max_node_nlc": _num(max((s.nlc for s in report.nodes.values() if s.nlc is not None and s.status == "ok"), default=None)),
    }
    record["values_seconds"] = time.perf_counter() - started
    return record, model


# ---------------------------------------------------------------------------------------
# Baselines (validation notes): implemented here, not in the product.


def synflow(model: nn.Module, spec: dict) -> float | None:
    """log10 of NASLib's synflow: parameters replaced by their absolute values (float64),
    BatchNorm in eval mode, one input of ones, backward of the summed output; the sum over
    the Linear/Conv weights of |w * dR/dw|."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    x = torch.ones(1, *generate.input_shape(spec), dtype=torch.float64)
    net.zero_grad()
    net(x).sum().backward()
    total = 0.0
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.weight.grad is not None:
            total += float((m.weight * m.weight.grad).abs().sum().detach())
    return math.log10(total) if total > 0 and math.isfinite(total) else (None if not math.isfinite(total) else -math.inf)


def jacob_cov(model: nn.Module, spec: dict) -> float | None:
    """NASLib's jacob_cov: J = d(sum of outputs)/d(inputs) per sample on a training batch,
    C = corrcoef(J), score = -sum(log(eig + k) + 1/(eig + k)). Higher is better. The model
    runs as it would be trained (train mode) on a copy."""
    net = copy.deepcopy(model).train()
    x = load_data(spec["dataset"])["x_train"][: config.JACOB_COV_BATCH]
    x = shaped(x, spec).clone().requires_grad_(True)
    net(x).sum().backward()
    jac = x.grad.reshape(len(x), -1).double()
    corr = torch.corrcoef(jac)
    if not torch.isfinite(corr).all():
        return None
    eig = torch.linalg.eigvalsh(corr).clamp_min(0)
    k = config.JACOB_COV_K
    score = -float((torch.log(eig + k) + 1.0 / (eig + k)).sum())
    return score if math.isfinite(score) else None


def baselines(model: nn.Module, spec: dict) -> dict:
    started = time.perf_counter()
    out = {
        "params": sum(p.numel() for p in model.parameters()),
        "depth": generate.layer_count(spec),
        "synflow": _num(synflow(model, spec)),
        "jacob_cov": _num(jacob_cov(model, spec)),
    }
    out["seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------------------
# Training


def train_rates(model: nn.Module, spec: dict, rates, steps: int, seed: int, device: str) -> list[dict]:
    """Train copies of ``model`` at each rate of ``rates`` at once (vmap over the stacked
    parameters), on the same batches. Returns one result per rate."""
    data = load_data(spec["dataset"])
    xtr, ytr = shaped(data["x_train"], spec).to(device), data["y_train"].to(device)
    xte, yte = shaped(data["x_test"], spec).to(device), data["y_test"].to(device)
    K = len(rates)
    init_p = {k: v.detach().to(device) for k, v in model.named_parameters()}
    init_b = {k: v.detach().to(device) for k, v in model.named_buffers()}
    params = {k: v.unsqueeze(0).repeat(K, *[1] * v.dim()).contiguous() for k, v in init_p.items()}
    buffers = {k: v.unsqueeze(0).repeat(K, *[1] * v.dim()).contiguous() for k, v in init_b.items()}
    momentum = {k: torch.zeros_like(v) for k, v in params.items()}
    base = copy.deepcopy(model).to("meta")
    base.train()

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    step = vmap(grad_and_value(loss_fn), in_dims=(0, 0, None, None), randomness="different")
    lr = torch.tensor(rates, dtype=torch.float32, device=device)
    alive = torch.ones(K, dtype=torch.bool, device=device)
    diverged_at = [None] * K
    first_loss = None
    tail: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(seed)
    n, bs = len(xtr), config.BATCH_SIZE
    per_epoch = n // bs
    order = None
    mom = config.OPTIMIZER["momentum"]
    for t in range(steps):
        if t % per_epoch == 0:
            order = torch.randperm(n, generator=gen).to(device)
        idx = order[(t % per_epoch) * bs:(t % per_epoch + 1) * bs]
        grads, loss = step(params, buffers, xtr[idx], ytr[idx])
        if first_loss is None:
            first_loss = loss.detach().cpu()
        bad = alive & ~(torch.isfinite(loss) & (loss < config.DIVERGED_LOSS))
        if bad.any():
            # A diverged member stops: back to its initial (finite) weights with rate 0, so
            # no NaN or overflow slows the others down.
            for i in torch.nonzero(bad).flatten().tolist():
                diverged_at[i] = t
            alive &= ~bad
            for k in params:
                params[k][bad] = init_p[k]
                momentum[k][bad] = 0
            for k in buffers:
                buffers[k][bad] = init_b[k]
        scale = 0.5 * (1 + math.cos(math.pi * t / steps)) if config.SCHEDULE == "cosine" else 1.0
        step_lr = torch.where(alive, lr * scale, torch.zeros_like(lr))
        with torch.no_grad():
            for k, g in grads.items():
                g = torch.where(alive.view(-1, *[1] * (g.dim() - 1)), g, torch.zeros_like(g))
                momentum[k].mul_(mom).add_(g)
                params[k].sub_(step_lr.view(-1, *[1] * (g.dim() - 1)) * momentum[k])
        if t >= steps - max(1, steps // 10):
            tail.append(loss.detach())

    def errors(x, y) -> torch.Tensor:
        base.eval()
        wrong = torch.zeros(K, device=device)
        with torch.no_grad():
            for s in range(0, len(x), 1000):
                out = vmap(lambda p, b: functional_call(base, (p, b), (x[s:s + 1000],)))(params, buffers)
                wrong += (out.argmax(-1) != y[s:s + 1000]).sum(-1)
        base.train()
        return (wrong / len(x)).cpu()

    # The last update may have overflowed without a loss to show it.
    finite = torch.stack([torch.isfinite(v.reshape(K, -1)).all(1) for v in params.values()]).all(0)
    for i in torch.nonzero(alive & ~finite).flatten().tolist():
        diverged_at[i] = steps
    test_err, train_err = errors(xte, yte), errors(xtr, ytr)
    tail_loss = torch.stack(tail).mean(0).cpu()
    results = []
    for i, rate in enumerate(rates):
        div = diverged_at[i] is not None
        results.append({
            "lr": rate, "diverged": div, "diverged_step": diverged_at[i],
            "test_error": None if div else float(test_err[i]), "train_error": None if div else float(train_err[i]),
            "train_loss": None if div else _num(tail_loss[i]), "first_loss": _num(first_loss[i]),
        })
    return results


def best_rate(runs: list[dict]) -> dict:
    ok = [r for r in runs if not r["diverged"]]
    if not ok:
        return {"lr": None, "test_error": None, "train_error": None, "diverged_all": True}
    b = min(ok, key=lambda r: (r["test_error"], r["lr"]))
    return {"lr": b["lr"], "test_error": b["test_error"], "train_error": b["train_error"], "diverged_all": False}


def train_all(model: nn.Module, spec: dict, steps: int, seed: int, device: str, how: str) -> dict:
    started = time.perf_counter()
    rates = config.LEARNING_RATES
    if how == "vmap":
        runs = train_rates(model, spec, rates, steps, seed, device)
    else:
        runs = [r for rate in rates for r in train_rates(model, spec, (rate,), steps, seed, device)]
    return {"seed": seed, "runs": runs, "best": best_rate(runs), "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------
# One architecture, and the loop


def run_one(spec: dict, steps: int, device: str, how: str) -> dict:
    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    record = {"id": spec["id"], "spec": spec, "protocol": protocol(steps)}
    try:
        with tempfile.TemporaryDirectory(prefix="archlint_study_") as tmp:
            record["archlint"], model = archlint_at_init(spec, device, Path(tmp))
        own = generate.build(spec, config.MEASURE_SEED)
        record["same_init"] = all(torch.equal(a.detach().cpu(), b.detach().cpu())
                                  for a, b in zip(own.state_dict().values(), model.state_dict().values()))
        record["baselines"] = baselines(own, spec)
        seeds = config.SEEDS if spec["index"] % config.SECOND_SEED_EVERY == 0 else config.SEEDS[:1]
        record["train"] = [train_all(own if s == config.MEASURE_SEED else generate.build(spec, s), spec, steps, s, device, how)
                           for s in seeds]
    except Exception as exc:  # one broken architecture must not stop the study: it is recorded
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=8)
    record["seconds"] = time.perf_counter() - started
    # CPU time of this process: on a shared machine the wall time says more about the load.
    record["cpu_seconds"] = time.process_time() - cpu_started
    return record


def protocol(steps: int) -> dict:
    return {"lrs": list(config.LEARNING_RATES), "steps": steps, "batch_size": config.BATCH_SIZE,
            "optimizer": config.OPTIMIZER, "schedule": config.SCHEDULE}


def done_ids(path: Path) -> set[str]:
    """The architectures already in ``path`` (a line cut by an interruption: that one runs again)."""
    import analyze

    return set(analyze.lines_by_id(path))


def append_each(path: Path, fn, items: list, workers: int = 1) -> None:
    """``fn(item)`` for each item (in a pool of ``workers`` processes when more than one),
    each result appended to ``path`` as one JSON line as it comes, so that an interrupted
    run resumes (done_ids). For the scripts that go over the recorded architectures again
    (recheck.py, revalue.py)."""
    with open(path, "a") as out:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            out.write("\n")  # a line cut by an interruption stays on its own (and is ignored)
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.imap_unordered(fn, items)
                for rec in results:
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
        else:
            for item in items:
                out.write(json.dumps(fn(item)) + "\n")
                out.flush()


def _worker(job):
    spec, steps, device, how = job
    return run_one(spec, steps, device, how)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.jsonl")
    ap.add_argument("--quick", action="store_true", help=f"{config.QUICK_N} architectures, {config.QUICK_STEPS} steps")
    ap.add_argument("--limit", type=int, help="at most this many architectures (the first ones)")
    ap.add_argument("--only", type=int, nargs="*", help="these architecture indices")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train", choices=("vmap", "loop"), default="vmap", help="rates at once (vmap) or one after the other")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    n, steps = config.N_ARCHITECTURES, None
    if args.quick:
        n, steps = config.QUICK_N, config.QUICK_STEPS
    specs = generate.architectures(n)
    if args.quick:
        specs = _varied(specs, n)
    if args.only:
        specs = [generate.architecture(i) for i in args.only]
    if args.limit is not None:
        specs = specs[: args.limit]
    done = done_ids(args.out)
    todo = [s for s in specs if s["id"] not in done]
    print(f"{len(specs)} architectures, {len(specs) - len(todo)} already in {args.out}, {len(todo)} to run", file=sys.stderr, flush=True)
    if not todo:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(s, steps or config.STEPS[s["dataset"]], args.device, args.train) for s in todo]
    started = time.perf_counter()
    with args.out.open("a") as fh:
        if args.out.stat().st_size and not args.out.read_bytes().endswith(b"\n"):
            fh.write("\n")  # a line cut by an interruption stays on its own (and is ignored)
        if args.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(args.workers, maxtasksperchild=20) as pool:
                results = pool.imap_unordered(_worker, jobs)
                _write_all(results, fh, len(jobs), started)
        else:
            _write_all((_worker(j) for j in jobs), fh, len(jobs), started)
    return 0


def _varied(specs: list[dict], n: int) -> list[dict]:
    """--quick: the first architectures, plus the first deep residual BN CNN and a
    plain BN CNN if they are not among them, so every code path runs."""
    out = list(specs)
    slot, i = len(out) - 1, n
    wants = [lambda s: s["family"] == "cnn" and s["skip"] and s["norm"] == "batch",
             lambda s: s["family"] == "mlp" and s["norm"] == "batch",
             lambda s: s["family"] == "mlp" and s["skip"]]
    for want in wants:
        if any(want(s) for s in out):
            continue
        while not want(generate.architecture(i)):
            i += 1
        out[slot] = generate.architecture(i)
        slot, i = slot - 1, i + 1
    return out


def _write_all(results, fh, total: int, started: float) -> None:
    for k, rec in enumerate(results, 1):
        fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
        elapsed = time.perf_counter() - started
        best = rec.get("train", [{}])[0].get("best", {}) if "train" in rec else {}
        print(f"[{k}/{total}] {rec['id']} {rec['seconds']:.1f}s (cpu {rec['cpu_seconds']:.1f}s) "
              f"{'ERROR ' + rec['error'] if 'error' in rec else 'test error ' + str(best.get('test_error'))} "
              f"(elapsed {elapsed:.0f}s, ~{elapsed / k * (total - k):.0f}s left)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
