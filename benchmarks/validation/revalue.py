"""Every rule's value at initialisation, recorded again for the study's architectures (no
training). The run recorded a rule's value only where its static check reported (with
permissive options); the values the product's ``find`` judges from the measurement alone
(ARC101, ARC102, ARC203: config.VALUE_FOUND_BY_MEASUREMENT) were added after the run and
were never recorded, so their calibration and the simulation missed every architecture whose
value the mean-field predictor cannot follow. This records them (run.rule_values, as a new
run would), and analyze.py adds them where the run recorded none.

    python benchmarks/validation/revalue.py --workers 2         # -> values.jsonl, values.md

One JSON line per architecture is appended to --out, so an interrupted run resumes. values.md
says, per rule, how many architectures gained a value, and how far the values recorded again
are from the run's where both exist (the measurement has changed since the run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyze  # noqa: E402
import config  # noqa: E402
import run  # noqa: E402

HERE = Path(__file__).resolve().parent


def revalue_one(spec: dict) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="archlint_revalue_") as tmp:
        try:
            _, result, batch = run.default_findings(spec, "cpu", Path(tmp))
            values, errors, _ = run.rule_values(run.analysed_graph(result), batch, "cpu")
        except Exception as exc:  # recorded: one architecture must not stop the rest
            return {"id": spec["id"], "error": f"{type(exc).__name__}: {exc}"}
    return {"id": spec["id"], "values": values, "value_errors": errors}


def summarise(records: list[dict], revalued: dict[str, dict]) -> dict:
    """Per rule: architectures with a value in the run, gained (bad), and the agreement of
    the values recorded again with the run's where both exist (median and 90th percentile of
    |again / run - 1|)."""
    bad = analyze.labels(records, config.BAD_RULE)
    merged = {r["id"]: r for r in analyze.with_found_values(records, revalued)}
    out = {}
    for code in config.PERMISSIVE_OPTIONS:
        had = [r for r in records if analyze.rule_value(r, code, judged_only=False) is not None]
        gained = [r for r in records if analyze.rule_value(r, code, judged_only=False) is None
                  and analyze.rule_value(merged[r["id"]], code, judged_only=False) is not None]
        diffs = []
        for r in had:
            again = revalued.get(r["id"], {}).get("values", {})
            if again.get(code):
                v = analyze.rule_value({"archlint": {"values": again}}, code, judged_only=False)
                w = analyze.rule_value(r, code, judged_only=False)
                if v is not None and w and math.isfinite(v) and math.isfinite(w):
                    diffs.append(abs(v / w - 1))
        diffs.sort()
        out[code] = {"run": len(had), "gained": len(gained), "gained_bad": sum(bad[r["id"]] for r in gained),
                     "compared": len(diffs),
                     "median_rel_diff": statistics.median(diffs) if diffs else None,
                     "p90_rel_diff": diffs[int(0.9 * (len(diffs) - 1))] if diffs else None}
    return {"n": len(records), "revalued": sum("error" not in v for v in revalued.values()),
            "errors": {k: v["error"] for k, v in revalued.items() if "error" in v}, "rules": out}


def markdown(summary: dict) -> str:
    lines = ["# Every rule's value, recorded again", "",
             f"`python benchmarks/validation/revalue.py`: {summary['revalued']} of {summary['n']} architectures "
             f"recorded again ({len(summary['errors'])} errors). Per rule: architectures with a value in the run; "
             "architectures that gain one (the rule's value found by measurement alone, where its static check "
             "reported nothing), and how many of them are bad; and where both exist, how far the value recorded again "
             "is from the run's (|again / run - 1|: median, 90th percentile; the measurement has changed since the "
             "run, and analyze.py keeps the run's value there).", "",
             "| rule | value in the run | gained (bad) | compared | median difference | 90th percentile |",
             "|---|---|---|---|---|---|"]
    for code, d in summary["rules"].items():
        med = f"{d['median_rel_diff']:.2%}" if d["median_rel_diff"] is not None else "-"
        p90 = f"{d['p90_rel_diff']:.2%}" if d["p90_rel_diff"] is not None else "-"
        lines.append(f"| {code} | {d['run']} | {d['gained']} ({d['gained_bad']}) | {d['compared']} | {med} | {p90} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--out", type=Path, default=HERE / "values.jsonl")
    ap.add_argument("--limit", type=int, help="at most this many architectures (a smoke run)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    records, _ = analyze.load(args.results, found_values=False)
    done = run.done_ids(args.out)
    todo = [r["spec"] for r in records if r["id"] not in done][: args.limit]
    print(f"{len(records)} architectures, {len(done)} already in {args.out}, {len(todo)} to record now", file=sys.stderr)
    run.append_each(args.out, revalue_one, todo, args.workers)
    summary = summarise(records, analyze.lines_by_id(args.out))
    args.out.with_suffix(".md").write_text(markdown(summary))
    gained = ", ".join(f"{c} +{d['gained']}" for c, d in summary["rules"].items() if d["gained"])
    print(f"{summary['revalued']} recorded again; gained: {gained or 'none'}; wrote {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
