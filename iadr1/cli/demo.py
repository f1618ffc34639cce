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
    quick: bool = typer.Option(False, "--quick", help="The shortened demo of the test suite (about 90 s)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the model and training."),
    n_train: int | None = typer.Option(None, "--n-train", help="Synthetic training images."),
    grpo_steps: int | None = typer.Option(None, "--grpo-steps", help="SC-GRPO optimizer steps."),
    grpo_prompt: str | None = typer.Option(
        None, "--grpo-prompt", help="sft (default: the PA-SFT question) or published (the paper's GRPO prompt)."
    ),
    warmup_epochs: int | None = typer.Option(
        None, "--warmup-epochs", help="Vision warm-up epochs before PA-SFT (0: none; default 4)."
    ),
    defects: str | None = typer.Option(
        None,
        "--defects",
        help="Comma-separated defect kinds to draw, or 'all' (default: the six a tiny tower sees; docs/demo.md).",
    ),
) -> None:
    """Build data and a tiny model (its vision tower warmed up on the defect masks), train PA-SFT then SC-GRPO,
    and write OUT/report.{json,md,html}."""
    from pydantic import ValidationError
    from rich.console import Console

    from iadr1.cli._options import option_error
    from iadr1.data.synthetic import SPECIES
    from iadr1.demo import QUICK, DemoConfig, run_demo

    options = {**(QUICK if quick else {}), "out": out, "model": model, "seed": seed}
    if defects is not None:
        options["defects"] = SPECIES if defects.strip() == "all" else tuple(d.strip() for d in defects.split(","))
    for key, value in (
        ("n_train", n_train),
        ("grpo_steps", grpo_steps),
        ("grpo_prompt", grpo_prompt),
        ("warmup_epochs", warmup_epochs),
    ):
        if value is not None:
            options[key] = value
    try:
        cfg = DemoConfig(**options)
    except ValidationError as e:
        raise option_error(e) from None
    run_demo(cfg, Console())
