"""The validation study's pipeline end to end (benchmarks/validation): a few architectures
generated, measured by archlint, trained over the rate grid and analysed, so the study never
rots. Uses run.py --quick (two dozen architectures, a few training steps), as the study's
protocol asks, on two workers (the suite itself runs on one core)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "benchmarks" / "validation"
sys.path.insert(0, str(STUDY))

import config  # noqa: E402
import generate  # noqa: E402


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STUDY / script), *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO)


def test_generator_population_meets_the_protocol():
    specs = generate.architectures(config.N_ARCHITECTURES)
    counts = generate.summary(specs)
    assert counts["total"] >= 600 and counts["cnn"] >= 200
    assert counts["residual"] >= 100 and counts["batchnorm"] >= 100
    assert counts["deep residual BN CNN (>= 16 layers)"] >= 30
    assert {s["activation"] for s in specs} == set(generate.ACTIVATIONS)
    assert {s["gain"] for s in specs[:config.DEFAULT_INIT_FROM]} == {"cold", "standard", "hot"}
    assert {s["gain"] for s in specs[config.DEFAULT_INIT_FROM:]} == {"default"}
    depths = [generate.layer_count(s) for s in specs]
    assert min(depths) == 2 and max(depths) == 50
    # Ids are unique and stable: the same index gives the same spec whatever the total.
    assert len({s["id"] for s in specs}) == len(specs)
    assert generate.architecture(123) == specs[123]


def test_generated_sources_are_plain_pytorch_and_build_deterministically():
    import torch

    for index in (0, 9, 14, config.DEFAULT_INIT_FROM):  # an MLP, a deep residual BN CNN, a BN MLP, default init
        spec = generate.architecture(index)
        src = generate.source(spec)
        assert "archlint" not in src.replace("benchmarks/validation", "")
        a, b = generate.build(spec, 0), generate.build(spec, 0)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        out = a(torch.randn(3, *generate.input_shape(spec)))
        assert out.shape == (3, 10)


def test_quick_run_resumes_and_analysis_writes_summary(tmp_path):
    out = tmp_path / "results.jsonl"
    quick = ("--quick", "--workers", "2", "--out", str(out))
    first = _run("run.py", *quick)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == config.QUICK_N
    ok = [r for r in lines if "error" not in r]
    assert len(ok) == config.QUICK_N, [r.get("traceback") for r in lines if "error" in r]
    families = {(r["spec"]["family"], r["spec"]["norm"] == "batch", r["spec"]["skip"]) for r in ok}
    assert ("cnn", True, True) in families  # --quick includes a residual BN CNN
    for r in ok:
        # archlint analysed the generated Net with the same initialisation that was trained.
        assert r["same_init"] is True
        stats = r["archlint"]["stats"]
        assert stats["status"] == "ok" and stats["nlc"] > 0
        assert r["archlint"]["values"]["ARC101"][0]["measured"] == pytest.approx(stats["nlc"])
        if r["spec"]["norm"] == "batch":
            assert stats["mode"] == "train-bn" and stats["nlc_population"] > 0
        assert not any(f["code"] == "ARC903" for f in r["archlint"]["findings"])
        base = r["baselines"]
        assert base["params"] > 0 and base["depth"] == generate.layer_count(r["spec"])
        runs = r["train"][0]["runs"]
        assert [x["lr"] for x in runs] == list(config.LEARNING_RATES)
        for x in runs:
            assert x["diverged"] or 0 <= x["test_error"] <= 1
        best = r["train"][0]["best"]
        assert best["diverged_all"] or best["test_error"] == min(x["test_error"] for x in runs if not x["diverged"])
    # Architecture 0 trains with a second seed (index % SECOND_SEED_EVERY == 0).
    assert len(next(r for r in ok if r["spec"]["index"] == 0)["train"]) == 2

    # Resume: a second invocation finds every id done and adds nothing.
    before = out.read_text()
    second = _run("run.py", *quick)
    assert second.returncode == 0, second.stderr
    assert out.read_text() == before
    assert f"{config.QUICK_N} already in" in second.stderr

    # An interruption that cut the last line: that architecture runs again, on a line of its own.
    out.write_text(before[:-40])
    third = _run("run.py", *quick)
    assert third.returncode == 0, third.stderr
    assert f"{config.QUICK_N - 1} already in" in third.stderr
    parsed = []
    for line in out.read_text().splitlines():
        try:
            parsed.append(json.loads(line)["id"])
        except json.JSONDecodeError:
            pass
    assert sorted(parsed) == sorted(r["id"] for r in lines)

    summary_dir = tmp_path / "analysis"
    res = _run("analyze.py", "--results", str(out), "--out-dir", str(summary_dir))
    assert res.returncode == 0, res.stderr
    summary = json.loads((summary_dir / "summary.json").read_text())
    ev = summary["evaluation"]
    assert {"precision", "recall", "n", "bad"} <= set(ev)
    assert summary["n_usable"] == config.QUICK_N
    assert ev["n"] == summary["n_evaluation"] and summary["n_calibration"] + summary["n_evaluation"] == config.QUICK_N
    assert 0 <= ev["bad"] <= ev["n"]
    assert (summary_dir / "nlc_vs_error.png").stat().st_size > 1000
    assert "Spearman" in (summary_dir / "summary.md").read_text()


def test_labels_follow_the_committed_rule():
    import analyze

    def rec(i, err, dataset="digits", family="mlp"):
        diverged = err is None
        return {"id": f"r{i}", "spec": {"dataset": dataset, "family": family},
                "train": [{"best": {"diverged_all": diverged, "test_error": err}}]}

    # Ten MLPs: the best 20% are 0.10 and 0.12 (median 0.11), so bad is >= 0.165.
    errs = [0.10, 0.12, 0.14, 0.16, 0.17, 0.2, 0.3, 0.5, 0.9, None]
    recs = [rec(i, e) for i, e in enumerate(errs)]
    # A CNN group of its own: its reference is its own best.
    recs += [rec(100, 0.5, family="cnn"), rec(101, 0.6, family="cnn")]
    bad = analyze.labels(recs, config.BAD_RULE)
    assert [bad[f"r{i}"] for i in range(10)] == [False, False, False, False, True, True, True, True, True, True]
    assert bad["r100"] is False and bad["r101"] is False  # 0.6 < 1.5 x 0.5


def test_off_by_default_rules_quote_the_studys_numbers():
    """ARC401-ARC409 say why they are off by default with the numbers of summary.json (the
    calibration half of every architecture), and docs/validation.md with them."""
    from archlint.rule import get

    summary = json.loads((STUDY / "summary.json").read_text())
    doc_page = " ".join((REPO / "docs" / "validation.md").read_text().split())
    assert f"{summary['n_usable']} of {config.N_ARCHITECTURES} architectures are done" in doc_page
    for (origin, branch_name), code in config.LEFT_TO_OFF_BY_DEFAULT.items():
        power = summary["branch_power"][origin][branch_name]
        quoted = f"AUC {power['auc']:.2f} over {power['n']} architectures ({power['bad']} bad"
        assert quoted in " ".join(get(code).doc.split()), code


def test_rules_ship_the_studys_calibrated_defaults_with_their_evidence():
    """Each rule the study tests ships the threshold calibrated on the calibration half
    (recomputed here from results.jsonl, and as summary.json records it) and quotes its
    precision and recall there and on the held-out half; a rule without predictive power is
    off by default under its ARC4xx successor, and its old code still names it."""
    import analyze

    from archlint.config import DEFAULT_SELECT, is_selected
    from archlint.rule import REDIRECTS, registry

    summary = json.loads((STUDY / "summary.json").read_text())
    records, _ = analyze.load(STUDY / "results.jsonl")
    bad = analyze.labels(records, config.BAD_RULE)
    cal = analyze.calibrate([r for r in records if analyze.half(r["id"]) == "calibration"], bad)
    assert analyze.shipped_defaults(cal) == summary["shipped"]["defaults"]
    reg = registry()
    for code, shipped in summary["shipped"]["defaults"].items():
        if not shipped["options"]:
            successor = shipped["demoted_to"]
            assert successor, f"{code} shows no predictive power: config.DEMOTED_RULES must name its successor"
            assert code not in reg and REDIRECTS[code] == successor
            assert not is_selected(successor, DEFAULT_SELECT, ())
            continue
        rule = reg[code]
        assert None not in shipped["options"].values(), f"{code} has a family without power: it needs a successor"
        assert {k: rule.options[k] for k in shipped["options"]} == shipped["options"], code
        assert analyze.evidence_line(summary, code) in " ".join(rule.doc.split()), code


def test_a_rule_or_branch_changes_status_only_where_both_parts_agree():
    """config.py, "Status changes": what is off by default has no threshold in at least one
    part's calibration half; what both parts mark without power is off (or says why); a rule
    on by default has a threshold in at least one part."""
    import analyze

    summary = json.loads((STUDY / "summary.json").read_text())
    by_part = summary["verdicts_by_part"]
    assert set(by_part) == {"first", "extension"}
    records, _ = analyze.load(STUDY / "results.jsonl")
    assert analyze.verdicts_by_part(records, analyze.labels(records, config.BAD_RULE)) == by_part

    def in_both(key):
        return set.intersection(*({tuple(x) if isinstance(x, list) else x for x in v[key]} for v in by_part.values()))

    assert not set(config.LEFT_TO_OFF_BY_DEFAULT) & in_both("branches_with_threshold")
    assert not set(config.DEMOTED_RULES) & in_both("rules_with_threshold")
    assert in_both("branches_without_power") <= set(config.LEFT_TO_OFF_BY_DEFAULT) | set(config.KEPT_DESPITE_THE_CRITERION)
    for code in analyze.on_by_default(summary["shipped"]["defaults"]):
        assert any(code in v["rules_with_threshold"] for v in by_part.values()), code
    # The split is by index: each part's calibration half is its own; the default-init part
    # is not one of them (config.py, "Status changes").
    random_parts = [r for r in records if analyze.run_part(r) != "default-init"]
    assert sum(v["n"] for v in by_part.values()) == sum(analyze.half(r["id"]) == "calibration" for r in random_parts)


def test_calibration_prefers_precision_and_finds_no_power_where_there_is_none():
    import analyze

    # 40 architectures, 32 bad (a base rate like the study's): the 24 with high values are
    # bad, the 16 with low values half bad.
    values = [10.0 + i for i in range(24)] + [1.0 + 0.1 * i for i in range(16)]
    bad = [True] * 24 + [i % 2 == 0 for i in range(16)]
    f1 = analyze.best_threshold(values, bad, +1)
    ours = analyze.recall_at_precision(values, bad, +1)
    # F1 at this base rate prefers flagging everything (precision = the base rate); the
    # goal-driven threshold flags the 24 high values (and as many more as the goal allows).
    assert f1["tp"] + f1["fp"] == 40 and f1["precision"] == 0.8
    assert ours["tp"] >= 24 and ours["precision"] >= config.GOALS["precision"] and ours["fp"] < f1["fp"]
    assert ours["auc"] > 0.8
    # A value unrelated to the outcome: no threshold reaches the goal above the base rate.
    noise = [float(i % 5) for i in range(20)]
    assert analyze.recall_at_precision(noise, [i % 2 == 0 for i in range(20)], +1) is None


def test_the_permissive_options_open_every_calibrated_threshold():
    """Each option a calibrated threshold ships as (per family too) is opened by
    config.PERMISSIVE_OPTIONS, so that a run records the rule's value for every model, CNNs
    included, not only those beyond today's default."""
    import analyze

    for code, option in analyze.THRESHOLD_OPTION.items():
        names = set(option.values()) if isinstance(option, dict) else {option}
        assert names <= set(config.PERMISSIVE_OPTIONS[code]), code


