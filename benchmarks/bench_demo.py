"""The learning proof: the full-size `iadr1 demo` on held-out synthetic images, checked against the bar.

    python benchmarks/bench_demo.py                       # the defaults of `iadr1 demo` (about 5 min, 2 cores)
    python benchmarks/bench_demo.py --set n_train=3000 --set 'sft={"lr": 2e-3}' --json /tmp/demo.json
    python benchmarks/bench_demo.py --quick               # the shortened run of tests/test_demo.py

The bar (issues 7 and 14): after PA-SFT, balanced accuracy >= 90, type accuracy >= 39.3 and location accuracy
>= 16.9 (the figures before SC-GRPO was made to work: PA-SFT is not weakened to widen the margin); SC-GRPO raises
the mean of type and location accuracy by >= 8 points with neither lower, keeps balanced accuracy >= SFT - 1 and
the consistency rate >= 95; the whole demo takes <= 10 minutes. Also printed: the gain's bootstrap standard error,
the train-set vs test-set accuracy of the PA-SFT model on as many training images as test images (over- vs
under-fitting), the load average while running, and the wall time of each stage.
Exit status 1 when the bar is missed (so that CI can run it), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

BAR_SFT_BA = 90.0
BAR_SFT_TYPE = 39.3
BAR_SFT_LOCATION = 16.9
BAR_GAIN = 8.0
BAR_GRPO_DROP = 1.0
BAR_GRPO_CONSISTENCY = 95.0
BAR_WALL_SECONDS = 600.0


def train_set_accuracy(report: dict[str, Any], n: int, batch_size: int, max_new_tokens: int, max_pixels: int) -> float:
    """Plain accuracy of the PA-SFT model on `n` training images (the same prompt and decoding as the test)."""
    from iadr1.infer import run_inference

    root = Path(report["data"]["root"])
    recs = json.loads((root / "sft_0shot.json").read_text())[:n]
    entries = {}
    for r in recs:
        img = r["images"] if isinstance(r["images"], str) else r["images"][-1]
        yes = "<answer>Yes</answer>" in r["messages"][-1]["content"]
        entries[img] = {
            "image_path": img,
            "conversation": [
                {
                    "Question": "Are there any defects in the query image?",
                    "Answer": "A" if yes else "B",
                    "Options": {"A": "Yes.", "B": "No."},
                    "type": "Anomaly Detection",
                }
            ],
            "similar_templates": [],
            "random_templates": [],
        }
    test_file = root / "train_as_test.json"
    test_file.write_text(json.dumps(entries))
    summary = run_inference(
        model=report["models"]["sft"],
        test_file=test_file,
        image_root=root / "images",
        out=root.parent / "eval_sft_train",
        backend="transformers",
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_pixels=max_pixels,
    )
    return round(100 * (summary.accuracy or 0.0), 1)


def main() -> None:
    from iadr1.demo import QUICK, DemoConfig, run_demo, summary_rows

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="Output folder (default: a new temporary folder).")
    p.add_argument("--quick", action="store_true", help="The QUICK preset of the test suite.")
    p.add_argument("--set", action="append", default=[], help="DemoConfig field as KEY=VALUE (JSON value).")
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    args = p.parse_args()

    options: dict[str, Any] = dict(QUICK) if args.quick else {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_demo_")) / "out"
    cfg = DemoConfig(out=out, **options)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    report = run_demo(cfg)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    train_acc = train_set_accuracy(report, cfg.n_test, cfg.infer_batch_size, cfg.max_new_tokens, cfg.max_pixels)

    rows = summary_rows(report)
    sft, grpo = rows["sft"], rows["grpo"]
    gain = report["interpretation_gain"]

    def at_least(x: float | None, bar: float) -> bool:
        return x is not None and x >= bar

    checks = {
        f"PA-SFT balanced accuracy >= {BAR_SFT_BA:g}": at_least(sft["balanced_accuracy"], BAR_SFT_BA),
        f"PA-SFT type accuracy >= {BAR_SFT_TYPE:g}": at_least(sft["type_accuracy"], BAR_SFT_TYPE),
        f"PA-SFT location accuracy >= {BAR_SFT_LOCATION:g}": at_least(sft["location_accuracy"], BAR_SFT_LOCATION),
        f"SC-GRPO mean of type and location accuracy >= SFT + {BAR_GAIN:g}": at_least(gain["gain"], BAR_GAIN),
        "SC-GRPO type accuracy >= SFT": at_least(gain["type_gain"], 0.0),
        "SC-GRPO location accuracy >= SFT": at_least(gain["location_gain"], 0.0),
        f"SC-GRPO balanced accuracy >= SFT - {BAR_GRPO_DROP:g}": grpo["balanced_accuracy"]
        >= sft["balanced_accuracy"] - BAR_GRPO_DROP,
        f"SC-GRPO consistency rate >= {BAR_GRPO_CONSISTENCY:g}": grpo["consistency_rate"] >= BAR_GRPO_CONSISTENCY,
        f"whole demo <= {BAR_WALL_SECONDS:g} s": wall <= BAR_WALL_SECONDS,
    }
    figures = {
        "stages": rows,
        "interpretation_gain": gain,
        "per_defect_accuracy": {s: m["per_defect_accuracy"] for s, m in report["stages"].items()},
        "vision_warmup_held_out": (report.get("vision_warmup") or {}).get("final"),
        "vision_warmup_seconds": (report.get("vision_warmup") or {}).get("seconds"),
        "sft_train_set_accuracy": train_acc,
        "sft_test_set_accuracy": report["stages"]["sft"].get("accuracy"),
        "wall_seconds": round(wall, 1),
        # CPU seconds used by this process: on a busy machine, wall time over-states what 2 free cores need.
        "cpu_seconds": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime, 1
        ),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cpu_count": os.cpu_count(),
        "config": report["config"],
        "checks": checks,
        "out": str(out),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
