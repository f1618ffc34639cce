"""`iadr1 demo`: the first command to run after installing. Synthetic data, a tiny model, PA-SFT then SC-GRPO,
evaluated before and after each stage on held-out images (docs/demo.md has the figures). The demo itself is
`iadr1.demo.run_demo`; this command parses the options and draws its progress and results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from iadr1.cli._options import field_help
from iadr1.demo import DemoConfig

if TYPE_CHECKING:
    from rich.table import Table


def demo(
    out: Path | None = typer.Option(
        None, "--out", "--output-dir", "-o", help="Output folder (data, models, report; default demo_out)."
    ),
    model: Path | None = typer.Option(None, "--model", "-m", help=field_help(DemoConfig, "model")),
    quick: bool = typer.Option(False, "--quick", help="The shortened demo of the test suite (about 2 minutes)."),
    seed: int | None = typer.Option(None, "--seed", help=field_help(DemoConfig, "seed", with_default=True)),
    family: str | None = typer.Option(None, "--family", help=field_help(DemoConfig, "family", with_default=True)),
    n_train: int | None = typer.Option(None, "--n-train", help=field_help(DemoConfig, "n_train", with_default=True)),
    grpo_steps: int | None = typer.Option(None, "--grpo-steps", help="SC-GRPO optimizer steps (recipe demo: 60)."),
    grpo_prompt: str | None = typer.Option(
        None, "--grpo-prompt", help=field_help(DemoConfig, "grpo_prompt", with_default=True)
    ),
    warmup_epochs: int | None = typer.Option(
        None, "--warmup-epochs", help=field_help(DemoConfig, "warmup_epochs", with_default=True)
    ),
    defects: str | None = typer.Option(
        None,
        "--defects",
        help="Comma-separated defect kinds to draw, or 'all' (default: the six a tiny tower sees; docs/demo.md).",
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file of DemoConfig options; flags override it."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any DemoConfig option (YAML value), e.g. --set n_test=400."
    ),
) -> None:
    """Build data and a tiny model (its vision tower warmed up on the defect masks), train PA-SFT then SC-GRPO
    (recipe `demo`), and write OUT/report.{json,md,html}."""
    import sys

    from pydantic import ValidationError
    from rich.console import Console

    from iadr1.cli._options import option_error
    from iadr1.cli._progress import ProgressBars
    from iadr1.config import parse_set_options, read_yaml
    from iadr1.data.synthetic import SPECIES
    from iadr1.demo import QUICK, DemoConfig, run_demo

    # Lowest first: the QUICK preset, a config file, --set, then the named options (iadr1.config's order).
    options: dict[str, Any] = {}
    for layer in (QUICK if quick else {}, read_yaml(config) if config else {}, parse_set_options(set_)):
        for key, value in layer.items():
            if key in ("sft", "grpo") and isinstance(value, dict):  # training overrides merge key by key
                options[key] = {**(options.get(key) or {}), **value}
            else:
                options[key] = value
    options.update({k: v for k, v in (("out", out), ("model", model), ("seed", seed)) if v is not None})
    if defects is not None:
        options["defects"] = SPECIES if defects.strip() == "all" else tuple(d.strip() for d in defects.split(","))
    if grpo_steps is not None:
        options["grpo"] = {**(options.get("grpo") or {}), "max_steps": grpo_steps}
    named = (("n_train", n_train), ("grpo_prompt", grpo_prompt), ("warmup_epochs", warmup_epochs), ("family", family))
    for key, value in named:
        if value is not None:
            options[key] = value
    try:
        cfg = DemoConfig(**options)
    except ValidationError as e:
        raise option_error(e, {"sft": "--set sft=", "grpo": "--set grpo="}) from None
    # Pinned to the real stdout: while a trainer runs, the demo hides what it prints there.
    console = Console(file=sys.stdout)
    with ProgressBars(console) as on_progress:
        report = run_demo(cfg, on_progress, lambda text: console.print(text, highlight=False, soft_wrap=True))
    console.print(before_after_table(report))


def before_after_table(report: dict[str, Any]) -> Table:
    """The rich table of the demo's TABLE_METRICS by stage."""
    from rich.table import Table

    from iadr1.demo import TABLE_METRICS

    t = Table(title="iadr1 demo: held-out synthetic test images")
    t.add_column("metric")
    for s in report["stages"]:
        t.add_column(s, justify="right")
    for key, label in TABLE_METRICS:
        values = [m.get(key) for m in report["stages"].values()]
        t.add_row(label, *("-" if v is None else f"{v:.1f}" for v in values))
    return t
