"""`iadr1 eval` (score predictions against test files) and `iadr1 eval compare` (runs side by side)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, Field, ValidationError
from typer.core import TyperGroup

from iadr1.cli._options import field_help, option_error, renamed
from iadr1.errors import ConfigError

# Options that take several values: `--predictions a.jsonl b.jsonl` is read as `--predictions a.jsonl
# --predictions b.jsonl` (click options take one value per flag; shells expand `shard_*.jsonl` into a list).
_MULTI = frozenset(
    {"--test-file", "-t", "--predictions", "-p", "--annotations", "--calibrate-on", "--calibrate-test-file"}
)


def expand_multi_values(args: list[str], commands: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Repeat a multi-value option before each of its extra values: `-p a b -o d` -> `-p a -p b -o d`."""
    if args and args[0] in commands:
        return list(args)
    out: list[str] = []
    opt: str | None = None
    has_value = False
    for i, a in enumerate(args):
        if a == "--":
            out.extend(args[i:])
            break
        if a.startswith("-") and a != "-":
            name = a.split("=", 1)[0]
            opt = name if name in _MULTI else None
            has_value = "=" in a
            out.append(a)
        elif opt is not None and has_value:
            out += [opt, a]
        else:
            out.append(a)
            has_value = True
    return out


class _EvalGroup(TyperGroup):
    # typer >= 0.29 runs on its own vendored click: the context type is not the `click` package's.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_values(args, frozenset(self.commands)))


