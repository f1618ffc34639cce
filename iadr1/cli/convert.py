"""`iadr1 convert`: a dataset on disk -> meta.json -> benchmark test file (either step alone, or both in one call)."""

from __future__ import annotations

from pathlib import Path

import typer

LAYOUT_CHOICES = ("mvtec", "visa", "mpdd", "dtd", "sdd", "dagm", "folder")


def convert(
    root: Path = typer.Option(..., "--root", help="Data root: the dataset folder (folder layout: its parent)."),
    layout: str | None = typer.Option(
        None, "--layout", help=f"Layout to scan: {', '.join(LAYOUT_CHOICES)}. Omit to read --meta instead."
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Dataset name that keys start with. Folder layout: the folder under ROOT to scan (required). "
        "Other layouts: defaults to the name of ROOT.",
    ),
    meta: Path | None = typer.Option(
        None, "--meta", help="meta.json: written when --layout is given, else read (AnomalyCLIP format)."
    ),
    test_file: Path | None = typer.Option(None, "--test-file", help="Benchmark test file to write (JSON)."),
    templates: int = typer.Option(4, "--templates", min=0, help="K: reference templates per image (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random templates."),
    similar: bool = typer.Option(
        True,
        "--similar/--no-similar",
        help="Compute similar_templates (reads every test and reference image).",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes for image descriptors (0: all cores)."),
) -> None:
    """Convert a dataset layout to meta.json and/or a benchmark test file with k-shot templates."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from iadr1.data.convert import build_test_file, key_prefix, read_meta, scan_layout, write_meta
    from iadr1.data.schemas import dump_test_file
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

    # 1. meta: scan the layout (and write it), or read it.
    if layout is not None:
        data = scan_layout(layout, root, dataset)
        n = sum(len(v) for v in data.values())
        if meta is not None:
            write_meta(data, meta)
            console.print(f"wrote {meta}: {n} images in {len(data)} classes")
        # Folder-layout paths already start with the dataset name; the others get it (default: ROOT's name).
        key_dataset = None if layout == "folder" else (dataset or root.resolve().name)
    else:
        assert meta is not None
        data = read_meta(meta)
        key_dataset = dataset
    if test_file is None:
        return

    # 2. test file. Decide the key prefix first, so that a bad meta fails before any image is read.
    prefix = key_prefix(data, root, key_dataset)
    heads = {e.img_path.split("/", 1)[0] for es in data.values() for e in es}
    if not prefix and len(heads) != 1:
        shown = ", ".join(sorted(heads)[:3]) + (", ..." if len(heads) > 3 else "")
        raise ConfigError(
            f"{meta}: the paths start with several names ({shown}), not one dataset name; pass --dataset NAME "
            "to prefix the keys (ROOT is then the dataset folder itself)"
        )
    with Progress(
        TextColumn("describing images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar (nor a blank line) in logs
    ) as bar:
        task = bar.add_task("describe", total=None)
        entries = build_test_file(
            data,
            root,
            templates=templates,
            seed=seed,
            dataset=key_dataset,
            similar=similar,
            workers=workers or None,
            progress=lambda k: bar.advance(task, k),
            on_descriptors=lambda total: bar.update(task, total=total),
        )
    dump_test_file(entries, test_file)
    n_anom = sum(e.is_anomalous for e in entries.values())
    with_refs = sum(bool(e.random_templates) for e in entries.values())
    console.print(
        f"wrote {test_file}: {len(entries)} test images ({n_anom} anomalous, {len(entries) - n_anom} normal), "
        f"{with_refs} with templates (K={templates})"
    )
    # Keys resolve against ROOT when they are meta paths as they are, else against the parent of the dataset folder.
    name = prefix.rstrip("/") or next(iter(heads))
    image_root = root.resolve().parent if prefix else root
    if (image_root / name).is_dir():
        console.print(f"image root for inference: {image_root}")
    else:
        console.print(
            f"[yellow]note:[/] keys start with {name!r} but {image_root / name} does not exist; give inference an "
            f"image root holding a folder {name!r} (e.g. a symbolic link to {root})"
        )
