"""Shallow MLPs at PyTorch's default init under the study's protocol: does ARC203's finding on
them (its MLP threshold reports their fading signal) come with a bad outcome?

The study's random population has no model at PyTorch's default init (weights uniform with
variance 1/(3 fan_in), biases uniform in +-1/sqrt(fan_in)): its coldest init keeps half of
He's std, the default 0.41 of it (the study's default-init part was added after this check).
This trains ReLU MLPs of 2-4 hidden layers at that default init and, beside each, the same
MLP He-initialised, with run.py's protocol (both datasets, the rate grid, 200 steps of SGD,
seed 0), and judges each outcome by the study's label: the cut of its dataset and family
over the architectures of results.jsonl. Descriptive: nothing here changes a threshold
(those come from the calibration half alone).

    python benchmarks/validation/default_init.py          # -> default_init.md (about 1 min)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyze  # noqa: E402
import config  # noqa: E402
import run  # noqa: E402

HERE = Path(__file__).resolve().parent
DEPTHS = (2, 3, 4)
WIDTHS = (64, 256)
INITS = ("pytorch-default", "he")

SOURCE = '''import torch.nn as nn


class Net(nn.Module):
    def __init__(self, features={features}, width={width}, depth={depth}, classes={classes}):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(features if i == 0 else width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)
        if {he}:
            for m in self.body:
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.body(x))
'''


def one(dataset: str, depth: int, width: int, init: str, workdir: Path, cuts: dict) -> dict:
    info = config.DATASETS[dataset]
    spec = {"dataset": dataset, "family": "mlp", "id": f"{dataset}-{init}-{depth}x{width}"}
    source = SOURCE.format(features=info["mlp_shape"][0], width=width, depth=depth, classes=info["classes"],
                           he=init == "he")
    # As run.py judges the study's architectures: the default findings (does archlint report
    # ARC203?) and the rule's value whatever the threshold, from the same graph.
    record, result, batch = run.default_findings(spec, "cpu", workdir, source=source)
    graph = run.analysed_graph(result)
    values, _, _ = run.rule_values(graph, batch, "cpu")
    value = analyze.rule_value({"archlint": {"values": values}}, "ARC203", judged_only=False)
    # The model archlint built (right after seeding; archlint leaves its state as it was).
    best = run.train_all(graph.model, spec, config.STEPS[dataset], config.MEASURE_SEED, "cpu", "vmap")["best"]
    error = best["test_error"] if not best["diverged_all"] else math.inf
    return {"dataset": dataset, "depth": depth, "width": width, "init": init, "arc203": value,
            "reported": any(f["code"] == "ARC203" and f["status"] != "dismissed" for f in record["findings"]),
            "test_error": error, "lr": best["lr"], "bad": analyze.is_bad(error, cuts[(dataset, "mlp")])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--out", type=Path, default=HERE / "default_init.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    records, _ = analyze.load(args.results)
    cuts = analyze.group_cuts(records, config.BAD_RULE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="archlint_default_init_") as tmp:
        for dataset in config.DATASETS:
            for depth in DEPTHS:
                for width in WIDTHS:
                    for init in INITS:
                        rows.append(one(dataset, depth, width, init, Path(tmp), cuts))
                        r = rows[-1]
                        print(f"{r['dataset']} {r['init']} {r['depth']}x{r['width']}: ARC203 {r['arc203']:.3g} "
                              f"reported={r['reported']} error={r['test_error']:.3f} bad={r['bad']}", file=sys.stderr)
    lines = ["# Shallow MLPs at PyTorch's default init, under the study's protocol", "",
             "`python benchmarks/validation/default_init.py`: ReLU MLPs at PyTorch's default init and the same "
             "MLPs He-initialised, trained as run.py trains the study's architectures (seed 0, best rate of the "
             "grid), judged by the study's label (the cut of their dataset's MLPs over results.jsonl). ARC203: "
             "the features/input ratio of input-dependent std, and whether archlint reports it at its default "
             "threshold.", "",
             "| dataset | hidden layers x width | init | ARC203 value | reported | best test error | bad (cut) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cut = cuts[(r["dataset"], "mlp")]
        lines.append(f"| {r['dataset']} | {r['depth']} x {r['width']} | {r['init']} | {r['arc203']:.3g} | "
                     f"{'yes' if r['reported'] else 'no'} | {r['test_error']:.3f} | {'yes' if r['bad'] else 'no'} ({cut:.3f}) |")
    for init in INITS:
        mine = [r for r in rows if r["init"] == init]
        lines.append("")
        lines.append(f"{init}: {sum(r['reported'] for r in mine)} of {len(mine)} reported by ARC203, "
                     f"{sum(r['bad'] for r in mine)} bad; of the reported, {sum(r['bad'] for r in mine if r['reported'])} bad.")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
