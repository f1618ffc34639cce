"""How much doubt each score carries: P(yes) at the answer word against P(defect) where the reply decides.

Reads the predictions `iadr1 demo` wrote after each stage (DEMO_OUT/eval_<stage>/predictions.jsonl) and their test
file, and prints per stage and score: how many images have one, how many are undecided (strictly between 0.01 and
0.99), distinct values, AUROC, and the operating points at 1% and 5% Miss (`iadr1.eval.threshold`, chosen on these
same images: a description of the scores, not a calibrated claim). `--plot PNG` draws the histograms.

    python benchmarks/bench_decision_score.py demo_out [--plot docs/img/decision_score.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from iadr1.eval.threshold import operating_point
from iadr1.ranking import grouped_auroc_aupr

SCORES = (("p_yes", "P(yes) at <answer>"), ("p_defect", "P(defect) after </think>"))


def load(stage_dir: Path, test_file: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    truth = {k: v["conversation"][0]["Answer"] == "A" for k, v in json.loads(test_file.read_text()).items()}
    rows = [json.loads(line) for line in (stage_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]
    anomalous = np.array([truth[r["image"]] for r in rows])
    scores = {k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], float) for k, _ in SCORES}
    return anomalous, scores


def describe(anomalous: np.ndarray, s: np.ndarray) -> dict[str, object]:
    has = ~np.isnan(s)
    auc = grouped_auroc_aupr(np.zeros(len(s), int), 1, anomalous, s)[0][0]
    points = {m: operating_point(s, anomalous, m, n_boot=0) for m in (0.01, 0.05)}
    return {
        "scored": f"{has.sum()}/{len(s)}",
        "undecided (0.01-0.99)": int(((s > 0.01) & (s < 0.99)).sum()),
        "distinct": int(np.unique(s[has]).size),
        "AUROC": None if np.isnan(auc) else round(float(auc) * 100, 1),
        **{
            f"Miss<={int(m * 100)}%: T / Overkill": "unreachable"
            if p["threshold"] is None
            else f"{p['threshold']:.3g} / {p['overkill']:.1f}%"
            for m, p in points.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    test_files = sorted(args.demo_out.glob("data/test_*_format.json"))
    if not test_files:
        raise SystemExit(f"{args.demo_out}/data: no test_*_format.json (run `iadr1 demo --out` there)")
    test_file = test_files[0]
    stages = [d for d in (args.demo_out / n for n in ("eval_sft", "eval_grpo")) if (d / "predictions.jsonl").exists()]
    if not stages:
        raise SystemExit(f"{args.demo_out}: no eval_sft/ or eval_grpo/ predictions (run `iadr1 demo --out` there)")
    loaded = {d.name: load(d, test_file) for d in stages}
    for name, (anomalous, scores) in loaded.items():
        print(f"{name} ({anomalous.sum()} defective, {(~anomalous).sum()} normal images)")
        for key, label in SCORES:
            print(f"  {label:26s}", json.dumps(describe(anomalous, scores[key])))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # Log-odds, log10(p / (1 - p)): a confident model's scores crowd 0 and 1, where the thresholds lie.
        fig, axes = plt.subplots(len(loaded), 2, figsize=(9, 2.6 * len(loaded)), squeeze=False)
        bins = np.linspace(-7, 7, 57)
        for row, (name, (anomalous, scores)) in zip(axes, loaded.items(), strict=True):
            for ax, (key, label) in zip(row, SCORES, strict=True):
                s = np.clip(scores[key], 1e-7, 1 - 1e-7)
                odds = np.log10(s / (1 - s))
                for mask, colour, what in ((anomalous, "#c0392b", "defective"), (~anomalous, "#2471a3", "normal")):
                    v = odds[mask & ~np.isnan(odds)]
                    ax.hist(v, bins=bins, color=colour, alpha=0.6, label=f"{what} ({v.size})")
                ax.set_title(f"{name}: {label}", fontsize=9)
                ax.legend(fontsize=7)
        for ax in axes[-1]:
            ax.set_xlabel("log10 odds, log10(p / (1 - p)), clipped at +-7")
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
