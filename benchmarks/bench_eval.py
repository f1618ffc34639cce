"""Benchmark `iadr1 eval`: 1,000,000 predictions over 100 classes, file reading included (goal: <= 3 s).

    python benchmarks/bench_eval.py [--n 1000000] [--classes 100] [--keep DIR] [--repeat 3]

Writes a test file (the benchmark's full MMAD entry format) and predictions as two shuffled JSONL shards (the
records `iadr1 infer` writes: reply text, letter, p_yes, ...), then times `evaluate` (read, match, every metric,
1000 bootstrap replicates) and, separately, writing the outputs. Replies: 97% in the trained model's exact
grammar, 2% free text or loosely formatted (parsed one by one), 1% unanswered. Prints the figures; `--stages`
also times each stage of `evaluate` on its own (best of `--repeat`, wall and CPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

WORDS = [
    *("dark", "thin", "line", "scratch", "stain", "spot", "edge", "corner"),
    *("surface", "texture", "uniform", "bright", "crack", "dent", "wear"),
]


def make_data(folder: Path, n: int, n_classes: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """Write test_BENCH_format.json and predictions shards into `folder`."""
    rng = np.random.default_rng(seed)
    n_datasets = 5
    cls = rng.integers(0, n_classes, n)
    anomalous = rng.random(n) < 0.35
    images = [
        f"BENCH{c % n_datasets}/class{c:03d}/test/{'defect' if a else 'good'}/{i:07d}.png"
        for i, (c, a) in enumerate(zip(cls.tolist(), anomalous.tolist(), strict=True))
    ]
    test = {
        im: {
            "image_path": im,
            "conversation": [
                {
                    "Question": "Are there any defects in the query image?",
                    "Answer": "A" if a else "B",
                    "Options": {"A": "Yes.", "B": "No."},
                    "type": "Anomaly Detection",
                }
            ],
            "similar_templates": [],
            "random_templates": [],
        }
        for im, a in zip(images, anomalous.tolist(), strict=True)
    }
    test_file = folder / "test_BENCH_format.json"
    test_file.write_bytes(msgspec.json.encode(test))
    del test

    correct = rng.random(n) < 0.85
    says_yes = anomalous == correct
    kind = rng.random(n)  # < .97 canonical, < .99 free text, else unanswered
    p_yes = np.clip(np.where(anomalous, 0.7, 0.3) + rng.normal(0, 0.2, n), 0, 1).round(4)
    word_idx = rng.integers(0, len(WORDS), (n, 6))
    enc = msgspec.json.Encoder()
    lines = []
    for i in range(n):
        w = " ".join(WORDS[j] for j in word_idx[i])
        think = f"The {w} near region {i % 997} looks {'irregular' if says_yes[i] else 'consistent'} here."
        if kind[i] < 0.97:
            raw = (
                f"<think>{think}</think><location>top left</location><type>scratch</type><answer>Yes</answer>"
                if says_yes[i]
                else f"<think>{think}</think><answer>No</answer>"
            )
            letter = "A" if says_yes[i] else "B"
        elif kind[i] < 0.99:
            raw = f"{'Yes' if says_yes[i] else 'No'}, {think}"
            letter = "A" if says_yes[i] else "B"
        else:
            raw, letter = f"<think>{think}</think>", "E"
        rec = {
            "image": images[i],
            "prompt_style": "iadr1",
            "shots": 0,
            "raw": raw,
            "answer": {"A": "yes", "B": "no"}.get(letter),
            "letter": letter,
            "p_yes": float(p_yes[i]),
            "latency_s": 0.05,
            "error": None,
        }
        lines.append(enc.encode(rec))
    order = rng.permutation(n)
    shards = [folder / "predictions.shard0.jsonl", folder / "predictions.shard1.jsonl"]
    half = n // 2
    for shard, idx in zip(shards, (order[:half], order[half:]), strict=True):
        shard.write_bytes(b"\n".join(lines[j] for j in idx) + b"\n")
    return test_file, shards


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the test file is read in a forked child)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_stages(test_file: Path, shards: list[Path], repeat: int) -> None:
    """Wall and CPU time of each stage of `evaluate`, run one after the other (`evaluate` itself reads a big test
    file in a forked child while it reads the predictions, so its wall time is less than the sum)."""
    from iadr1.eval import metrics as M
    from iadr1.eval import pipeline as P
    from iadr1.eval.load import gc_paused, load_ground_truth, load_predictions, match

    best: dict[str, list[float]] = {}

    def timed(label: str, f: Callable[..., Any], *args: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        out = f(*args)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        prev = best.setdefault(label, [wall, cpu])
        best[label] = [min(prev[0], wall), min(prev[1], cpu)]
        return out

    def metrics(gt: Any, matched: Any, flags: np.ndarray) -> None:
        consistent = np.full(len(gt), -1, np.int8)
        consistent[matched.has_prediction] = flags[matched.pred_index[matched.has_prediction]]
        loc, typ, _ = P._type_location(gt, matched)
        rng = np.random.default_rng(0)
        args = (gt, matched, consistent, loc, typ, 1000, rng, M.score_order(matched.p_yes))
        P._grouped(gt.dataset_idx, len(gt.datasets), *args)
        P._grouped(gt.class_idx, len(gt.classes), *args)

    for _ in range(repeat):
        with gc_paused():
            gt = timed("read the test file", load_ground_truth, [test_file])
            preds = timed("read the predictions", load_predictions, shards)
            matched = timed("match", match, gt, preds)
            flags = timed("consistency", M.consistency_flags, preds.raws)
            del preds
            timed("metrics, AUROC/AUPR, bootstrap", metrics, gt, matched, flags)
            del gt, matched, flags
    for label, (wall, cpu) in best.items():
        print(f"  {label:32s} wall {wall:.2f} s, CPU {cpu:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--keep", type=Path, default=None, help="write (or reuse) the data in this folder")
    ap.add_argument("--repeat", type=int, default=3, help="time evaluate this many times; the best counts")
    ap.add_argument("--stages", action="store_true", help="also time each stage of evaluate on its own")
    args = ap.parse_args()

    from iadr1.eval.pipeline import evaluate
    from iadr1.eval.report import write_all

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        test_file = folder / "test_BENCH_format.json"
        shards = sorted(folder.glob("predictions.shard*.jsonl"))
        if not (test_file.exists() and shards):
            t = time.perf_counter()
            test_file, shards = make_data(folder, args.n, args.classes)
            print(f"data written in {time.perf_counter() - t:.1f} s to {folder}")
        sizes = (test_file.stat().st_size + sum(s.stat().st_size for s in shards)) / 1e6
        times, cpu = [], []
        for i in range(args.repeat):
            t, c = time.perf_counter(), _cpu()
            result = evaluate([test_file], shards, n_boot=1000, seed=0)
            times.append(time.perf_counter() - t)
            cpu.append(_cpu() - c)
            if i + 1 < args.repeat:
                del result  # freed here, not in the next run's time
        t = time.perf_counter()
        write_all(result, Path(tmp) / "out", gallery_max=300)
        t_write = time.perf_counter() - t
        avg = result.average
        print(
            f"evaluate: {result.run['n_predictions']:,} predictions, {len(result.gt.classes)} classes, "
            f"{sizes:.0f} MB read: best {min(times):.2f} s of {args.repeat} (all: "
            f"{', '.join(f'{x:.2f}' for x in times)}); goal <= 3 s"
        )
        # On a shared machine wall time includes waiting for a core; CPU time is what eval itself used.
        print(
            f"evaluate CPU time (both cores, the forked test-file reader included): best {min(cpu):.2f} s; "
            f"load average now {os.getloadavg()[0]:.1f}"
        )
        print(f"write outputs (json, csv, 2 plots, html with 300-card gallery): {t_write:.2f} s")
        print(
            f"check: balanced accuracy {avg['balanced_accuracy']:.2f}, consistency {avg['consistency_rate']:.2f}, "
            f"AUROC {avg['auroc']:.2f}"
        )
        if args.stages:
            del result
            print(f"stages of evaluate, best of {args.repeat}:")
            time_stages(test_file, shards, args.repeat)


if __name__ == "__main__":
    main()
