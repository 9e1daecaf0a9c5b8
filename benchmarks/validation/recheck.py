"""archlint as it ships today, on the study's architectures: its default findings against the
outcomes the study already measured (no training). analyze.py's "defaults after the study"
row simulates the shipped thresholds on the values recorded during the run; this runs the
product itself (check_file, default settings, as run.py did during the run), so the two can
be compared and a rule's change can be checked against the outcomes without training again.

    python benchmarks/validation/recheck.py                       # -> recheck.jsonl, recheck.md
    python benchmarks/validation/recheck.py --half evaluation --workers 2

One JSON line per architecture is appended to --out, so an interrupted run resumes. The
summary (recheck.md, and the last line printed) gives precision and recall of "any
warning-level finding" against the primary label, per half, beside analyze.py's simulation.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyze  # noqa: E402
import config  # noqa: E402
import run  # noqa: E402

HERE = Path(__file__).resolve().parent


def recheck_one(spec: dict) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="archlint_recheck_") as tmp:
        try:
            record, _, _ = run.default_findings(spec, "cpu", Path(tmp))
        except Exception as exc:  # recorded, as run.py does: one architecture must not stop the rest
            record = {"error": f"{type(exc).__name__}: {exc}"}
    return {"id": spec["id"], **record}


def summarise(records: list[dict], rechecked: dict[str, dict]) -> dict:
    bad = analyze.labels(records, config.BAD_RULE)
    cal = analyze.calibrate([r for r in records if analyze.half(r["id"]) == "calibration"], bad)
    defaults = analyze.shipped_defaults(cal)
    out = {}
    for which in ("calibration", "evaluation"):
        recs = [r for r in records if analyze.half(r["id"]) == which and r["id"] in rechecked
                and "error" not in rechecked[r["id"]]]
        if not recs:
            continue
        truth = [bad[r["id"]] for r in recs]
        # run.default_findings' verdict: a standing warning-level finding, today's selection.
        today = [rechecked[r["id"]]["warning"] for r in recs]
        simulated = [any(analyze.shipped_fires(r, c, defaults) for c, d in defaults.items() if d["options"]) for r in recs]
        out[which] = {
            "archlint": analyze.confusion(today, truth),
            "simulated": analyze.confusion(simulated, truth),
            "agree": sum(a == b for a, b in zip(today, simulated)),
        }
    return out


def markdown(summary: dict) -> str:
    lines = ["# archlint's defaults on the study's architectures", "",
             "`python benchmarks/validation/recheck.py`: archlint's default findings today (check_file, as during "
             "the run) against the primary label, beside analyze.py's simulation of the shipped thresholds on the "
             "recorded values. Precision and recall with 95% Wilson intervals; tp/flagged/bad.", "",
             "| half | verdict | precision | recall | tp/flagged/bad |", "|---|---|---|---|---|"]
    for which, s in summary.items():
        lines.append(f"| {which} | archlint today | {analyze._pr(s['archlint'])} |")
        lines.append(f"| {which} | simulated (analyze.py) | {analyze._pr(s['simulated'])} |")
    lines.append("")
    for which, s in summary.items():
        lines.append(f"{which}: the two verdicts agree on {s['agree']} of {s['archlint']['n']} architectures.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--out", type=Path, default=HERE / "recheck.jsonl")
    ap.add_argument("--half", choices=("calibration", "evaluation", "both"), default="both")
    ap.add_argument("--limit", type=int, help="at most this many architectures (a smoke run)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    records, _ = analyze.load(args.results)
    wanted = [r for r in records if args.half == "both" or analyze.half(r["id"]) == args.half]
    done = run.done_ids(args.out)
    todo = [r["spec"] for r in wanted if r["id"] not in done][: args.limit]
    print(f"{len(wanted)} architectures, {len(done)} already checked in {args.out}, {len(todo)} to check now", file=sys.stderr)
    with open(args.out, "a") as out:
        if args.workers > 1:
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                results = pool.imap_unordered(recheck_one, todo)
                for rec in results:
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
        else:
            for spec in todo:
                out.write(json.dumps(recheck_one(spec)) + "\n")
                out.flush()
    rechecked = {}
    for line in args.out.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            rechecked[rec["id"]] = rec
    summary = summarise(records, rechecked)
    md = args.out.with_suffix(".md")
    md.write_text(markdown(summary))
    args.out.with_name(args.out.stem + "_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for which, s in summary.items():
        a, b = s["archlint"], s["simulated"]
        print(f"{which}: archlint today precision {a['precision']} recall {a['recall']} ({a['tp']}/{a['flagged']}/{a['bad']}); "
              f"simulated {b['precision']} / {b['recall']}; agree on {s['agree']} of {a['n']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