def test_a_family_gets_its_own_threshold_only_where_the_global_one_fails_there():
    """analyze.calibrate, for a rule with a threshold per family: a family whose precision at
    the global threshold already meets the goal keeps it; one where it falls short gets its
    own (here higher) threshold."""
    import analyze

    code = "ARC205"
    assert code in config.PER_FAMILY_RULES

    def rec(i, family, value):
        return {"id": f"{family}{i}", "spec": {"family": family, "norm": "none"},
                "archlint": {"values": {code: [{"measured": value}]}}}

    # CNNs: all bad from 2 up, half bad below 0.4: the global claim holds among them.
    cnns = [rec(i, "cnn", 2.0 + i) for i in range(20)] + [rec(20 + i, "cnn", 0.1 + 0.01 * i) for i in range(24)]
    cnn_bad = [True] * 20 + [i % 2 == 0 for i in range(24)]
    # MLPs: half bad between 1.2 and 2.2, all bad from 3.5 up.
    mlps = [rec(i, "mlp", 1.2 + 0.05 * i) for i in range(20)] + [rec(20 + i, "mlp", 3.5 + i) for i in range(15)]
    mlp_bad = [i % 2 == 0 for i in range(20)] + [True] * 15
    records = cnns + mlps
    bad = {r["id"]: b for r, b in zip(records, cnn_bad + mlp_bad)}
    cal = analyze.calibrate(records, bad)[code]
    glob = cal["global"]["threshold"]

    def precision_at(recs, labels, t):
        return analyze._counts([(r["archlint"]["values"][code][0]["measured"], b) for r, b in zip(recs, labels)], t, +1)["precision"]

    # The CNN family has enough of each class (32 bad, 12 good) for a threshold of its own,
    # and keeps the global one, which is precise there; the MLPs' is higher.
    assert precision_at(cnns, cnn_bad, glob) >= config.GOALS["precision"] > precision_at(mlps, mlp_bad, glob)
    assert "cnn" not in cal["branches"] and analyze.threshold_for(cnns[0], code, {code: cal}) == glob
    mlp = cal["branches"]["mlp"]["threshold"]
    assert mlp > glob and precision_at(mlps, mlp_bad, mlp) >= config.GOALS["precision"]


