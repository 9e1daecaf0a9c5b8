"""Analyse the validation study's results (run.py's JSONL): labels, calibration, evaluation.

    python benchmarks/validation/analyze.py                       # results.jsonl -> summary.*
    python benchmarks/validation/analyze.py --results /tmp/quick.jsonl --out-dir /tmp/quick

Works on partial results: every number says how many architectures it rests on.

1. Outcome: each architecture's best test error over the rate grid (seed 0); a run that
   diverged at every rate has no error and is "bad". Labels (config.BAD_RULE and the two
   config.ALTERNATIVE_RULES) are computed per dataset and family over all results.
2. Halves: each id goes to the calibration or the evaluation half by a hash of
   (config.HALVES_SEED, id), so the split does not depend on which results exist yet.
3. Calibration half: each rule's threshold on its value (the measured value, else the
   predicted one; config.RULE_DIRECTION says which side is bad) flags the most bad
   architectures at the precision goal (config.THRESHOLD_OBJECTIVE says why not F1),
   globally and, for the rules with a threshold per family (config.PER_FAMILY_RULES), per
   family where it has at least config.MIN_GROUP bad and good architectures; a rule without
   such a threshold shows no predictive power. The calibrated verdict combines the rules
   kept. Per family branch (mlp / cnn x with / without BatchNorm), the rule's ranking power
   (AUC) is the evidence for leaving a branch to an off-by-default rule; a rule or branch
   changes status only where each part of the run (run_part) gives the same verdict alone
   (verdicts_by_part).
4. Evaluation half: precision and recall (Wilson intervals) of "any warning-level finding"
   against "bad": archlint as it is (default thresholds, its findings from check_file),
   with the calibrated thresholds, and with the committed F1 objective's thresholds; per
   rule and overall.
5. Spearman of the measured NLC at initialisation with the best test error, per dataset and
   family, beside parameter count, depth, synflow and jacob_cov.
6. Sensitivity of 4. to the label; outcome noise from the architectures trained twice.

Writes summary.json, summary.md and nlc_vs_error.png into --out-dir.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import config  # noqa: E402

HERE = Path(__file__).resolve().parent
BRANCH_NAMES = ("mlp-nobn", "mlp-bn", "cnn-nobn", "cnn-bn")


# ---------------------------------------------------------------------------------------
# Loading


def load(path: Path, *, found_values: bool = True) -> tuple[list[dict], list[dict]]:
    """(usable records, records that failed) of every part of the run (run_part). With
    ``found_values``, the values that revalue.py recorded beside the results (values.jsonl,
    where it exists) are added where the run recorded none (with_found_values)."""
    good, failed = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        (failed if "error" in rec or not rec.get("train") else good).append(rec)
    values = path.with_name("values.jsonl")
    if found_values:
        good = with_found_values(good, lines_by_id(values))
    return good, failed


def lines_by_id(path: Path) -> dict[str, dict]:
    """The JSON lines of a file the study's scripts append to, by architecture id ({} when
    there is no file). A line cut by an interruption is skipped: that architecture runs again."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                out[rec["id"]] = rec
    return out


def with_found_values(records: list[dict], revalued: dict[str, dict]) -> list[dict]:
    """The records with the values recorded again (revalue.py) of the rules whose ``find``
    judges one measured value (config.VALUE_FOUND_BY_MEASUREMENT), where the run recorded
    none for that rule: the run recorded a rule's value only where its static check
    reported. Where the run has a value, it stays (recorded with the protocol's measurement)."""
    out = []
    for rec in records:
        again = revalued.get(rec["id"], {}).get("values", {})
        added = {code: again[code] for code in config.VALUE_FOUND_BY_MEASUREMENT
                 if again.get(code) and not rec["archlint"]["values"].get(code)}
        if added:
            rec = {**rec, "archlint": {**rec["archlint"], "values": {**rec["archlint"]["values"], **added}}}
        out.append(rec)
    return out