app = typer.Typer(
    cls=_EvalGroup,
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class EvalOptions(BaseModel):
    """Checked options of `iadr1 eval`."""

    test_files: list[Path] = Field(
        min_length=1, description="Benchmark test file(s), test_<NAME>_format.json. Repeat or list several."
    )
    predictions: list[Path] = Field(
        min_length=1,
        description="Predictions: our JSONL (iadr1 infer; shards allowed) or the original's answers JSON. Several "
        "allowed.",
    )
    out: Path = Field(description="Folder for metrics.json, accuracy.csv, plots, report.html.")
    annotations: list[Path] = Field(
        [], description="Ground-truth defect location/type: JSON/JSONL records {image, location, type}."
    )
    image_root: Path | None = Field(
        None, description="Folder the test image paths are relative to (for the report's thumbnails)."
    )
    compat: bool = Field(
        False, description="Label images as the original code does: normal when 'good' is in the path."
    )
    bootstrap: int = Field(1000, ge=0, le=1_000_000, description="Bootstrap replicates for 95% intervals (0: none).")
    seed: int = Field(0, description="Seed of the bootstrap.")
    name: str | None = Field(None, description="Run name (shown in the report and by `eval compare`).")
    gallery_max: int = Field(300, ge=0, description="Most misjudged images shown in report.html.")
    plots: bool = Field(True, description="Write the heatmap and per-class PNGs.")
    target_miss: list[float] = Field(
        [],
        description="An operating point: the decision-score threshold at which at most this share of defects is "
        "missed (a fraction, e.g. 0.01), and the Overkill there, per dataset and overall. Repeatable.",
    )
    calibrate_on: list[Path] = Field(
        [], description="Predictions of a validation set: choose the --target-miss thresholds there."
    )
    calibrate_test_file: list[Path] = Field(
        [], description="Test file(s) labelling --calibrate-on (default: --test-file)."
    )


@app.callback()
def eval_(
    ctx: typer.Context,
    test_file: list[Path] = typer.Option(
        None,
        "--test-file",
        "-t",
        help=field_help(EvalOptions, "test_files"),
    ),
    predictions: list[Path] = typer.Option(
        None,
        "--predictions",
        "-p",
        help=field_help(EvalOptions, "predictions"),
    ),
    out: Path = typer.Option(None, "--out", "--output-dir", "-o", help=field_help(EvalOptions, "out")),
    annotations: list[Path] = typer.Option(
        None,
        "--annotations",
        help=field_help(EvalOptions, "annotations"),
    ),
    image_root: Path = typer.Option(
        None,
        "--image-root",
        help=field_help(EvalOptions, "image_root"),
    ),
    compat: bool = typer.Option(False, "--compat-labels", help=field_help(EvalOptions, "compat")),
    compat_old: bool | None = typer.Option(None, "--compat", hidden=True),  # the 0.1 spelling
    bootstrap: int = typer.Option(1000, "--bootstrap", help=field_help(EvalOptions, "bootstrap")),
    seed: int = typer.Option(0, "--seed", help=field_help(EvalOptions, "seed")),
    name: str = typer.Option(None, "--name", help=field_help(EvalOptions, "name")),
    gallery_max: int = typer.Option(300, "--gallery-max", help=field_help(EvalOptions, "gallery_max")),
    plots: bool = typer.Option(True, "--plots/--no-plots", help=field_help(EvalOptions, "plots")),
    target_miss: list[float] = typer.Option(None, "--target-miss", help=field_help(EvalOptions, "target_miss")),
    calibrate_on: list[Path] = typer.Option(None, "--calibrate-on", help=field_help(EvalOptions, "calibrate_on")),
    calibrate_test_file: list[Path] = typer.Option(
        None, "--calibrate-test-file", help=field_help(EvalOptions, "calibrate_test_file")
    ),
) -> None:
    """Score predictions: balanced accuracy, Overkill and Miss (as the paper) and more, per dataset and class.

    Also: `iadr1 eval compare DIR1 DIR2 ...` prints the paper-style table of several runs.
    """
    if ctx.invoked_subcommand is not None:
        return
    compat = bool(renamed(compat, compat_old or None, "--compat", "--compat-labels"))
    if not test_file and not predictions:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    try:
        opts = EvalOptions(
            test_files=test_file or [],
            predictions=predictions or [],
            out=out if out is not None else Path(""),
            annotations=annotations or [],
            image_root=image_root,
            compat=compat,
            bootstrap=bootstrap,
            seed=seed,
            name=name,
            gallery_max=gallery_max,
            plots=plots,
            target_miss=target_miss or [],
            calibrate_on=calibrate_on or [],
            calibrate_test_file=calibrate_test_file or [],
        )
    except ValidationError as e:
        raise option_error(e, {"test_files": "--test-file", "compat": "--compat-labels"}) from None
    if out is None:
        raise ConfigError("--out DIR is required")
    if (opts.calibrate_on or opts.calibrate_test_file) and not opts.target_miss:
        raise ConfigError("--calibrate-on chooses the --target-miss thresholds: give --target-miss too")
    if opts.calibrate_test_file and not opts.calibrate_on:
        raise ConfigError("--calibrate-test-file labels --calibrate-on predictions: give --calibrate-on too")
    _run(opts)


def _run(opts: EvalOptions) -> None:
    from rich.console import Console

    from iadr1.eval.pipeline import evaluate
    from iadr1.eval.report import mmad_table, operating_table, rich_table, species_table, write_all

    console = Console()
    t0 = time.perf_counter()
    result = evaluate(
        opts.test_files,
        opts.predictions,
        compat=opts.compat,
        annotations=opts.annotations,
        n_boot=opts.bootstrap,
        seed=opts.seed,
        name=opts.name,
        target_miss=opts.target_miss,
        calibrate_on=opts.calibrate_on,
        calibrate_test_files=opts.calibrate_test_file,
    )
    paths = write_all(result, opts.out, image_root=opts.image_root, gallery_max=opts.gallery_max, plots=opts.plots)
    from rich.markup import escape

    console.print(rich_table(result))
    species = species_table(result)
    if species is not None:
        console.print(species)
    if result.operating is not None:
        console.print(operating_table(result))
    if result.mmad is not None:
        console.print(mmad_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


@app.command("compare")
def compare_cmd(
    folders: list[Path] = typer.Argument(..., help="Evaluation folders (each with a metrics.json)."),
    metric: str = typer.Option("balanced_accuracy", "--metric", help="Metric to tabulate (a key of metrics.json)."),
    names: list[str] = typer.Option(None, "--name", help="Run names, one per folder, in order."),
    out: Path = typer.Option(Path("."), "--out", "--output-dir", "-o", help="Folder for compare.md and compare.csv."),
    digits: int = typer.Option(1, "--digits", help="Decimals in the table and the markdown."),
    baseline: str = typer.Option(
        None,
        "--baseline",
        metavar="NAME_OR_INDEX",
        help="Also show each run's balanced accuracy and AUROC beside its change against this run (a run name, "
        "a folder, or an index, 0 the first); shown on its own, against the first folder, when some run's images "
        "were perturbed (iadr1 infer --perturb).",
    ),
) -> None:
    """Print runs x datasets (+ Average) as in the paper; write it as compare.md and compare.csv. With a baseline
    (or perturbed runs), also each run's balanced accuracy and AUROC and their change against the baseline."""
    from rich.console import Console

    from iadr1.data.io import atomic_write_text
    from iadr1.eval.compare import compare, rich_delta_table, rich_table, to_csv, to_markdown

    table = compare(list(folders), metric=metric, names=names or None, baseline=baseline)
    console = Console()
    console.print(rich_table(table, digits))
    if table.delta:
        console.print(rich_delta_table(table, digits))
    md = atomic_write_text(out / "compare.md", to_markdown(table, digits))
    csv = atomic_write_text(out / "compare.csv", to_csv(table))
    console.print(f"wrote {md}, {csv}", highlight=False, soft_wrap=True)