def test_second_seed_label_and_the_verdict_per_branch_and_width():
    """The outcome noise as a verdict (the second seed's label against the first's, both
    against the first seed's group cut) and the verdict per family branch and width."""
    import analyze

    def rec(i, errs, norm="none", width=32):
        return {"id": f"r{i}", "spec": {"dataset": "digits", "family": "mlp", "norm": norm, "width": width},
                "train": [{"best": {"diverged_all": False, "test_error": e}} for e in errs]}

    # Ten MLPs: the best 20% are 0.10 and 0.12, so bad is >= 0.165 (the first seed's errors).
    firsts = [0.10, 0.12, 0.14, 0.16, 0.17, 0.2, 0.3, 0.5, 0.9, 0.15]
    seconds = {2: 0.2, 5: 0.15, 7: 0.6}  # one good turns bad, one bad turns good, one stays bad
    recs = [rec(i, [e, seconds[i]] if i in seconds else [e], norm="batch" if i % 2 else "none", width=32 if i < 5 else 64)
            for i, e in enumerate(firsts)]
    noise = analyze.label_reproducibility(recs, config.BAD_RULE)
    assert (noise["n"], noise["bad"], noise["tp"], noise["fp"], noise["fn"]) == (3, 2, 1, 1, 1)

    bad = analyze.labels(recs, config.BAD_RULE)
    # A verdict that flags the architectures with BatchNorm.
    cells = analyze.by_cell(recs, bad, lambda r: r["spec"]["norm"] == "batch")
    seen = {key: c for half in cells.values() for key, c in half.items()}
    n_all = sum(half["all"]["n"] for half in cells.values())
    assert n_all == 10
    with_bn = [k for k in seen if k == "mlp-bn"]
    assert with_bn and all(seen[k]["fp"] + seen[k]["tp"] == seen[k]["n"] for k in with_bn)
    assert all(seen[k]["flagged"] == 0 for k in seen if k == "mlp-nobn")
    total_bad = sum(half["all"]["bad"] for half in cells.values())
    assert total_bad == sum(bad.values()) == 5
    widths = {k for k in seen if "width" in k}
    assert widths <= {"mlp width 32", "mlp width 64"} and widths