def _f(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return {"inf": math.inf, "-inf": -math.inf}.get(v, math.nan)
    return float(v)


def best_error(rec: dict, seed_index: int = 0) -> float:
    """Best test error at seed ``seed_index``; inf when every rate diverged."""
    best = rec["train"][seed_index]["best"]
    return math.inf if best["diverged_all"] else float(best["test_error"])


def group(rec: dict) -> tuple:
    return tuple(rec["spec"][k] for k in config.GROUP_KEYS)


def branch(rec: dict) -> str:
    return f"{rec['spec']['family']}-{'bn' if rec['spec']['norm'] == 'batch' else 'nobn'}"


def half(rec_id: str) -> str:
    h = hashlib.sha256(f"{config.HALVES_SEED}:{rec_id}".encode()).digest()
    return "calibration" if h[0] % 2 == 0 else "evaluation"


# ---------------------------------------------------------------------------------------
# Labels


def group_cuts(records: list[dict], rule: dict) -> dict[tuple, float]:
    """Per group (dataset, family): the best test error (first seed) from which ``rule``
    calls an architecture bad."""
    by_group = defaultdict(list)
    for r in records:
        by_group[group(r)].append(best_error(r))
    cuts = {}
    for key, errs in by_group.items():
        errs.sort()
        finite = [e for e in errs if math.isfinite(e)]
        if rule["kind"] == "relative":
            top = finite[: max(1, math.ceil(rule["top_share"] * len(errs)))]
            cuts[key] = rule["factor"] * float(np.median(top)) if top else math.inf
        else:
            cuts[key] = (finite[0] + rule["margin"]) if finite else math.inf
    return cuts


def is_bad(error: float, cut: float) -> bool:
    return (not math.isfinite(error)) or error >= cut


def labels(records: list[dict], rule: dict) -> dict[str, bool]:
    cuts = group_cuts(records, rule)
    return {r["id"]: is_bad(best_error(r), cuts[group(r)]) for r in records}


def label_reproducibility(records: list[dict], rule: dict) -> dict | None:
    """The label of a second training run (the second seed's best error against the same
    group cut) as a verdict on the first run's label: how far the outcome noise alone keeps
    any verdict from the architecture from the label. None without second seeds."""
    cuts = group_cuts(records, rule)
    twice = [r for r in records if len(r["train"]) > 1]
    if not twice:
        return None
    return confusion([is_bad(best_error(r, 1), cuts[group(r)]) for r in twice],
                     [is_bad(best_error(r, 0), cuts[group(r)]) for r in twice])


def by_cell(records: list[dict], bad: dict[str, bool], fires) -> dict:
    """The verdict ``fires(rec)`` against the label per half, over all architectures, per
    family branch, and per family and width: where it works and where the bad architectures
    it misses are."""
    out: dict = {}
    for name in ("calibration", "evaluation"):
        cells: dict = defaultdict(lambda: ([], []))
        for r in records:
            if half(r["id"]) != name:
                continue
            for key in ("all", branch(r), f"{r['spec']['family']} width {r['spec']['width']}"):
                cells[key][0].append(fires(r))
                cells[key][1].append(bad[r["id"]])
        out[name] = {key: confusion(*cells[key]) for key in sorted(cells, key=_cell_order)}
    return out


def by_cell_table(cells: dict) -> list[str]:
    """by_cell's result as a markdown table, both halves side by side."""
    lines = ["Precision | recall | tp/flagged/bad; the bad architectures missed are bad - tp.", "",
             "| where | calibration half: precision | recall | tp/flagged/bad | evaluation half: precision | recall "
             "| tp/flagged/bad |", "|---|---|---|---|---|---|---|"]
    cal, ev = cells["calibration"], cells["evaluation"]
    for key in sorted(cal.keys() | ev.keys(), key=_cell_order):
        lines.append(f"| {key} | " + " | ".join(_pr(h[key]) if key in h else "- | - | -" for h in (cal, ev)) + " |")
    return lines


# The predictors of the rank-correlation table, in its order.
PREDICTORS = ("nlc", "nlc_off_band", "nlc_population", "params", "depth", "synflow", "jacob_cov")


def power_by_width(records: list[dict], bad: dict[str, bool], family: str = "cnn", norm: str = "batch") -> dict:
    """AUC of each predictor against "bad" (larger value: bad) per width, over every
    architecture of the family with that norm (both halves: descriptive, nothing is chosen
    by it): whether a branch's lack of ranking power is about narrow networks."""
    out: dict = {}
    members = [r for r in records if r["spec"]["family"] == family and r["spec"]["norm"] == norm]
    for width in sorted({r["spec"]["width"] for r in members}):
        at = [r for r in members if r["spec"]["width"] == width]
        cell: dict = {"n": len(at), "bad": sum(bad[r["id"]] for r in at)}
        for k in PREDICTORS:
            pairs = [(v, bad[r["id"]]) for r in at if (v := predictors(r)[k]) is not None]
            cell[k] = auc([v for v, _ in pairs], [b for _, b in pairs], 1)
        out[width] = cell
    return out


def _cell_order(key: str) -> tuple:
    if key == "all":
        return (-1, 0, 0)
    if " width " in key:
        family, width = key.split(" width ")
        return (1, family, int(width))
    return (0, BRANCH_NAMES.index(key), 0)


# ---------------------------------------------------------------------------------------
# Rule values and verdicts


def rule_value(rec: dict, code: str, *, judged_only: bool = True) -> float | None:
    """The rule's value for the model: the worst over its entries (max, or min for rules
    whose value is bad when low), measured where measured, else predicted. None for a
    family branch the rule leaves to an off-by-default rule (config.LEFT_TO_OFF_BY_DEFAULT),
    unless ``judged_only`` is False."""
    if judged_only and (code, branch(rec)) in config.LEFT_TO_OFF_BY_DEFAULT:
        return None
    entries = rec["archlint"]["values"].get(code, [])
    vals = []
    for e in entries:
        v = _f(e.get("measured"))
        if v is None:
            v = _f(e.get("predicted"))
        if v is not None and not math.isnan(v):
            vals.append(v)
    if not vals:
        return None
    return max(vals) if config.RULE_DIRECTION[code] > 0 else min(vals)


# The parts of the run, in the order they were trained (run_part), and the archlint whose
# findings during the run judged each (its thresholds then).
PARTS = {"first": "archlint before the study",
         "extension": "the thresholds of the first 640",
         "default-init": "the thresholds of all 1280"}


def run_part(rec: dict) -> str:
    """The part of the run the architecture belongs to (config.EXTENSION_FROM,
    config.DEFAULT_INIT_FROM), which says which archlint judged it during the run (PARTS)."""
    index = rec["spec"]["index"]
    if index < config.EXTENSION_FROM:
        return "first"
    return "extension" if index < config.DEFAULT_INIT_FROM else "default-init"


def default_fires(rec: dict, code: str | None = None) -> bool:
    """archlint as it was during the run (run_part says which): a warning-level finding (not
    dismissed) of ``code`` (any code). A finding of a rule on a family branch it has since
    left to an off-by-default rule (config.LEFT_TO_OFF_BY_DEFAULT; results computed before
    the change still have it) does not count: the default selection no longer reports it."""
    return any((code is None or f["code"] == code) and not f["code"].startswith("ARC9")
               and f["status"] != "dismissed" and f["severity"] in ("warning", "error")
               and (f["code"], branch(rec)) not in config.LEFT_TO_OFF_BY_DEFAULT
               for f in rec["archlint"]["findings"])


def beyond(value: float | None, threshold: float | None, direction: int) -> bool:
    if value is None or threshold is None:
        return False
    return value > threshold if direction > 0 else value < threshold


def _candidates(values: list[float]) -> list[float]:
    """Thresholds between neighbouring values, and just outside the ends."""
    finite = sorted({v for v in values if math.isfinite(v)})
    cands = [(a + b) / 2 for a, b in zip(finite, finite[1:])]
    if finite:
        cands += [finite[0] - 1e-9 * (abs(finite[0]) + 1), finite[-1] + 1e-9 * (abs(finite[-1]) + 1)]
    return cands


def _counts(pairs: list[tuple[float, bool]], t: float, direction: int) -> dict:
    tp = sum(1 for v, b in pairs if b and beyond(v, t, direction))
    fp = sum(1 for v, b in pairs if not b and beyond(v, t, direction))
    fn = sum(1 for v, b in pairs if b and not beyond(v, t, direction))
    return {"threshold": t, "tp": tp, "fp": fp, "fn": fn, "n": len(pairs),
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}


def best_threshold(values: list[float | None], bad: list[bool], direction: int) -> dict | None:
    """The committed objective: the threshold that maximises F1 of "value beyond threshold"
    against bad (kept for the comparison in the summary; see config.THRESHOLD_OBJECTIVE)."""
    pairs = [(v, b) for v, b in zip(values, bad) if v is not None]
    if not pairs or not any(b for _, b in pairs):
        return None
    best = None
    for t in _candidates([v for v, _ in pairs]):
        c = _counts(pairs, t, direction)
        if best is None or c["f1"] > best["f1"]:
            best = c
    return best


def recall_at_precision(values: list[float | None], bad: list[bool], direction: int) -> dict | None:
    """The threshold that flags the most bad architectures while its precision is at least
    the goal, from at least MIN_TRUE_POSITIVES true positives, and better than chance: the
    lower Wilson bound of its precision above the base rate. None: no predictive power."""
    pairs = [(v, b) for v, b in zip(values, bad) if v is not None]
    if not pairs:
        return None
    base_rate = sum(b for _, b in pairs) / len(pairs)
    best = None
    for t in _candidates([v for v, _ in pairs]):
        c = _counts(pairs, t, direction)
        if c["tp"] < config.MIN_TRUE_POSITIVES or c["precision"] < config.GOALS["precision"]:
            continue
        if wilson(c["tp"], c["tp"] + c["fp"])[0] <= base_rate:
            continue
        # Ties in recall: the threshold that flags fewer good ones (the first found among equals).
        key = (c["tp"], -c["fp"])
        if best is None or key > (best["tp"], -best["fp"]):
            best = c
    if best is not None:
        best["base_rate"] = base_rate
        best["auc"] = auc([v for v, _ in pairs], [b for _, b in pairs], direction)
    return best


def auc(values: list[float], bad: list[bool], direction: int) -> float | None:
    """The probability that a bad architecture's value is beyond a good one's (ties count
    half): 0.5 is no ranking power."""
    pos = [v * direction for v, b in zip(values, bad) if b and math.isfinite(v)]
    neg = [v * direction for v, b in zip(values, bad) if not b and math.isfinite(v)]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def calibrate(records: list[dict], bad: dict[str, bool], objective=recall_at_precision) -> dict:
    """Per rule: a global threshold and per-branch ones where the branch has enough data and
    the global threshold misses the precision goal there (config.PER_FAMILY_RULES)."""
    out = {}
    for code, direction in config.RULE_DIRECTION.items():
        vals = [rule_value(r, code) for r in records]
        ys = [bad[r["id"]] for r in records]
        glob = objective(vals, ys, direction)
        per = {}
        families = sorted({r["spec"]["family"] for r in records}) if code in config.PER_FAMILY_RULES else []
        for br in families:
            idx = [i for i, r in enumerate(records) if r["spec"]["family"] == br and vals[i] is not None]
            nbad = sum(ys[i] for i in idx)
            if glob is not None:
                there = _counts([(vals[i], ys[i]) for i in idx], glob["threshold"], direction)
                if there["precision"] is not None and there["precision"] >= config.GOALS["precision"]:
                    continue  # the global claim holds in this family: it keeps it
            if nbad >= config.MIN_GROUP and len(idx) - nbad >= config.MIN_GROUP:
                found = objective([vals[i] for i in idx], [ys[i] for i in idx], direction)
                # A branch with enough data and no threshold has no predictive power there:
                # it must not fall back to the global threshold.
                per[br] = found if found is not None else {"threshold": None, "none": True}
        out[code] = {"global": glob, "branches": per}
    return out


def branch_power(records: list[dict], bad: dict[str, bool]) -> dict:
    """Per rule and family branch (calibration half): how many architectures have the rule's
    value, how many of them are bad, and how well the value ranks them (AUC): the evidence
    for keeping or demoting a rule's branch, whatever its size."""
    out: dict = {}
    for code, direction in config.RULE_DIRECTION.items():
        out[code] = {}
        for br in sorted({branch(r) for r in records}):
            pairs = [(rule_value(r, code, judged_only=False), bad[r["id"]]) for r in records if branch(r) == br]
            pairs = [(v, b) for v, b in pairs if v is not None]
            found = recall_at_precision([v for v, _ in pairs], [b for _, b in pairs], direction)
            out[code][br] = {"n": len(pairs), "bad": sum(b for _, b in pairs),
                             "auc": auc([v for v, _ in pairs], [b for _, b in pairs], direction) if pairs else None,
                             "threshold": None if found is None else found["threshold"]}
    return out


def branches_without_power(power: dict) -> list[tuple[str, str]]:
    """The (rule, family branch) pairs that show no predictive power by the committed
    criterion (config.LEFT_TO_OFF_BY_DEFAULT): no threshold at the precision goal and an AUC
    at or below chance, over at least config.MIN_GROUP architectures of each class (fewer
    cannot show that power is absent)."""
    return [(code, br) for code, per in power.items() for br, b in per.items()
            if b["n"] and b["threshold"] is None and b["auc"] is not None and b["auc"] <= 0.5
            and b["bad"] >= config.MIN_GROUP and b["n"] - b["bad"] >= config.MIN_GROUP]


def threshold_for(rec: dict, code: str, cal: dict) -> float | None:
    c = cal[code]
    t = c["branches"].get(rec["spec"]["family"]) or c["global"]
    return None if t is None else t["threshold"]


def calibrated_fires(rec: dict, code: str, cal: dict) -> bool:
    return beyond(rule_value(rec, code), threshold_for(rec, code, cal), config.RULE_DIRECTION[code])


def combine(records: list[dict], bad: dict[str, bool], cal: dict) -> list[str]:
    """The rules whose combination ("any of them fires") is the calibrated verdict: most
    precise first (on the calibration half), each kept while the combination's precision
    there stays at the goal."""
    def precision(codes):
        fired = [r for r in records if any(calibrated_fires(r, c, cal) for c in codes)]
        return (sum(bad[r["id"]] for r in fired) / len(fired)) if fired else None

    ranked = sorted((c for c in config.RULE_DIRECTION if precision([c]) is not None),
                    key=lambda c: -precision([c]))
    kept: list[str] = []
    for code in ranked:
        p = precision(kept + [code])
        if p is not None and p >= config.GOALS["precision"]:
            kept.append(code)
    return kept


# ---------------------------------------------------------------------------------------
# The rules' defaults after the study


# The rule option each calibrated threshold becomes (per family for config.PER_FAMILY_RULES:
# ``threshold`` for MLPs, ``conv-threshold`` for models with convolutions).
THRESHOLD_OPTION = {
    "ARC101": {"mlp": "threshold", "cnn": "conv-threshold"},
    "ARC102": "threshold",
    "ARC103": {"mlp": "threshold", "cnn": "conv-threshold"},
    "ARC104": "threshold",
    "ARC105": "threshold",
    "ARC201": "threshold",
    "ARC202": {"mlp": "threshold", "cnn": "conv-threshold"},
    "ARC203": {"mlp": "threshold", "cnn": "conv-threshold"},
    "ARC204": "threshold",
    "ARC205": {"mlp": "max-std", "cnn": "conv-max-std"},
}
# Rules whose value the study records but whose default verdict it cannot test: ARC303 judges
# batches under ``warn-below`` (32), and every architecture trains at config.BATCH_SIZE (128).
NOT_TESTED = {"ARC303": f"the study trains at batch {config.BATCH_SIZE}; the rule judges batches under 32"}


def shipped(value: float) -> float:
    """A calibrated threshold as a rule ships it: 3 significant digits."""
    return float(f"{value:.3g}")


def shipped_defaults(cal: dict) -> dict:
    """Per rule the study tests: the options it ships with (each calibrated threshold, per
    family where the rule has one), or the off-by-default rule it is demoted to."""
    out: dict = {}
    for code, option in THRESHOLD_OPTION.items():
        c = cal[code]
        if c["global"] is None or code in config.DEMOTED_RULES:
            # Off by default under its successor's code (config.DEMOTED_RULES; None, as on a
            # --quick run's two dozen architectures, is for a human to decide; a test checks).
            out[code] = {"demoted_to": config.DEMOTED_RULES.get(code), "options": {}}
            continue
        if isinstance(option, dict):
            # None: no power in that family, which then needs an ARC4xx successor (as above).
            options = {name: None if (t := c["branches"].get(family) or c["global"]).get("none") else shipped(t["threshold"])
                       for family, name in option.items()}
        else:
            options = {option: shipped(c["global"]["threshold"])}
        out[code] = {"demoted_to": None, "options": options}
    return out


def shipped_threshold(rec: dict, code: str, defaults: dict) -> float | None:
    d = defaults[code]
    if not d["options"]:
        return None
    option = THRESHOLD_OPTION[code]
    return d["options"][option[rec["spec"]["family"]] if isinstance(option, dict) else option]


def shipped_fires(rec: dict, code: str, defaults: dict) -> bool:
    """The rule with its shipped defaults (simulated on the recorded values)."""
    return beyond(rule_value(rec, code), shipped_threshold(rec, code, defaults), config.RULE_DIRECTION[code])


def on_by_default(defaults: dict) -> list[str]:
    """The rules the study tests that ship on by default (with a calibrated threshold)."""
    return [c for c, d in defaults.items() if d["options"]]


def evaluate_defaults(cal_recs: list[dict], ev_recs: list[dict], bad: dict[str, bool], cal: dict) -> dict:
    """The shipped defaults on both halves: any rule, and each rule alone (the evidence line of
    its documentation)."""
    defaults = shipped_defaults(cal)

    def on(recs, codes):
        return confusion([any(shipped_fires(r, c, defaults) for c in codes) for r in recs], [bad[r["id"]] for r in recs])

    codes = on_by_default(defaults)
    return {
        "defaults": defaults, "not_tested": NOT_TESTED,
        "calibration": on(cal_recs, codes), "evaluation": on(ev_recs, codes),
        "per_rule": {c: {"calibration": on(cal_recs, [c]), "evaluation": on(ev_recs, [c])} for c in codes},
    }


def evidence_line(summary: dict, code: str) -> str:
    """The sentence a rule's documentation quotes for its calibrated defaults (a test checks
    that it does)."""
    sh = summary["shipped"]
    c, e = sh["per_rule"][code]["calibration"], sh["per_rule"][code]["evaluation"]
    return (f"Calibrated on {c['n']} architectures of the validation study: precision {c['precision']:.2f}, "
            f"recall {c['recall']:.2f}; on the {e['n']} held out: precision {e['precision']:.2f}, recall {e['recall']:.2f}.")


# ---------------------------------------------------------------------------------------
# Statistics


def wilson(k: int, n: int, level: float = config.CI_LEVEL) -> list[float] | None:
    if n == 0:
        return None
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half_w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half_w), min(1.0, centre + half_w)]


