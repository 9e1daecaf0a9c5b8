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
        simulated = [any(analyze.shipped_fires(r, c, defaults) for c in analyze.on_by_default(defaults)) for r in recs]
        out[which] = {
            "archlint": analyze.confusion(today, truth),
            "simulated": analyze.confusion(simulated, truth),
            "agree": sum(a == b for a, b in zip(today, simulated)),
        }
    recs = [r for r in records if r["id"] in rechecked and "error" not in rechecked[r["id"]]]
    out["differences"] = differences(recs, rechecked, defaults, bad)
    out["by_cell"] = analyze.by_cell(recs, bad, lambda r: rechecked[r["id"]]["warning"])
    return out


def differences(recs: list[dict], rechecked: dict[str, dict], defaults: dict, bad: dict[str, bool]) -> dict:
    """Per rule, both halves: the architectures the product flags and the simulation does not,
    and the other way round, with how many of them are bad; and, of the product's own, how
    many no other rule flags, and how many have no recorded value of that rule at all (run.py
    records a rule's value where its static check reports with permissive options, so a value
    only the measurement finds, the rules' ``find``, was never recorded, and the simulation
    cannot see it)."""
    out = {}
    for code, d in defaults.items():
        if not d["options"]:
            continue
        product = {r["id"] for r in recs
                   if any(f["code"] == code and f["severity"] == "warning" for f in rechecked[r["id"]]["findings"])}
        simulated = {r["id"] for r in recs if analyze.shipped_fires(r, code, defaults)}
        unrecorded = {r["id"] for r in recs if not r["archlint"]["values"].get(code)}
        product_only, simulated_only = product - simulated, simulated - product
        # Of the product's own, those no other rule flags: the verdict rests on this rule alone.
        alone = {i for i in product_only
                 if all(f["code"] == code or f["severity"] != "warning" for f in rechecked[i]["findings"])}
        if product_only or simulated_only:
            out[code] = {
                "product_only": len(product_only), "product_only_bad": sum(bad[i] for i in product_only),
                "product_only_unrecorded": len(product_only & unrecorded),
                "product_only_alone": len(alone), "product_only_alone_bad": sum(bad[i] for i in alone),
                "simulated_only": len(simulated_only), "simulated_only_bad": sum(bad[i] for i in simulated_only),
                "unrecorded": len(unrecorded), "unrecorded_bad": sum(bad[i] for i in unrecorded),
            }
    return out


def markdown(summary: dict) -> str:
    lines = ["# archlint's defaults on the study's architectures", "",
             "`python benchmarks/validation/recheck.py`: archlint's default findings today (check_file, as during "
             "the run) against the primary label, beside analyze.py's simulation of the shipped thresholds on the "
             "recorded values. Precision and recall with 95% Wilson intervals; tp/flagged/bad.", "",
             "| half | verdict | precision | recall | tp/flagged/bad |", "|---|---|---|---|---|"]
    halves = {k: v for k, v in summary.items() if k in ("calibration", "evaluation")}
    for which, s in halves.items():
        lines.append(f"| {which} | archlint today | {analyze._pr(s['archlint'])} |")
        lines.append(f"| {which} | simulated (analyze.py) | {analyze._pr(s['simulated'])} |")
    lines.append("")
    for which, s in halves.items():
        lines.append(f"{which}: the two verdicts agree on {s['agree']} of {s['archlint']['n']} architectures.")
    if summary.get("by_cell"):
        lines += ["", "archlint today per family branch and per family and width:", "",
                  *analyze.by_cell_table(summary["by_cell"])]
    if summary.get("differences"):
        lines += ["", "Where a rule's findings differ (both halves): flagged by the product only (bad; without any "
                  "recorded value of the rule, so that the simulation cannot see it; flagged by no other rule, bad), "
                  "flagged by the simulation only "
                  "(bad); and how many architectures have no recorded value of the rule (bad). A rule's "
                  "finding can also give way to a more specific one for the same model (ARC101 to ARC103, ARC104 "
                  "or ARC403), so a rule's difference is not a difference of the verdict.", "",
                  "| rule | product only (bad; unrecorded; alone, bad) | simulation only (bad) | no recorded value (bad) |",
                  "|---|---|---|---|"]
        for code, d in summary["differences"].items():
            lines.append(f"| {code} | {d['product_only']} ({d['product_only_bad']}; {d['product_only_unrecorded']}; "
                         f"{d['product_only_alone']}, {d['product_only_alone_bad']}) | "
                         f"{d['simulated_only']} ({d['simulated_only_bad']}) | {d['unrecorded']} ({d['unrecorded_bad']}) |")
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
    run.append_each(args.out, recheck_one, todo, args.workers)
    summary = summarise(records, analyze.lines_by_id(args.out))
    md = args.out.with_suffix(".md")
    md.write_text(markdown(summary))
    args.out.with_name(args.out.stem + "_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for which, s in summary.items():
        if which not in ("calibration", "evaluation"):
            continue
        a, b = s["archlint"], s["simulated"]
        print(f"{which}: archlint today precision {a['precision']} recall {a['recall']} ({a['tp']}/{a['flagged']}/{a['bad']}); "
              f"simulated {b['precision']} / {b['recall']}; agree on {s['agree']} of {a['n']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
