"""`iadr1 predict`: a trained model on images and folders (no test file); predictions.jsonl and gallery.html."""

from __future__ import annotations

from pathlib import Path

import typer

from iadr1.cli._options import field_help, warn_versions

_SHOWN = 20


def _help(name: str) -> str:
    from iadr1.infer.runner import InferConfig

    return field_help(InferConfig, name, with_default=True)


def predict(
    paths: list[Path] = typer.Argument(..., help="Image files and folders (searched recursively)."),
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder (vllm, transformers) or API model name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: predictions.jsonl, gallery.html, the manifest."),
    reference: Path | None = typer.Option(
        None, "--reference", "-r", help="A normal image of the part: one-shot prompts (reference first)."
    ),
    backend: str = typer.Option("transformers", "--backend", help=_help("backend")),
    prompt_style: str = typer.Option("iadr1", "--prompt-style", help=_help("prompt_style")),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help=_help("max_new_tokens")),
    temperature: float = typer.Option(0.0, "--temperature", help=_help("temperature")),
    batch_size: int = typer.Option(8, "--batch-size", help=_help("batch_size")),
    device: str | None = typer.Option(None, "--device", help=_help("device")),
    dtype: str = typer.Option("auto", "--dtype", help=_help("dtype")),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help=_help("max_pixels")),
    base_url: str | None = typer.Option(None, "--base-url", help=_help("base_url")),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help=_help("api_key_env")),
    concurrency: int = typer.Option(8, "--concurrency", help=_help("concurrency")),
    threshold: float | None = typer.Option(None, "--threshold", help=_help("threshold")),
    perturb: list[str] | None = typer.Option(None, "--perturb", help=_help("perturb"), metavar="NAME[:ARGS]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: remove this folder's predictions first."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Write gallery.html."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Answer every image (defect or not, where, what kind, why); one JSON line per image (reruns resume), a table
    here and a self-contained gallery.html with the named 3x3 cell drawn over each image."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.table import Table

    from iadr1.cli._options import option_error
    from iadr1.cli._progress import ProgressBars
    from iadr1.infer.predict import display_order, run_predict
    from iadr1.infer.runner import InferConfig

    try:
        icfg = InferConfig(
            model=model, test_file=out / "predictions.jsonl", image_root=out, out=out, backend=backend,
            prompt_style=prompt_style, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
            device=device, dtype=dtype, max_pixels=max_pixels, base_url=base_url, api_key_env=api_key_env,
            concurrency=concurrency, threshold=threshold, perturb=perturb or [],
        )  # fmt: skip
    except ValidationError as e:
        raise option_error(e) from None
    err = Console(stderr=True, highlight=False)
    warn_versions("infer")
    with ProgressBars(err, transient=True, disable=quiet or not err.is_terminal) as on_progress:
        summary = run_predict(
            icfg, paths, reference, overwrite=overwrite, gallery=gallery, on_progress=on_progress,
            on_message=lambda note: err.print(note, markup=False, soft_wrap=True),
        )  # fmt: skip
    console = Console(highlight=False)
    table = Table(title=f"iadr1 predict: {summary.images} images ({summary.skipped} already answered)")
    columns = ["image", "answer", "P(defect)", "P(yes)", "location", "type"]
    if threshold is not None:
        columns.insert(2, f"at {threshold:g}")
    for col in columns:
        table.add_column(col, justify="right" if col.startswith("P(") else "left", overflow="fold")
    rows = sorted(summary.rows, key=display_order)
    for r in rows[:_SHOWN]:
        answer = (
            "[red]failed[/]"
            if r.get("error")
            else {"yes": "[red]defect[/]", "no": "[green]normal[/]"}.get(r.get("answer"), "[yellow]none[/]")
        )
        called = {"yes": "[red]defect[/]", "no": "[green]normal[/]"}.get(r.get("decision"), "[yellow]no score[/]")
        probs = ["" if r.get(k) is None else f"{r[k]:.3f}" for k in ("p_defect", "p_yes")]
        cells = [str(r.get("image")), answer, *([called] if threshold is not None else []), *probs]
        table.add_row(*cells, r.get("location") or "", r.get("type") or "")
    console.print(table)
    if len(rows) > _SHOWN:
        console.print(f"... and {len(rows) - _SHOWN} more in {summary.predictions}")
    console.print(
        f"defective {summary.defective}, normal {summary.normal}, no answer {summary.unanswered}, failed "
        f"{summary.errors}; written {summary.written} now in {summary.elapsed_s:.1f} s "
        f"({summary.images_per_s:.2f} images/s with the model load)"
    )
    console.print(f"predictions: {summary.predictions}")
    if summary.gallery:
        console.print(f"gallery: {summary.gallery}")
    if summary.written and summary.errors == len(summary.rows):
        from iadr1.errors import IADR1Error

        raise IADR1Error(f"every image failed (first: {summary.first_error})")