def confusion(pred: list[bool], truth: list[bool]) -> dict:
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum(t and not p for p, t in zip(pred, truth))
    n, bad = len(truth), sum(truth)
    return {
        "n": n, "bad": bad, "flagged": tp + fp, "tp": tp, "fp": fp, "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else None, "precision_ci": wilson(tp, tp + fp),
        "recall": tp / bad if bad else None, "recall_ci": wilson(tp, bad),
    }


def spearman(x: list[float | None], y: list[float]) -> dict:
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and not math.isnan(a)]
    if len(pairs) < 5:
        return {"rho": None, "n": len(pairs)}
    a, b = zip(*pairs)
    if len(set(a)) < 2 or len(set(b)) < 2:
        return {"rho": None, "n": len(pairs)}
    rho, p = spearmanr(a, b)
    return {"rho": float(rho), "p": float(p), "n": len(pairs)}


def predictors(rec: dict) -> dict[str, float | None]:
    s, b = rec["archlint"]["stats"], rec["baselines"]
    nlc = _f(s.get("nlc"))
    return {
        "nlc": nlc,
        # Distance from the guide's band (NLC 1-3): how far outside it, in log terms.
        "nlc_off_band": None if nlc is None else max(0.0, math.log(nlc / 3.0), math.log(1.0 / nlc)) if nlc > 0 else None,
        "nlc_population": _f(s.get("nlc_population")),
        "params": float(b["params"]), "depth": float(b["depth"]),
        "synflow": _f(b.get("synflow")), "jacob_cov": _f(b.get("jacob_cov")),
    }


