"""`iadr1 build-data`: PA-SFT / SC-GRPO training files from meta.json + annotations, or the embedded synthetic
dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from iadr1.cli._options import field_help, option_error, renamed
from iadr1.cli._progress import ProgressBars
from iadr1.data.build import BuildConfig
from iadr1.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from iadr1.data.build import BuildResult

_SHOWN_PROBLEMS = 10


def build_data(
    meta: Path | None = typer.Option(None, "--meta", "-m", help="meta.json listing the images (AnomalyCLIP style)."),
    annotations: Path | None = typer.Option(
        None, "--annotations", "-a", help="Annotations (JSON or JSONL): per image reasoning, location, type."
    ),
    annotate: str | None = typer.Option(
        None,
        "--annotate",
        help="Make the annotations first: `template` runs `iadr1 annotate` (masks -> location, defect names -> type, "
        "template reasoning) into OUT/annotations.jsonl, then builds from it. Instead of --annotations.",
    ),
    types: Path | None = typer.Option(
        None, "--types", help="With --annotate: YAML/JSON file extending the defect name -> category table."
    ),
    image_root: Path | None = typer.Option(
        None,
        "--image-root",
        help="Folder the meta.json paths are relative to (default: the meta.json's folder).",
    ),
    out: Path | None = typer.Option(
        None, "--out", "--output-dir", "-o", help="Output folder for the training files and report."
    ),
    shots: list[int] = typer.Option([0], "--shots", "-k", help=field_help(BuildConfig, "shots")),
    seed: int = typer.Option(0, "--seed", help=field_help(BuildConfig, "seed")),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help=field_help(BuildConfig, "val_fraction")),
    split: list[str] = typer.Option(
        [],
        "--split",
        help=field_help(BuildConfig, "splits"),
    ),
    test_file: list[Path] = typer.Option(
        [],
        "--test-file",
        "-t",
        help="A benchmark test file (repeatable): its images stay out of training data, and the report looks for "
        "copies of them among the training images.",
    ),
    allow_test: bool = typer.Option(
        False,
        "--allow-test",
        help=field_help(BuildConfig, "allow_test"),
    ),
    strict: bool = typer.Option(False, "--strict", help=field_help(BuildConfig, "strict")),
    workers: int | None = typer.Option(None, "--workers", min=1, help=field_help(BuildConfig, "workers")),
    compat: bool = typer.Option(False, "--compat-prompt", help=field_help(BuildConfig, "compat")),
    compat_old: bool | None = typer.Option(None, "--compat", hidden=True),  # the 0.1 spelling
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="Write the embedded synthetic demo dataset into this folder instead."
    ),
    n_train: int = typer.Option(200, "--n-train", help="Synthetic: training images (spread over the classes)."),
    n_test: int = typer.Option(80, "--n-test", help="Synthetic: held-out test images."),
    size: int = typer.Option(96, "--size", help="Synthetic: image side in pixels."),
    defect_rate: float = typer.Option(0.5, "--defect-rate", help="Synthetic: fraction of defective images."),
) -> None:
    """Write PA-SFT and SC-GRPO records (zero/one-shot, optional validation split) and a JSON report.

    Every image is opened once; unreadable, corrupt or missing images and malformed annotations are skipped
    and listed (or, with --strict, fail the run). Test images stay out of training data unless asked for; the
    report lists training images that are copies of test images. `--synthetic OUT` instead writes a complete
    small demo dataset.
    """
    compat = bool(renamed(compat, compat_old or None, "--compat", "--compat-prompt"))
    from rich.console import Console

    console = Console()
    if synthetic is not None:
        if meta is not None or annotations is not None or out is not None:
            raise ConfigError("--synthetic writes its own meta, annotations and files: drop --meta/--annotations/--out")
        ignored = [
            name
            for name, given in (
                ("--image-root", image_root is not None), ("--shots", shots != [0]), ("--split", bool(split)),
                ("--test-file", bool(test_file)), ("--allow-test", allow_test), ("--strict", strict),
                ("--workers", workers is not None), ("--compat-prompt", compat),
            )
            if given
        ]  # fmt: skip
        if ignored:  # the synthetic build has its own settings: an option it would ignore is an error, not silent
            raise ConfigError(f"--synthetic does not take {', '.join(ignored)}")
        _synthetic(console, synthetic, n_train, n_test, size, defect_rate, seed, val_fraction)
        return
    if meta is None or out is None:
        raise ConfigError("give --meta and --out (and --annotations or --annotate template), or --synthetic OUT_DIR")
    if annotate is not None and annotate != "template":
        raise ConfigError(
            f"--annotate {annotate!r}: only `template` runs here; for a teacher model run `iadr1 annotate --reasoner "
            "model ...` and pass its file with --annotations"
        )
    if annotate is not None and annotations is not None:
        raise ConfigError("give --annotations FILE or --annotate template, not both")
    if types is not None and annotate is None:
        raise ConfigError("--types is read by the annotator: add --annotate template (or run `iadr1 annotate`)")

    from pydantic import ValidationError

    from iadr1.data.build import BuildConfig
    from iadr1.data.build import build_data as run

    try:
        config = BuildConfig(
            shots=shots,
            seed=seed,
            val_fraction=val_fraction,
            strict=strict,
            workers=workers,
            compat=compat,
            splits=split or None,
            allow_test=allow_test,
        )
    except ValidationError as e:
        raise option_error(e, {"splits": "--split", "compat": "--compat-prompt"}) from None
    root = image_root if image_root is not None else meta.parent
    if annotate is not None:
        annotations = _annotate_first(console, meta, root, out, seed, types)
    with ProgressBars(console, transient=True) as on_progress:
        result = run(meta, annotations, root, out, config, on_progress=on_progress, test_files=test_file)
    render_summary(console, result)


def _annotate_first(console: Console, meta: Path, root: Path, out: Path, seed: int, types: Path | None) -> Path:
    """`iadr1 annotate --reasoner template` into OUT/annotations.jsonl (resumed when its settings match)."""
    from iadr1.cli.annotate import render_summary as render_annotations
    from iadr1.data.annotate.run import AnnotateConfig
    from iadr1.data.annotate.run import annotate as run_annotate

    cfg = AnnotateConfig(meta=meta, image_root=root, out=out / "annotations.jsonl", seed=seed, types=types)
    with ProgressBars(console, transient=True) as on_progress:
        result = run_annotate(cfg, on_progress=on_progress)
    render_annotations(console, result)
    return result.annotations


def _synthetic(
    console: Console,
    out_dir: Path,
    n_train: int,
    n_test: int,
    size: int,
    defect_rate: float,
    seed: int,
    val: float,
) -> None:
    from iadr1.data.synthetic import make_dataset

    with ProgressBars(console, transient=True) as on_progress:
        ds = make_dataset(
            out_dir,
            n_train=n_train,
            n_test=n_test,
            size=size,
            defect_rate=defect_rate,
            seed=seed,
            val_fraction=val,
            on_progress=on_progress,
        )
    from rich.table import Table

    table = Table(title=f"synthetic dataset {ds.dataset} in {ds.root}", show_header=False)
    for key, value in ds.counts.items():
        table.add_row(key.replace("_", " "), str(value))
    for label, path in (
        ("image root", ds.image_root), ("meta", ds.meta), ("test file", ds.test_file),
        ("annotations", ds.annotations), ("PA-SFT", ds.sft_file), ("PA-SFT 1-shot", ds.sft_1shot_file),
        ("SC-GRPO", ds.grpo_file), ("SC-GRPO 1-shot", ds.grpo_1shot_file), ("PA-SFT val", ds.sft_val_file),
        ("SC-GRPO val", ds.grpo_val_file), ("report", ds.report),
    ):  # fmt: skip
        if path is not None:
            table.add_row(label, path.relative_to(ds.root).as_posix())  # short: the root is in the title
    console.print(table)


def render_summary(console: Console, result: BuildResult) -> None:
    """Tables: images per class, problems per kind (with the first few listed), files written."""
    from rich.table import Table

    from iadr1.data.annotations import PROBLEM_KINDS

    t = Table(title="images")
    for col in ("class", "normal", "anomalous", "skipped"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for cls, c in result.per_class.items():
        t.add_row(cls, str(c["normal"]), str(c["anomalous"]), f"[red]{c['skipped']}[/]" if c["skipped"] else "0")
    console.print(t)
    if result.problems:
        p = Table(title=f"problems ({len(result.problems)}, skipped and recorded)")
        p.add_column("kind")
        p.add_column("count", justify="right")
        p.add_column("meaning")
        for kind, n in result.report["problem_counts"].items():
            p.add_row(f"[red]{kind}[/]", str(n), PROBLEM_KINDS.get(kind, ""))
        console.print(p)
        for pr in result.problems[:_SHOWN_PROBLEMS]:
            console.print(f"  [red]{pr.kind}[/] {pr.detail}", highlight=False, soft_wrap=True)
        if len(result.problems) > _SHOWN_PROBLEMS:
            console.print(f"  ... and {len(result.problems) - _SHOWN_PROBLEMS} more in the report")
    _render_overlap(console, result.report["overlap"])
    if result.counts.get("test_left_out"):
        console.print(f"left out {result.counts['test_left_out']} test images (training on them: --allow-test)")
    for w in result.warnings:
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    f = Table(title="files written")
    f.add_column("file")
    f.add_column("records", justify="right")
    for out in result.files.values():
        f.add_row(str(out.path), str(out.records))
    console.print(f)
    console.print(f"report: {result.report_path}", highlight=False)


def _render_overlap(console: Console, overlap: dict) -> None:
    """One line when the training images hold no copy of a test image, else the pairs (first few)."""
    if not overlap["test_images"]:
        return
    exact, near = overlap["exact"], overlap["near"]
    compared = f"{overlap['training_images']} training x {overlap['test_images']} test images"
    if not exact["count"] and not near["count"]:
        console.print(f"overlap with the test images: none ({compared})", highlight=False)
        return
    console.print(
        f"[bold yellow]overlap with the test images[/] ({compared}): {exact['count']} exact copies, "
        f"{near['count']} near copies (perceptual hash within {overlap['max_distance']} of 128 bits)",
        highlight=False,
    )
    shown = [("exact", p["train"], p["test"]) for p in exact["pairs"]]
    shown += [(f"near ({p['distance']})", p["train"], p["test"]) for p in near["pairs"]]
    for kind, train, test in shown[:_SHOWN_PROBLEMS]:
        console.print(f"  [yellow]{kind}[/] {train} = test {test}", highlight=False, soft_wrap=True)
    if exact["count"] + near["count"] > _SHOWN_PROBLEMS:
        console.print(f"  ... and {exact['count'] + near['count'] - _SHOWN_PROBLEMS} more in the report")
