"""What more training buys a demo's PA-SFT model, supervised or by reward (docs/demo.md, "What a second pass
buys"): the ceiling that issue 14's +8 points of SC-GRPO gain runs into.

    python benchmarks/grpo_budget.py DEMO_OUT [--sft-lr 3e-4] [--grpo-steps 130] [--skip sft|grpo] [--json FILE]

From the model DEMO_OUT/sft of an `iadr1 demo --out DEMO_OUT` run, two arms, each with the demo's own run config
(`report.json` "training": the recipe, the seed, the paths) and scored as the demo scores a stage
(`iadr1.demo.answer_test_images`):

- `sft2`: a second PA-SFT pass over the same answers (lr `--sft-lr`, cosine as the recipe). Every answer states
  the truth, so this is about the most that more of the demo's training data can teach the language model on the
  frozen tower's features.
- `grpo`: SC-GRPO with the demo recipe for `--grpo-steps` steps (the demo runs 60; 130 take about as long as the
  second PA-SFT pass on 2 cores), the same rewards and sampling.

Printed per arm: training examples seen (answers, or prompts x G completions), training seconds, examples per
second, type and location accuracy and the interpretation gain over DEMO_OUT/eval_sft with its paired bootstrap
standard error (`iadr1.demo.interpretation_gain`). Runs are kept in DEMO_OUT/budget/<arm>/ and reused when there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The demo's run configs turn transformers' bars off (it draws its own) and transformers then prints each log dict.
BARS = {"disable_tqdm": False}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("--sft-lr", type=float, default=3e-4, help="peak lr of the second PA-SFT pass")
    ap.add_argument("--grpo-steps", type=int, default=130, help="about the second PA-SFT pass's time on 2 cores")
    ap.add_argument("--skip", choices=["sft", "grpo"], default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from iadr1.demo import DemoConfig, answer_test_images, interpretation_gain
    from iadr1.eval.pipeline import evaluate
    from iadr1.train.config import GRPORunConfig, SFTRunConfig
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    out = args.demo_out
    report_file = out / "report.json"
    if not report_file.is_file():
        sys.exit(f"{report_file}: not found (run `iadr1 demo --out {out}` first)")
    report = json.loads(report_file.read_text())
    demo, training = DemoConfig(**report["config"]), report["training"]
    test_file = next((out / "data").glob("test_*_format.json"))
    annotations = out / "data" / "annotations.jsonl"
    before = out / "eval_sft" / "predictions.jsonl"

    def n_records(path: str) -> int:
        return len(json.loads(Path(path).read_text()))

    def run_config(cls, stage: str, folder: str, **changes):
        """The demo's run config of `stage`, from its PA-SFT model into DEMO_OUT/budget/<folder>."""
        base = training[stage]
        trl_args = {**base["trl_args"], **BARS}
        return cls(**{**base, "model": str(out / "sft"), "output_dir": out / "budget" / folder, "trl_args": trl_args,
                      **changes})  # fmt: skip

    arms = []
    if args.skip != "sft":
        cfg = run_config(SFTRunConfig, "sft", "sft2", lr=args.sft_lr)
        arms.append(("sft2", cfg, run_sft, int(n_records(cfg.dataset) * cfg.epochs), "answers"))
    if args.skip != "grpo":
        name = f"grpo{args.grpo_steps}"
        cfg = run_config(GRPORunConfig, "grpo", name, max_steps=args.grpo_steps)
        per_step = cfg.batch_size * cfg.grad_accum  # completions per optimizer step (one process)
        arms.append((name, cfg, run_grpo, args.grpo_steps * per_step, "completions"))

    rows = []
    for name, cfg, train, seen, unit in arms:
        timing = cfg.output_dir / "budget_seconds.json"
        if timing.is_file():
            seconds = json.loads(timing.read_text())["seconds"]
        else:
            t0 = time.perf_counter()
            train(cfg)
            seconds = round(time.perf_counter() - t0, 1)
            timing.write_text(json.dumps({"seconds": seconds}))
        summary = answer_test_images(cfg.output_dir, demo, test_file, out / "data" / "images", cfg.output_dir / "eval")
        result = evaluate([test_file], [summary.predictions], annotations=[annotations], n_boot=0)
        metrics = next(iter(result.datasets.values()))
        gain = interpretation_gain(test_file, annotations, before, summary.predictions)
        rows.append({"arm": name, "seen": seen, "unit": unit, "seconds": seconds, "per_second": seen / seconds,
                     "balanced_accuracy": metrics["balanced_accuracy"], "type_accuracy": metrics["type_accuracy"],
                     "location_accuracy": metrics["location_accuracy"], **gain})  # fmt: skip

    sft = report["stages"]["sft"]
    print(f"from {out / 'sft'}: type {sft['type_accuracy']:.1f}, location {sft['location_accuracy']:.1f}, "
          f"balanced accuracy {sft['balanced_accuracy']:.1f}")  # fmt: skip
    print(f"{'arm':10s}{'seen':>18s}{'seconds':>9s}{'per s':>8s}{'BA':>7s}{'type':>7s}{'loc.':>7s}{'gain (s.e.)':>15s}")
    for r in rows:
        print(f"{r['arm']:10s}{r['seen']:>6d} {r['unit']:11s}{r['seconds']:9.1f}{r['per_second']:8.1f}"
              f"{r['balanced_accuracy']:7.1f}{r['type_accuracy']:7.1f}{r['location_accuracy']:7.1f}"
              f"{r['gain']:+9.2f} ({r['standard_error']:.2f})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