# ---------------------------------------------------------------------------------------
# The analysis


def analyze(records: list[dict], failed: list[dict], calibration_only: bool = False) -> dict:
    """The summary. ``calibration_only``: an interim look while the run is incomplete, from
    the calibration half alone (its thresholds, their in-sample precision and recall, the
    ranking power per branch, the rank correlations): the evaluation half is read once, at
    the end. The labels always come from every result (a group's reference error)."""
    primary = labels(records, config.BAD_RULE)
    cal_recs = [r for r in records if half(r["id"]) == "calibration"]
    ev_recs = [r for r in records if half(r["id"]) == "evaluation"]
    if calibration_only:
        return _calibration_summary(records, failed, cal_recs, primary)
    summary: dict = {
        "n_results": len(records) + len(failed), "n_usable": len(records), "n_failed": len(failed),
        "n_calibration": len(cal_recs), "n_evaluation": len(ev_recs),
        "label": config.BAD_RULE, "bad_total": sum(primary.values()),
        "protocol": records[0]["protocol"] if records else None,
    }

    # archlint's findings during the run: before the study on the first part only.
    first_ev = [r for r in ev_recs if run_part(r) == "first"]

    def evaluate(bad: dict[str, bool]) -> dict:
        cal = calibrate(cal_recs, bad)
        kept = combine(cal_recs, bad, cal)
        truth = [bad[r["id"]] for r in ev_recs]
        calibrated = [any(calibrated_fires(r, c, cal) for c in kept) for r in ev_recs]
        f1_cal = calibrate(cal_recs, bad, objective=best_threshold)
        out = {
            "calibrated": confusion(calibrated, truth),
            "default": confusion([default_fires(r) for r in first_ev], [bad[r["id"]] for r in first_ev]),
            "f1_objective": confusion([any(calibrated_fires(r, c, f1_cal) for c in config.RULE_DIRECTION)
                                       for r in ev_recs], truth),
            "combined_rules": kept,
            "thresholds": cal,
            "per_rule": {
                code: {"calibrated": confusion([calibrated_fires(r, code, cal) for r in ev_recs], truth),
                       "default": confusion([default_fires(r, code) for r in first_ev], [bad[r["id"]] for r in first_ev])}
                for code in config.RULE_DIRECTION
            },
        }
        return out

    main = evaluate(primary)
    summary["evaluation"] = {**main["calibrated"], "verdict": "any of the combined rules beyond its calibrated threshold",
                             "combined_rules": main["combined_rules"]}
    summary["evaluation_default_thresholds"] = main["default"]
    summary["evaluation_f1_objective"] = main["f1_objective"]
    summary["calibration"] = {"objective": config.THRESHOLD_OBJECTIVE, "goals": config.GOALS,
                              "min_true_positives": config.MIN_TRUE_POSITIVES, "min_group": config.MIN_GROUP}
    summary["per_rule"] = main["per_rule"]
    summary["thresholds"] = main["thresholds"]
    summary["shipped"] = evaluate_defaults(cal_recs, ev_recs, primary, main["thresholds"])
    summary["branch_power"] = branch_power(cal_recs, primary)
    defaults = summary["shipped"]["defaults"]
    summary["shipped_by_cell"] = by_cell(records, primary,
                                         lambda r: any(shipped_fires(r, c, defaults) for c in on_by_default(defaults)))
    summary["verdicts_by_part"] = verdicts_by_part(records, primary)
    summary["fresh"] = {part: found for part in ("extension", "default-init") if (found := fresh(records, primary, part))}
    summary["label_reproducibility"] = label_reproducibility(records, config.BAD_RULE)
    summary["batchnorm_cnn_power_by_width"] = power_by_width(records, primary)
    summary["sensitivity"] = {}
    for rule in (config.BAD_RULE, *config.ALTERNATIVE_RULES):
        ev = main if rule is config.BAD_RULE else evaluate(labels(records, rule))
        bad = primary if rule is config.BAD_RULE else labels(records, rule)
        summary["sensitivity"][rule["name"]] = {
            "rule": rule, "bad_total": sum(bad.values()),
            "calibrated": ev["calibrated"], "default": ev["default"],
        }

    summary.update(_descriptive(records, primary))
    return summary