def test_findings_during_the_run_are_judged_per_archlint_that_made_them():
    """The first 640 were judged during the run by archlint before the study, the extension by
    archlint with the first 640's thresholds, the default-init part by those of all 1280: the
    "before the study" row counts only the first, and each fresh verdict only its part (and is
    absent without it)."""
    import analyze

    warning = [{"code": "ARC101", "severity": "warning", "status": "confirmed"}]

    def rec(index, err, warned):
        return {"id": f"r{index}", "spec": {"index": index, "dataset": "digits", "family": "mlp", "norm": "none",
                                            "width": 32},
                "archlint": {"findings": warning if warned else []},
                "train": [{"best": {"diverged_all": False, "test_error": err}}]}

    first = [rec(i, e, w) for i, (e, w) in enumerate([(0.10, False), (0.11, False), (0.5, True), (0.6, False)])]
    ext = [rec(config.EXTENSION_FROM + i, e, w) for i, (e, w) in
           enumerate([(0.10, True), (0.12, False), (0.7, True), (0.8, True), (0.9, False)])]
    third = [rec(config.DEFAULT_INIT_FROM + i, e, w) for i, (e, w) in enumerate([(0.3, True), (0.2, True)])]
    bad = analyze.labels(first + ext + third, config.BAD_RULE)
    assert [analyze.run_part(r) for r in (first[0], ext[0], third[0])] == ["first", "extension", "default-init"]
    assert analyze.fresh(first, bad) is None
    got = analyze.fresh(first + ext + third, bad)["all"]
    assert (got["n"], got["tp"], got["fp"], got["fn"]) == (5, 2, 1, 1)
    assert analyze.fresh(first + ext, bad)["per_rule"]["ARC101"]["flagged"] == 3
    got = analyze.fresh(first + ext + third, bad, "default-init")["all"]
    assert (got["n"], got["flagged"]) == (2, 2)


