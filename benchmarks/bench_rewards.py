"""Throughput of the published SC-GRPO rewards (accuracy + consistency) on realistic completions.

    python benchmarks/bench_rewards.py [--n 100000] [--batch 24] [--repeat 3]

Builds `n` completions of about 300 characters in TRL's conversational form: half for normal images
(mostly `<think>…</think><answer>No</answer>`), half for defects with types that are exact, synonyms from
the same or another category, misspelt (a pool of a few hundred typos, as a sampling model repeats its
own), group terms or off-table words, and locations in many phrasings; a few percent are malformed
(newlines inside tags, spaces between tags, missing tags, wrong answers). Calls both rewards batch by
batch, as the GRPO trainer does, and prints completions per second on one core: cold (empty caches, first
pass) and warm (best of `repeat`). Goal: >= 100,000/s for the two rewards together.
"""

from __future__ import annotations

import argparse
import random
import time

from iadr1.rewards import CATEGORIES, accuracy_reward, consistency_reward
from iadr1.rewards.defect_types import _lookup_cached, _score_cached
from iadr1.rewards.location import _score_cached as _location_cached
from iadr1.rewards.solution import _parse_cached

GRID = {
    "top left": ["top left", "upper-left corner", "Top-Left", "upper left region", "top left corner"],
    "top": ["top", "upper middle", "top center", "upper edge", "top edge"],
    "top right": ["top right", "upper-right", "Top Right corner", "upper right area"],
    "left": ["left", "middle left", "left side", "left edge", "center-left"],
    "center": ["center", "middle", "central area", "centre", "the middle of the part"],
    "right": ["right", "middle right", "right side", "right edge"],
    "bottom left": ["bottom left", "lower-left", "Bottom-left corner", "lower left area"],
    "bottom": ["bottom", "lower middle", "bottom edge", "bottom center"],
    "bottom right": ["bottom right", "lower right", "Bottom-Right corner"],
}
VAGUE = ["scattered across the surface", "whole image", "multiple areas", "along the edge", "near the rim"]
OFF_TABLE = ["defect", "anomaly", "crack", "bubble", "discoloration", "fold", "glue", "misprint", "bent lead"]
GROUP_TERMS = ["surface anomaly", "structural anomalies", "Surface anomalies"]
THOUGHTS = [
    "The query image shows {obj} with a uniform texture and consistent color. Comparing it with a typical "
    "normal sample, I look for scratches, holes, stains, deformation or missing parts. ",
    "Inspecting the {obj} carefully: edges are straight, the surface is even and no foreign material is "
    "visible. Lighting is homogeneous across the image. ",
    "I examine the {obj} region by region, from the top left to the bottom right, checking texture, shape "
    "and color against what a defect-free part looks like. ",
]
OBJECTS = ["metal nut", "bottle", "carpet", "wood panel", "circuit board", "capsule", "screw", "tile"]
ENDINGS = ["No anomaly is visible.", "A small irregular mark is present.", "It looks fine."]


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(len(word))
    op = rng.choice("dsti")
    if op == "d":
        return word[:i] + word[i + 1 :]
    if op == "s":
        return word[:i] + rng.choice("aeioutrsnl") + word[i + 1 :]
    if op == "t" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + rng.choice("aeioutrsnl") + word[i:]


def defect_reply(think: str, location: str, type_: str, answer: str, sep: str = "") -> str:
    parts = [f"<think>{think}</think>", f"<location>{location}</location>", f"<type>{type_}</type>"]
    return sep.join([*parts, f"<answer>{answer}</answer>"])


def make_completions(n: int, seed: int = 0) -> tuple[list[list[dict[str, str]]], list[str]]:
    """`n` realistic (completion, solution) pairs; see the module docstring."""
    rng = random.Random(seed)
    keywords = [(kw, cat) for cat, (_, kws) in CATEGORIES.items() for kw in (cat, *kws)]
    typo_pool = [_typo(rng, rng.choice(keywords)[0]) for _ in range(300)]
    completions, solutions = [], []
    for i in range(n):
        obj = rng.choice(OBJECTS)
        think = rng.choice(THOUGHTS).format(obj=obj)
        think += rng.choice(ENDINGS)
        think = (think * 2)[: rng.randint(180, 260)]
        if i % 2 == 0:  # normal image
            sol = "<answer>No</answer>"
            r = rng.random()
            if r < 0.85:
                text = f"<think>{think}</think><answer>{rng.choice(['No', 'No', 'no', 'No.'])}</answer>"
            elif r < 0.93:  # false alarm
                loc = rng.choice(rng.choice(list(GRID.values())))
                text = defect_reply(think, loc, "stain", "Yes")
            else:  # malformed
                text = rng.choice(
                    [
                        f"<think>{think}</think>\n<answer>No</answer>",
                        f"<think>\n{think}\n</think><answer>No</answer>",
                        f"{think} No.",
                    ]
                )
        else:  # defective image
            gt_cell = rng.choice(list(GRID))
            gt_kw, gt_cat = rng.choice(keywords)
            sol = f"<location>{gt_cell}</location><type>{gt_kw}</type><answer>Yes</answer>"
            r = rng.random()
            if r < 0.45:
                pred_type = gt_kw
            elif r < 0.65:
                pred_type = rng.choice([kw for kw, c in keywords if c == gt_cat])
            elif r < 0.75:
                pred_type = rng.choice(keywords)[0]
            elif r < 0.87:
                pred_type = rng.choice(typo_pool)
            elif r < 0.93:
                pred_type = rng.choice(GROUP_TERMS)
            else:
                pred_type = rng.choice(OFF_TABLE)
            cell = gt_cell if rng.random() < 0.6 else rng.choice(list(GRID))
            loc = rng.choice(GRID[cell]) if rng.random() < 0.9 else rng.choice(VAGUE)
            answer = "Yes" if rng.random() < 0.85 else "No"
            r = rng.random()
            if r < 0.92:
                text = defect_reply(think, loc, pred_type, answer)
            elif r < 0.96:
                text = defect_reply(think, loc, pred_type, answer, sep=" ")
            else:
                text = f"<think>{think}</think><answer>{answer}</answer>"
        completions.append([{"role": "assistant", "content": text}])
        solutions.append(sol)
    return completions, solutions


def clear_caches() -> None:
    for cache in (_lookup_cached, _score_cached, _location_cached, _parse_cached):
        cache.cache_clear()


def run(completions: list, solutions: list[str], batch: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to score everything. CPU time is what one core spends, whatever else the
    machine runs; wall time is shown too."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(0, len(completions), batch):
        c, s = completions[i : i + batch], solutions[i : i + batch]
        accuracy_reward(c, s)
        consistency_reward(c, s)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=24, help="completions per reward call (6 prompts × G=4)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    completions, solutions = make_completions(args.n)
    mean_len = sum(len(c[0]["content"]) for c in completions) / len(completions)
    clear_caches()
    cold = run(completions, solutions, args.batch)
    warm = min(run(completions, solutions, args.batch) for _ in range(args.repeat))
    n = args.n
    print(f"{n} completions, {mean_len:.0f} chars on average, batches of {args.batch}")
    for label, (cpu, wall) in [("cold caches", cold), ("warm", warm)]:
        rate = f"{n / cpu:,.0f} completions/s per CPU core ({n / wall:,.0f} wall)"
        print(f"accuracy + consistency, {label:11}: {rate}")
    print("goal: >= 100,000 completions/s on one core")


if __name__ == "__main__":
    main()
