"""`iadr1 convert`: a dataset on disk -> meta.json -> benchmark test file (either step alone, or both in one call)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import BaseModel, Field

from iadr1.cli._options import field_help, renamed

if TYPE_CHECKING:
    from rich.console import Console

LAYOUT_CHOICES = ("mvtec", "visa", "mpdd", "dtd", "sdd", "dagm", "folder")


class ConvertOptions(BaseModel):
    """The options of `iadr1 convert`; the field descriptions are the `--help` texts."""

    root: Path = Field(description="Data root: the dataset folder (folder layout: its parent).")
    layout: str | None = Field(
        None, description=f"Layout to scan: {', '.join(LAYOUT_CHOICES)}. Omit to read --meta instead."
    )
    dataset: str | None = Field(
        None,
        description="Dataset name that keys start with. Folder layout: the folder under ROOT to scan (required). "
        "Other layouts: defaults to the name of ROOT.",
    )
    meta: Path | None = Field(
        None, description="meta.json: written when --layout is given, else read (AnomalyCLIP format)."
    )
    test_file: Path | None = Field(None, description="Benchmark test file to write (JSON).")
    templates: int = Field(4, ge=0, description="K: reference templates per image (0: none).")
    seed: int = Field(0, description="Seed of the random templates and of the --train-share draw.")
    similar: bool = Field(True, description="Compute similar_templates (reads every test and reference image).")
    workers: int = Field(0, ge=0, description="Threads for image descriptors (0: all cores).")
    train_share: float | None = Field(
        None,
        description="Move this share (0-1) of each (class, defect type) of the test images, normal and defective "
        "alike, to the meta's train split and out of the test file: training images with defects that never meet "
        "the test set. Needs --layout and --meta.",
    )


def _help(name: str) -> str:
    return field_help(ConvertOptions, name)


def convert(
    root: Path = typer.Option(..., "--root", help=_help("root")),
    layout: str | None = typer.Option(None, "--layout", help=_help("layout")),
    dataset: str | None = typer.Option(None, "--dataset", help=_help("dataset")),
    meta: Path | None = typer.Option(None, "--meta", help=_help("meta")),
    test_file: Path | None = typer.Option(None, "--test-file", help=_help("test_file")),
    templates: int = typer.Option(4, "--num-templates", min=0, help=_help("templates")),
    templates_old: int | None = typer.Option(None, "--templates", min=0, hidden=True),  # the 0.1 spelling
    seed: int = typer.Option(0, "--seed", help=_help("seed")),
    similar: bool = typer.Option(True, "--similar/--no-similar", help=_help("similar")),
    workers: int = typer.Option(0, "--workers", min=0, help=_help("workers")),
    train_share: float | None = typer.Option(None, "--train-share", help=_help("train_share")),
) -> None:
    """Convert a dataset layout to meta.json and/or a benchmark test file with k-shot templates.

    Images that cannot be read (opened for the similar templates) are all skipped and listed: a test image among
    them is left out of the test file, a reference is never a template.
    """
    templates = renamed(templates, templates_old, "--templates", "--num-templates")
    from rich.console import Console

    from iadr1.data.convert import build_test_records, move_to_train, scan_layout, write_test_file
    from iadr1.data.keys import key_scheme
    from iadr1.data.meta import read_meta, write_meta
    from iadr1.errors import ConfigError

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    if layout is not None and layout not in LAYOUT_CHOICES:
        raise ConfigError(f"--layout {layout!r} is not one of {', '.join(LAYOUT_CHOICES)}")
    if layout is None:
        if meta is None or test_file is None:
            raise ConfigError("without --layout, pass --meta META.json (to read) and --test-file OUT.json (to write)")
    elif meta is None and test_file is None:
        raise ConfigError("nothing to write: pass --meta META.json, --test-file OUT.json, or both")
    if layout == "folder" and not dataset:
        raise ConfigError("--layout folder needs --dataset NAME: the dataset folder under --root to scan")
    if train_share is not None:
        if layout is None or meta is None:
            raise ConfigError(
                "--train-share needs --layout and --meta: the meta.json written records which test images moved to "
                "the train split (build-data reads it)"
            )
        if not 0.0 < train_share < 1.0:
            raise ConfigError(f"--train-share must be between 0 and 1 (exclusive), got {train_share}")

    # 1. meta: scan the layout (and write it), or read it. Every unreadable image is collected in `bad`, reported below.
    bad: dict[str, str] = {}
    if layout is not None:
        data = scan_layout(layout, root, dataset, bad_images=bad)
        n = sum(len(v) for v in data.values())
        if train_share is not None:
            split = move_to_train(data, train_share, seed)  # moved entries are new objects, the rest the same
            moved = [e for c in data for e, old in zip(split[c], data[c], strict=True) if e is not old]
            data = split
            n_anom = sum(e.anomaly for e in moved)
            console.print(
                f"moved {len(moved)} test images ({n_anom} anomalous, {len(moved) - n_anom} normal) to the train split "
                f"(--train-share {train_share}, --seed {seed})"
            )
        if meta is not None:
            write_meta(data, meta)
            console.print(f"wrote {meta}: {n} images in {len(data)} classes")
    else:
        assert meta is not None
        data = read_meta(meta)
    if test_file is None:
        _report_bad_images(console, bad)
        return

    # 2. test file. Decide the keys first (docs/convert.md, "Keys"), so that a bad meta fails before any image is read.
    keys = key_scheme(data, root, dataset, layout, source=meta)
    from iadr1.cli._progress import ProgressBars

    described = {"done": 0, "total": None}

    def step(k: int = 0, total: int | None = None) -> None:
        described["done"] += k
        described["total"] = total if total is not None else described["total"]
        on_progress("describing images", described["done"], described["total"])

    with ProgressBars(console, transient=True, disable=not console.is_terminal) as on_progress:  # no bar in logs
        records = build_test_records(
            data,
            root,
            templates=templates,
            seed=seed,
            dataset=keys.dataset,
            similar=similar,
            workers=workers or None,
            progress=lambda k: step(k),
            on_descriptors=lambda total: step(total=total),
            bad_images=bad,
        )
    _report_bad_images(console, bad)
    write_test_file(records, test_file)
    n_anom = sum(r["conversation"][0]["Answer"] == "A" for r in records.values())
    with_refs = sum(bool(r["random_templates"]) for r in records.values())
    console.print(
        f"wrote {test_file}: {len(records)} test images ({n_anom} anomalous, {len(records) - n_anom} normal), "
        f"{with_refs} with templates (K={templates})"
    )
    if keys.resolvable:
        console.print(f"image root for inference: {keys.image_root}")
    else:
        console.print(
            f"[yellow]note:[/] keys start with {keys.name!r} but {keys.image_root / keys.name} does not exist; give "
            f"inference an image root holding a folder {keys.name!r} (e.g. a symbolic link to {root})"
        )


def _report_bad_images(console: Console, bad: dict[str, str]) -> None:
    """The count of the images skipped because they cannot be read, and the first few (file: problem)."""
    from iadr1.data.io import SHOW_BAD_IMAGES

    if not bad:
        return
    console.print(
        f"[yellow]skipped {len(bad)} unreadable images[/] (test images left out of the meta or the test file, "
        "references never used as templates):"
    )
    for detail in list(bad.values())[:SHOW_BAD_IMAGES]:
        console.print(f"  {detail}")
    if len(bad) > SHOW_BAD_IMAGES:
        console.print(f"  ... and {len(bad) - SHOW_BAD_IMAGES} more")
