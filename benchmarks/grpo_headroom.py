"""How much SC-GRPO could still gain from a model: greedy type and location accuracy beside what its own samples
reach (docs/demo.md, "What SC-GRPO can sharpen").

    python benchmarks/grpo_headroom.py DEMO_OUT [--stage sft] [--samples 8] [--temperature T] [--top-p P]

GRPO raises the probability of the sampled completions that earned more than their group. For a defective image
whose greedy answer names the wrong place or kind it can only move toward a right answer the model samples: an
image that none of its G samples gets right gives no signal toward the truth. So the share of images with at least
one right answer among k samples (pass@k) bounds what sharpening the model's own answers can give at greedy
decoding, and the images whose samples disagree (some right, some wrong) are where the groups' reward spread is.

Runs iadr1's inference (transformers, batched) `--samples` times on the demo's test images with the SC-GRPO
recipe's sampling and completion length (recipe `demo`: temperature 1.0, top-p 0.9, 64 tokens) and the image cap the
model was trained with, seeds 0..k-1, beside the stage's greedy predictions (DEMO_OUT/eval_<stage>),
scores every run with eval's rules (type and location judged on the defective images the greedy run found) and
prints one table (and `--json FILE`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("--stage", default="sft", help="sft or grpo: the model DEMO_OUT/<stage> and its eval folder")
    ap.add_argument("--samples", type=int, default=None, help="k: sampled answers per image (default: the recipe's G)")
    ap.add_argument("--temperature", type=float, default=None, help="default: the recipe's")
    ap.add_argument("--top-p", type=float, default=None, help="default: the recipe's")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from iadr1.eval.pipeline import evaluate
    from iadr1.infer import run_inference
    from iadr1.train.config import GRPORunConfig, load_config

    recipe = load_config(GRPORunConfig, recipe="demo", overrides={"model": "-", "dataset": "-", "output_dir": "-"})
    args.samples = args.samples or recipe.num_generations
    args.temperature = recipe.temperature if args.temperature is None else args.temperature
    args.top_p = recipe.top_p if args.top_p is None else args.top_p

    out = args.demo_out
    test_file = next((out / "data").glob("test_*_format.json"))
    annotations = out / "data" / "annotations.jsonl"
    greedy_pred = out / f"eval_{args.stage}" / "predictions.jsonl"
    if not greedy_pred.exists():
        sys.exit(f"{greedy_pred}: not found (run `iadr1 demo --out {out}` first)")

    def score(pred: Path):
        return evaluate([test_file], [pred], annotations=[annotations], n_boot=0)

    greedy = score(greedy_pred)
    judged = ~np.isnan(greedy.location_ok)  # the defective images the greedy run found
    samples = {"location": [], "type": []}
    for seed in range(args.samples):
        folder = out / "headroom" / f"{args.stage}_t{args.temperature:g}_p{args.top_p:g}_s{seed}"
        summary = run_inference(
            model=str(out / args.stage),
            test_file=test_file,
            image_root=out / "data" / "images",
            out=folder,
            backend="transformers",
            batch_size=32,
            max_new_tokens=recipe.max_completion_length,  # the image cap: the trained model's own (infer's default)
            temperature=args.temperature,
            top_p=args.top_p,
            seed=seed,
        )
        res = score(summary.predictions)
        # A sample that did not find the defect has no location or type: wrong for this count.
        samples["location"].append(np.where(np.isnan(res.location_ok), 0.0, res.location_ok))
        samples["type"].append(np.where(np.isnan(res.type_ok), 0.0, res.type_ok))

    figures: dict[str, dict[str, float]] = {}
    for what, greedy_ok in (("location", greedy.location_ok), ("type", greedy.type_ok)):
        s = np.stack(samples[what])[:, judged]  # (k, judged images)
        g = greedy_ok[judged]
        rate = s.mean(axis=0)
        figures[what] = {
            "greedy": 100 * float(g.mean()),
            "sample_mean": 100 * float(rate.mean()),
            f"pass@{args.samples}": 100 * float((s.max(axis=0) > 0).mean()),
            "greedy_wrong_some_sample_right": 100 * float(((g == 0) & (rate > 0)).mean()),
            "greedy_wrong_majority_right": 100 * float(((g == 0) & (rate > 0.5)).mean()),
            "never_right": 100 * float((rate == 0).mean()),
            "samples_disagree": 100 * float(((rate > 0) & (rate < 1)).mean()),
        }
    n = int(judged.sum())
    print(f"{args.stage} model, {n} defective test images it finds; {args.samples} samples at temperature "
          f"{args.temperature:g}, top-p {args.top_p:g} (% of those images)")  # fmt: skip
    keys = list(figures["location"])
    print(f"{'':34s}{'location':>10s}{'type':>10s}")
    for k in keys:
        print(f"{k:34s}{figures['location'][k]:10.1f}{figures['type'][k]:10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"images": n, "samples": args.samples, **figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