def fresh(records: list[dict], bad: dict[str, bool], part: str = "extension") -> dict | None:
    """archlint as it shipped when ``part`` was trained (its findings during the run, PARTS) on
    that part's architectures, which none of its thresholds had seen: both halves, each half,
    and per family branch and width. None before the part has results."""
    ext = [r for r in records if run_part(r) == part]
    if not ext:
        return None

    def on(recs):
        return confusion([default_fires(r) for r in recs], [bad[r["id"]] for r in recs])

    return {"all": on(ext), **{h: on([r for r in ext if half(r["id"]) == h]) for h in ("calibration", "evaluation")},
            "per_rule": {c: confusion([default_fires(r, c) for r in ext], [bad[r["id"]] for r in ext])
                         for c in sorted({f["code"] for r in ext for f in r["archlint"]["findings"]})
                         if not c.startswith("ARC9")},
            "by_cell": by_cell(ext, bad, default_fires)}


def verdicts_by_part(records: list[dict], bad: dict[str, bool]) -> dict:
    """The committed criterion on each part's calibration half alone (run_part): the rules
    with a global threshold at the precision goal, the family branches with one, and the
    branches without predictive power (branches_without_power). A rule or branch changes
    status (on or off by default) only where both parts agree (config.py: "Status changes").
    The parts of the study's random population only: the default-init part is another
    population by design (config.DEFAULT_INIT_FROM)."""
    out = {}
    for part in ("first", "extension"):
        cal_recs = [r for r in records if run_part(r) == part and half(r["id"]) == "calibration"]
        if not cal_recs:
            continue
        thresholds = calibrate(cal_recs, bad)
        power = branch_power(cal_recs, bad)
        out[part] = {"n": len(cal_recs),
                     "rules_with_threshold": sorted(c for c, t in thresholds.items() if t["global"] is not None),
                     "branches_with_threshold": sorted([c, br] for c, per in power.items()
                                                       for br, b in per.items() if b["threshold"] is not None),
                     "branches_without_power": sorted(list(cb) for cb in branches_without_power(power))}
    return out