def test_ranking_power_of_batchnorm_cnns_per_width():
    """power_by_width: per width, the AUC of each predictor among the family's architectures
    with that norm only."""
    import analyze

    def rec(i, width, nlc, bad, family="cnn", norm="batch"):
        return {"id": f"r{i}", "spec": {"family": family, "norm": norm, "width": width},
                "archlint": {"stats": {"nlc": nlc, "nlc_population": None}},
                "baselines": {"params": 100.0 + i, "depth": 4.0, "synflow": None, "jacob_cov": None}}, bad

    pairs = [rec(0, 8, 9.0, False), rec(1, 8, 2.0, True), rec(2, 8, 3.0, True),  # higher NLC, good
             rec(3, 16, 9.0, True), rec(4, 16, 2.0, False), rec(5, 16, 8.0, True),  # higher NLC, bad
             rec(6, 16, 1.0, True, norm="none"), rec(7, 32, 5.0, True, family="mlp")]  # not counted
    records, bad = [r for r, _ in pairs], {r["id"]: b for r, b in pairs}
    power = analyze.power_by_width(records, bad)
    assert set(power) == {8, 16}
    assert (power[8]["n"], power[8]["bad"], power[16]["n"], power[16]["bad"]) == (3, 2, 3, 2)
    assert (power[8]["nlc"], power[16]["nlc"]) == (0.0, 1.0)
    assert power[16]["depth"] == 0.5 and power[16]["synflow"] is None


def test_recheck_runs_archlint_as_it_ships_and_resumes(tmp_path):
    """recheck.py runs today's archlint on the study's architectures (no training) and
    compares it with analyze.py's simulation of the shipped thresholds; a second run resumes."""
    out = tmp_path / "recheck.jsonl"
    first = _run("recheck.py", "--limit", "2", "--half", "evaluation", "--out", str(out))
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all("findings" in rec and rec["check_seconds"] > 0 for rec in lines)
    summary = json.loads((tmp_path / "recheck_summary.json").read_text())
    assert summary["evaluation"]["archlint"]["n"] == 2 and "simulated" in summary["evaluation"]
    assert "| evaluation | archlint today |" in (tmp_path / "recheck.md").read_text()
    again = _run("recheck.py", "--limit", "2", "--half", "evaluation", "--out", str(out))
    assert "2 already checked" in again.stderr and len(out.read_text().splitlines()) == 4


