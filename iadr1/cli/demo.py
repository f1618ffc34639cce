"""`iadr1 demo`: the first command to run after installing. Synthetic data, a tiny model, PA-SFT then SC-GRPO,
evaluated before and after each stage on held-out images (docs/demo.md has the figures)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Output folder (data, models, report)."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Start from this local checkpoint instead of a random tiny Qwen2-VL."
    ),
    quick: bool = typer.Option(False, "--quick", help="The shortened demo of the test suite (a few minutes)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the model and training."),
    n_train: int | None = typer.Option(None, "--n-train", help="Synthetic training images."),
    grpo_steps: int | None = typer.Option(None, "--grpo-steps", help="SC-GRPO optimizer steps."),
    grpo_prompt: str | None = typer.Option(
        None, "--grpo-prompt", help="sft (default: the PA-SFT question) or published (the paper's GRPO prompt)."
    ),
) -> None:
    """Build data and a tiny model, train PA-SFT then SC-GRPO, and write OUT/report.{json,md,html}."""
    from rich.console import Console

    from iadr1.demo import QUICK, DemoConfig, run_demo

    options = {**(QUICK if quick else {}), "out": out, "model": model, "seed": seed}
    for key, value in (("n_train", n_train), ("grpo_steps", grpo_steps), ("grpo_prompt", grpo_prompt)):
        if value is not None:
            options[key] = value
    run_demo(DemoConfig(**options), Console())