def _calibration_summary(records, failed, cal_recs, primary) -> dict:
    cal = calibrate(cal_recs, primary)
    kept = combine(cal_recs, primary, cal)
    truth = [primary[r["id"]] for r in cal_recs]
    summary = {
        "interim": True, "n_results": len(records) + len(failed), "n_usable": len(records), "n_failed": len(failed),
        "n_calibration": len(cal_recs), "label": config.BAD_RULE, "bad_calibration": sum(truth),
        "calibration": {"objective": config.THRESHOLD_OBJECTIVE, "goals": config.GOALS,
                        "min_true_positives": config.MIN_TRUE_POSITIVES, "min_group": config.MIN_GROUP},
        "thresholds": cal, "combined_rules": kept,
        "in_sample": {
            "calibrated": confusion([any(calibrated_fires(r, c, cal) for c in kept) for r in cal_recs], truth),
            "default": confusion([default_fires(r) for r in cal_recs if run_part(r) == "first"],
                                 [primary[r["id"]] for r in cal_recs if run_part(r) == "first"]),
        },
        "branch_power": branch_power(cal_recs, primary),
    }
    summary.update(_descriptive(cal_recs, primary))
    return summary


def _descriptive(records: list[dict], primary: dict[str, bool]) -> dict:
    """Rank correlations, outcome noise and composition of ``records``."""
    summary: dict = {}
    # Rank correlations with the best test error (diverged-everywhere ranks last).
    corr = {}
    groups = defaultdict(list)
    for r in records:
        groups["/".join(group(r))].append(r)
        groups[f"{r['spec']['dataset']}/{branch(r)}"].append(r)
    for name, members in sorted(groups.items()):
        errs = [best_error(r) if math.isfinite(best_error(r)) else 2.0 for r in members]
        preds = [predictors(r) for r in members]
        corr[name] = {k: spearman([p[k] for p in preds], errs) for k in preds[0]}
    summary["spearman_vs_test_error"] = corr

    # Outcome noise: architectures trained with two seeds.
    twice = [r for r in records if len(r["train"]) > 1]
    if twice:
        diffs = [abs(best_error(r, 0) - best_error(r, 1)) for r in twice
                 if math.isfinite(best_error(r, 0)) and math.isfinite(best_error(r, 1))]
        summary["seed_noise"] = {
            "n": len(twice),
            "median_abs_diff": float(np.median(diffs)) if diffs else None,
            "p90_abs_diff": float(np.percentile(diffs, 90)) if diffs else None,
        }
    summary["composition"] = {
        "by_group": {"/".join(k): sum(1 for r in records if group(r) == k) for k in sorted({group(r) for r in records})},
        "bad_by_group": {"/".join(k): sum(1 for r in records if group(r) == k and primary[r["id"]]) for k in sorted({group(r) for r in records})},
        "residual": sum(r["spec"]["skip"] for r in records),
        "batchnorm": sum(r["spec"]["norm"] == "batch" for r in records),
    }
    summary["different_init"] = [r["id"] for r in records if not r.get("same_init", True)]
    return summary


# ---------------------------------------------------------------------------------------
# Output


def _pr(c: dict) -> str:
    def one(v, ci):
        if v is None:
            return "-"
        return f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.2f}"
    return f"{one(c['precision'], c['precision_ci'])} | {one(c['recall'], c['recall_ci'])} | {c['tp']}/{c['flagged']}/{c['bad']}"