def test_recheck_separates_findings_the_simulation_cannot_see():
    """Where the product and the simulation differ, recheck.py says which of the product's
    own flags have no recorded value of the rule (the study records a rule's value where its
    static check reports, so a value only the measurement finds is missing)."""
    import analyze
    import recheck

    summary = json.loads((STUDY / "summary.json").read_text())
    defaults = summary["shipped"]["defaults"]
    # As the run recorded them: revalue.py has since filled ARC203's gaps.
    records, _ = analyze.load(STUDY / "results.jsonl", found_values=False)
    bad = analyze.labels(records, config.BAD_RULE)
    unrecorded = next(r for r in records if not r["archlint"]["values"].get("ARC203"))
    recorded = next(r for r in records if analyze.shipped_fires(r, "ARC203", defaults))
    flag = {"code": "ARC203", "severity": "warning"}
    rechecked = {unrecorded["id"]: {"findings": [flag]}, recorded["id"]: {"findings": []}}
    d = recheck.differences([unrecorded, recorded], rechecked, defaults, bad)["ARC203"]
    assert d["product_only"] == 1 and d["product_only_unrecorded"] == 1 and d["product_only_alone"] == 1
    assert d["product_only_bad"] == int(bad[unrecorded["id"]])
    assert d["simulated_only"] == 1 and d["simulated_only_bad"] == int(bad[recorded["id"]])
    assert d["unrecorded"] == 1


def test_values_found_by_measurement_are_recorded_and_added_where_the_run_has_none(tmp_path):
    """run.rule_values records the value a rule's ``find`` judges where its static check
    reports nothing (the run did not: ARC203 on a CNN the predictor cannot follow), as the
    product's finding measures it; analyze.py adds it to a record only where the run has no
    value of that rule, and revalue.py resumes."""
    import analyze
    import revalue

    spec = generate.architecture(0)  # a 1-D CNN whose features' std the predictor cannot follow
    line = revalue.revalue_one(spec)
    entry = line["values"]["ARC203"][0]
    assert entry["found_by_measurement"] and entry["predicted"] is None and 0 < entry["measured"] < 1
    # The same value the product's finding is judged by, at a threshold just above it.
    import run

    from archlint.rule import get

    _, result, batch = run.default_findings(spec, "cpu", tmp_path)
    graph = result.models[0].graph
    _, _, report = run.rule_values(graph, batch, "cpu")
    def at(t):  # a CNN: its threshold is conv-threshold
        return {"threshold": t, "conv-threshold": t}

    found = get("ARC203").find(graph, report, at(entry["measured"] * 1.01), None)
    assert [f.measured for f in found] == [pytest.approx(entry["measured"])]
    assert not get("ARC203").find(graph, report, at(entry["measured"] * 0.99), None)

    recorded = {"id": spec["id"], "spec": spec, "archlint": {"values": {"ARC203": [{"measured": 0.5, "predicted": 0.4}]}}}
    missing = {"id": "other", "spec": spec, "archlint": {"values": {}}}
    merged = analyze.with_found_values([recorded, missing], {spec["id"]: line, "other": line})
    assert analyze.rule_value(merged[0], "ARC203") == 0.5  # the run's value stays
    assert analyze.rule_value(merged[1], "ARC203") == pytest.approx(entry["measured"])
    assert analyze.rule_value(merged[1], "ARC104") is None  # only the rules whose find judges one value


def test_default_init_check_trains_and_judges_one_mlp_as_the_study_does(tmp_path):
    """default_init.py's one MLP: archlint's ARC203 verdict at its default threshold, the
    rule's value whatever the threshold, and the study's training at every rate of its grid
    judged by the cut it is given."""
    import default_init

    from archlint.rule import get

    row = default_init.one("digits", 2, 64, "pytorch-default", tmp_path, {("digits", "mlp"): 0.5})
    assert row["reported"] == (row["arc203"] < get("ARC203").options["threshold"])
    assert row["lr"] in config.LEARNING_RATES and 0 < row["test_error"] < 0.5 and row["bad"] is False
    he = default_init.one("digits", 2, 64, "he", tmp_path, {("digits", "mlp"): 0.0})
    assert he["arc203"] > row["arc203"] and he["bad"] is True  # a cut of 0: every outcome is bad