def markdown(summary: dict) -> str:
    label = (f"by the primary label ({config.BAD_RULE['factor']}x the median of the best "
             f"{config.BAD_RULE['top_share']:.0%} of the same dataset and family)")
    if summary.get("interim"):
        lines = [
            "# Validation study, interim: the calibration half",
            "",
            f"{summary['n_usable']} of {config.N_ARCHITECTURES} architectures done ({summary['n_failed']} failed); "
            f"this looks at the {summary['n_calibration']} of the calibration half only, {summary['bad_calibration']} "
            f"of them bad {label}. The evaluation half is read once, when the run is complete.",
            "",
            "## Calibration half, in sample: a warning-level finding against \"bad\"",
            "",
            "In sample (the thresholds were chosen on these architectures): an upper bound on what the evaluation "
            "half will show. Precision and recall with 95% Wilson intervals; tp/flagged/bad.",
            "",
            "| verdict | precision | recall | tp/flagged/bad |",
            "|---|---|---|---|",
            f"| any of the combined rules, calibrated thresholds | {_pr(summary['in_sample']['calibrated'])} |",
            f"| any finding, default thresholds | {_pr(summary['in_sample']['default'])} |",
        ]
        combined = summary["combined_rules"]
    else:
        lines = [
            "# Validation study: does archlint predict training outcomes?",
            "",
            f"{summary['n_usable']} architectures analysed ({summary['n_failed']} failed), "
            f"{summary['n_calibration']} in the calibration half, {summary['n_evaluation']} in the evaluation half; "
            f"{summary['bad_total']} bad {label}.",
            "",
            "## Evaluation half: a warning-level finding against \"bad\"",
            "",
            "Precision and recall with 95% Wilson intervals; tp/flagged/bad.",
            "",
            "| verdict | precision | recall | tp/flagged/bad |",
            "|---|---|---|---|",
            f"| any rule, calibrated thresholds | {_pr(summary['evaluation'])} |",
            f"| archlint's findings during the run of the first {config.EXTENSION_FROM} (its thresholds before the study) | {_pr(summary['evaluation_default_thresholds'])} |",
            f"| archlint's defaults after the study, simulated on the recorded values (below; recheck.md runs them) | {_pr(summary['shipped']['evaluation'])} |",
            f"| any rule, thresholds of the committed F1 objective | {_pr(summary['evaluation_f1_objective'])} |",
        ]
        for code, c in summary["per_rule"].items():
            lines.append(f"| {code} calibrated | {_pr(c['calibrated'])} |")
            lines.append(f"| {code} before the study | {_pr(c['default'])} |")
        combined = summary["evaluation"]["combined_rules"]
        for part, fr in (summary.get("fresh") or {}).items():
            first_index = config.EXTENSION_FROM if part == "extension" else config.DEFAULT_INIT_FROM
            lines += ["", f"## archlint with {PARTS[part]}, on architectures it had never seen ({part})", "",
                      f"The {fr['all']['n']} architectures from index {first_index} on were trained with archlint as it "
                      f"shipped then ({PARTS[part]}); its findings during the run are its verdict. Both halves are new "
                      "to those thresholds.", "",
                      "| architectures | precision | recall | tp/flagged/bad |", "|---|---|---|---|",
                      f"| all {fr['all']['n']} | {_pr(fr['all'])} |",
                      f"| of the calibration half | {_pr(fr['calibration'])} |",
                      f"| of the evaluation half | {_pr(fr['evaluation'])} |"]
            lines += [f"| {code} alone | {_pr(c)} |" for code, c in fr["per_rule"].items()]
            lines += ["", "Per family branch and per family and width:", "", *by_cell_table(fr["by_cell"])]
        if summary.get("verdicts_by_part"):
            lines += ["", "## Which rules and branches each part shows power in (calibration halves)", "",
                      "The committed criterion on each part's calibration half alone. A rule or family branch changes "
                      "status (on or off by default) only where both parts agree (config.py: \"Status changes\").", "",
                      "| part | n | rules with a threshold | branches with a threshold | branches without power |",
                      "|---|---|---|---|---|"]
            for part, v in summary["verdicts_by_part"].items():
                lines.append(f"| {part} | {v['n']} | {', '.join(v['rules_with_threshold'])} | "
                             + ", ".join(f"{c} {b}" for c, b in v["branches_with_threshold"]) + " | "
                             + ", ".join(f"{c} {b}" for c, b in v["branches_without_power"]) + " |")
        sh = summary["shipped"]
        lines += ["", "## archlint's defaults after the study", "",
                  "Each rule's option set to its calibrated threshold (3 significant digits; per family where the rule "
                  "has one); a rule without one is off by default under its successor's code. Simulated on the recorded "
                  "values: a rule fires when its value is beyond its threshold. Recall is of all bad architectures.", "",
                  "| rule | shipped options | calibration half: precision | recall | tp/flagged/bad | "
                  "evaluation half: precision | recall | tp/flagged/bad |", "|---|---|---|---|---|---|---|---|",
                  f"| any | - | {_pr(sh['calibration'])} | {_pr(sh['evaluation'])} |"]
        for code, d in sh["defaults"].items():
            if not d["options"]:
                lines.append(f"| {code} | off by default as {d['demoted_to']} | - | - | - | - | - | - |")
                continue
            opts = ", ".join(f"{k} = {v:g}" for k, v in d["options"].items())
            per = sh["per_rule"][code]
            lines.append(f"| {code} | {opts} | {_pr(per['calibration'])} | {_pr(per['evaluation'])} |")
        for code, why in sh["not_tested"].items():
            lines.append(f"| {code} | unchanged: {why} | - | - | - | - | - | - |")
    lines += ["", f"Combined rules of the calibrated verdict: {', '.join(combined) or 'none'}.",
              "", "## Calibrated thresholds (calibration half)", "",
              "Per rule, over all families, and per family for the rules with a threshold per family where the family has "
              "enough of both classes; \"none\": no threshold reaches "
              f"precision {config.GOALS['precision']} from {config.MIN_TRUE_POSITIVES} true positives above the base rate "
              "(no predictive power).", "",
              "| rule | where | threshold | precision | recall | tp/fp/fn | AUC |", "|---|---|---|---|---|---|---|"]
    for code, c in summary["thresholds"].items():
        for where, t in [("all", c["global"]), *sorted(c["branches"].items())]:
            if t is None or t.get("none"):
                lines.append(f"| {code} | {where} | none | - | - | - | - |")
            else:
                auc_text = f"{t['auc']:.2f}" if t.get("auc") is not None else "-"
                lines.append(f"| {code} | {where} | {t['threshold']:.4g} | {t['precision']:.2f} | {t['recall']:.2f} | "
                             f"{t['tp']}/{t['fp']}/{t['fn']} | {auc_text} |")
    lines += ["", "## Ranking power per family branch (calibration half)", "",
              "AUC of the rule's value against \"bad\" (0.5: chance) over every architecture of the branch that has "
              "the value, branches left to an off-by-default rule included; n (bad); the threshold at the precision "
              "goal where one exists.", "",
              "| rule | " + " | ".join(BRANCH_NAMES) + " |", "|---|" + "---|" * len(BRANCH_NAMES)]
    for code, per in summary["branch_power"].items():
        cells = []
        for br in BRANCH_NAMES:
            b = per.get(br)
            if not b or not b["n"]:
                cells.append("-")
                continue
            auc_text = f"{b['auc']:.2f}" if b["auc"] is not None else "-"
            thr = f", at {b['threshold']:.3g}" if b["threshold"] is not None else ""
            left = config.LEFT_TO_OFF_BY_DEFAULT.get((code, br))
            cells.append(f"{auc_text} ({b['n']}, {b['bad']} bad){thr}{f' -> {left}' if left else ''}")
        lines.append(f"| {code} | " + " | ".join(cells) + " |")
    if "shipped_by_cell" in summary:
        lines += ["", "## Where archlint's defaults work, and where they miss", "",
                  "archlint's defaults after the study (simulated, as above; recheck.md has the product's own) per "
                  "family branch and per family and width.", "", *by_cell_table(summary["shipped_by_cell"])]
    if summary.get("label_reproducibility"):
        lr = summary["label_reproducibility"]
        lines += ["", f"The label of a second training run (second seed, {lr['n']} architectures) as a verdict on the "
                      f"first run's label: precision {lr['precision']:.2f}, recall {lr['recall']:.2f} "
                      f"({lr['tp']}/{lr['flagged']}/{lr['bad']}): how far the outcome noise alone keeps a verdict "
                      "from the label."]
    if summary.get("batchnorm_cnn_power_by_width"):
        lines += ["", "## CNNs with BatchNorm: ranking power by width (both halves, descriptive)", "",
                  "AUC of each predictor against \"bad\" (larger value: bad; 0.5: chance) among the CNNs with "
                  "BatchNorm of each width: whether the branch's lack of ranking power is about narrow networks.", "",
                  "| width | n | bad | NLC | NLC off the 1-3 band | population NLC | params | depth | synflow | jacob_cov |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for width, c in summary["batchnorm_cnn_power_by_width"].items():
            cells = [f"{c[k]:.2f}" if c[k] is not None else "-" for k in PREDICTORS]
            lines.append(f"| {width} | {c['n']} | {c['bad']} | " + " | ".join(cells) + " |")
    if "sensitivity" in summary:
        lines += ["", "## Sensitivity to the label", "",
                  "| label | bad | calibrated precision | recall | tp/flagged/bad | default precision | recall | tp/flagged/bad |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in summary["sensitivity"].items():
            lines.append(f"| {name} | {s['bad_total']} | {_pr(s['calibrated'])} | {_pr(s['default'])} |")
    lines += ["", "## Spearman rank correlation with the best test error", "",
              "| group | n | NLC | NLC off the 1-3 band | population NLC | params | depth | synflow | jacob_cov |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in summary["spearman_vs_test_error"].items():
        cells = [f"{c[k]['rho']:.2f}" if c[k]["rho"] is not None else "-" for k in PREDICTORS]
        lines.append(f"| {name} | {c['nlc']['n']} | " + " | ".join(cells) + " |")
    if "seed_noise" in summary:
        sn = summary["seed_noise"]
        lines += ["", f"Outcome noise: {sn['n']} architectures trained with two seeds; median |difference| of the "
                      f"best test error {sn['median_abs_diff']}, 90th percentile {sn['p90_abs_diff']}."]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], warned_by, path: Path) -> None:
    """NLC at initialisation against the best test error, coloured by ``warned_by(rec)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["spec"]["dataset"] for r in records}) or ["-"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for family, marker in (("mlp", "o"), ("cnn", "^")):
            for warned, colour in ((False, "tab:blue"), (True, "tab:red")):
                pts = [(_f(r["archlint"]["stats"]["nlc"]), best_error(r)) for r in records
                       if r["spec"]["dataset"] == ds and r["spec"]["family"] == family and warned_by(r) == warned]
                pts = [(x, y if math.isfinite(y) else 1.0) for x, y in pts if x is not None and x > 0]
                if pts:
                    xs, ys = zip(*pts)
                    ax.scatter(xs, ys, s=14, marker=marker, c=colour, alpha=0.6,
                               label=f"{family}, {'warning' if warned else 'no warning'}")
        ax.set_xscale("log")
        ax.axvspan(1, 3, color="0.9", zorder=0)
        ax.set_xlabel("measured NLC at initialisation")
        ax.set_ylabel("best test error (diverged = 1)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{ds} (colour: archlint's verdict, defaults after the study; grey: NLC 1-3)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--calibration-only", action="store_true",
                    help="an interim look at the calibration half while the run is incomplete (the evaluation half is "
                         "read once, at the end): writes summary_calibration.json/.md and calibration_nlc_vs_error.png")
    args = ap.parse_args(argv)
    if not args.results.exists():
        ap.error(f"{args.results}: no results file (run run.py first)")
    records, failed = load(args.results)
    summary = analyze(records, failed, calibration_only=args.calibration_only)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "summary_calibration" if args.calibration_only else "summary"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(summary))
    if args.calibration_only:
        cal = [r for r in records if half(r["id"]) == "calibration"]
        plot(cal, lambda r: any(calibrated_fires(r, c, summary["thresholds"]) for c in summary["combined_rules"]),
             args.out_dir / "calibration_nlc_vs_error.png")
        print(f"{summary['n_usable']} usable; calibration half n={summary['n_calibration']}; wrote {args.out_dir}/"
              f"{stem}.json, {stem}.md, calibration_nlc_vs_error.png", file=sys.stderr)
        return 0
    defaults = summary["shipped"]["defaults"]
    plot(records, lambda r: any(shipped_fires(r, c, defaults) for c in on_by_default(defaults)),
         args.out_dir / "nlc_vs_error.png")
    ev = summary["evaluation"]
    print(f"{summary['n_usable']} usable ({summary['n_failed']} failed); evaluation half n={ev['n']} bad={ev['bad']} "
          f"precision={ev['precision']} recall={ev['recall']}; wrote {args.out_dir}/summary.json, summary.md, nlc_vs_error.png",
          file=sys.stderr)
    return 0


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o))


if __name__ == "__main__":
    sys.exit(main())
