"""`iadr1 predict`: a trained model on new images and folders, no test file needed (docs/deploy.md).

Images are the files named and every image file below the folders named (recursively, `IMAGE_SUFFIXES`, hidden
files skipped), in sorted order. With a `reference` (a normal image of the part) every prompt is one-shot, the
reference first, exactly as training's one-shot records; without one, zero-shot. Each image becomes one line of
`OUT/predictions.jsonl`, appended as it is answered, in the predictions schema `iadr1 infer` writes (`image` is the
path as found) plus `location`, `type`, `reasoning` and `reference`; a rerun skips the images already answered and
tries the failed ones again, and a folder made with other settings (model, reference, prompt, decoding) is refused
unless `overwrite` (the same manifest as `infer`, `OUT/predictions.run.json`). `OUT/gallery.html` is one
self-contained page: a thumbnail per image with the answer, P(defect) and P(yes) (and the call at `threshold`, when
one is given), the type, the named 3x3 cell drawn over it and the reasoning; defects first.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from iadr1.data.annotate.masks import GRID_WORDS
from iadr1.data.io import (
    IMAGE_SUFFIXES,
    JsonlAppender,
    atomic_write_jsonl,
    atomic_write_text,
    check_image,
    file_sha256,
    iter_jsonl,
)
from iadr1.errors import ConfigError, DataError
from iadr1.infer.base import Backend, Request, Result
from iadr1.infer.manifest import check_folder, now, run_settings, write_manifest
from iadr1.infer.runner import InferConfig, make_backend, prediction_record
from iadr1.prompts import inference_segments
from iadr1.rewards.location import location_cell

GALLERY_NAME = "gallery.html"
THUMB_SIDE = 256


class PredictSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    predictions: Path
    gallery: Path | None
    images: int
    skipped: int
    written: int
    defective: int
    normal: int
    unanswered: int
    errors: int
    elapsed_s: float
    images_per_s: float
    first_error: str | None = None
    rows: list[dict[str, Any]] = Field(default_factory=list, repr=False)


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files among `paths` and below the folders among them, sorted and without repeats; a path that
    does not exist is a `DataError`, and so is finding no image at all."""
    found: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        q = Path(dirpath) / name
                        found.setdefault(str(q), q)
        elif p.is_file():
            found.setdefault(str(p), p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not found:
        raise DataError(f"no image files in {', '.join(str(p) for p in paths)} (looked for {sorted(IMAGE_SUFFIXES)})")
    return [found[k] for k in sorted(found)]


def _record(path: Path, result: Result, icfg: InferConfig, reference: Path | None) -> dict[str, Any]:
    rec, answer = prediction_record(str(path), icfg, result)
    return rec | {
        "location": answer.location,
        "type": answer.type,
        "reasoning": answer.reasoning,
        "reference": None if reference is None else str(reference),
    }


def answer_image(
    engine: Backend, icfg: InferConfig, image: str | os.PathLike, reference: str | os.PathLike | None = None
) -> dict[str, Any]:
    """One image through an open backend (`make_backend(icfg)`): its predictions line, as `run_predict` writes it.
    Zero-shot without `reference`, one-shot with it, whatever `icfg.shots` says; an unreadable image (or
    reference) gives a line with `error` set, as does a backend failure."""
    path = Path(image)
    ref = None if reference is None else Path(reference)
    cfg = icfg.model_copy(update={"shots": 0 if ref is None else 1})
    for p, what in ((ref, "reference"), (path, "image")):
        problem = check_image(p) if p is not None else None
        if problem:
            return _record(path, Result(error=f"{what} {p}: {problem}"), cfg, ref)
    segments = tuple(inference_segments(cfg.shots, cfg.prompt_style))
    req = Request(key=str(path), segments=segments, images=(ref, path) if ref is not None else (path,))
    results = [result for _, result in engine.generate([req])]
    return _record(path, results[0] if results else Result(error="the backend returned no result"), cfg, ref)


def _read_done(path: Path) -> set[str]:
    """Images already answered; the failed lines are dropped from the file (their images are asked again)."""
    if not path.exists():
        return set()
    lines = [obj for _, obj in iter_jsonl(path)]
    keep = [obj for obj in lines if isinstance(obj, dict) and obj.get("error") is None]
    if len(keep) != len(lines):
        atomic_write_jsonl(path, keep)
    return {str(obj.get("image")) for obj in keep}


def run_predict(
    icfg: InferConfig,
    paths: Sequence[str | os.PathLike],
    reference: str | os.PathLike | None = None,
    overwrite: bool = False,
    gallery: bool = True,
    on_progress: Callable[[str, int, int | None, str], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Answer every image of `paths` with the backend `icfg` configures (its `test_file` and `image_root` are not
    read; `shots` is set from `reference`), into `icfg.out` (module docstring)."""
    t0 = time.perf_counter()
    say = on_message or (lambda _note: None)
    ref = Path(reference) if reference is not None else None
    if ref is not None:
        problem = check_image(ref)
        if problem:
            raise DataError(f"--reference {ref}: {problem}")
    icfg = icfg.model_copy(update={"shots": 1 if ref is not None else 0})
    if icfg.backend != "openai" and not (Path(icfg.model) / "config.json").is_file():
        raise ConfigError(f"--model {icfg.model}: not a checkpoint folder (no config.json)")
    images = find_images(paths)
    out = Path(icfg.out)
    pred_path = out / "predictions.jsonl"
    settings = run_settings(icfg, "")
    settings.pop("test_file_sha256", None)
    settings["reference_sha256"] = file_sha256(ref) if ref is not None else None
    removed = check_folder(pred_path, settings, overwrite)
    if removed:
        say(f"--overwrite: removed {', '.join(p.name for p in removed)}")
    out.mkdir(parents=True, exist_ok=True)
    done = _read_done(pred_path)
    started = now()
    write_manifest(pred_path, icfg, settings, started)
    todo = [p for p in images if str(p) not in done]
    if len(todo) < len(images):
        say(f"resuming {pred_path}: {len(images) - len(todo)} of {len(images)} images already answered")
    counts: Counter[str] = Counter()
    first_error: str | None = None
    segments = tuple(inference_segments(icfg.shots, icfg.prompt_style))
    t_loop = time.perf_counter()

    with JsonlAppender(pred_path) as sink:

        def write(path: Path, result: Result) -> None:
            nonlocal first_error
            rec = _record(path, result, icfg, ref)
            sink.write(rec)
            counts["written"] += 1
            if rec["error"]:
                counts["errors"] += 1
                first_error = first_error or f"{path}: {rec['error']}"
            if on_progress is not None:
                rate = counts["written"] / max(time.perf_counter() - t_loop, 1e-9)
                on_progress("predict", counts["written"], len(todo), f"{rate:.2f} img/s")

        def requests() -> Iterator[Request]:
            for p in todo:
                problem = check_image(p)
                if problem:
                    write(p, Result(error=f"{p}: {problem}"))
                    continue
                yield Request(key=str(p), segments=segments, images=(ref, p) if ref is not None else (p,))

        stream = requests()
        first = next(stream, None)
        if first is not None:
            by_key = {str(p): p for p in todo}
            with make_backend(icfg) as engine:
                for note in engine.notes:
                    say(note)

                def chain() -> Iterator[Request]:
                    yield first
                    yield from stream

                for req, result in engine.generate(chain()):
                    write(by_key[req.key], result)

    rows = [obj for _, obj in iter_jsonl(pred_path) if isinstance(obj, dict)]
    elapsed = time.perf_counter() - t0
    answers = Counter(r.get("answer") for r in rows if not r.get("error"))
    summary = PredictSummary(
        predictions=pred_path,
        gallery=write_gallery(rows, out / GALLERY_NAME) if gallery else None,
        images=len(images),
        skipped=len(images) - len(todo),
        written=counts["written"],
        defective=answers["yes"],
        normal=answers["no"],
        unanswered=answers[None],
        errors=sum(1 for r in rows if r.get("error")),
        elapsed_s=round(elapsed, 3),
        images_per_s=round(counts["written"] / elapsed, 3) if elapsed > 0 else 0.0,
        first_error=first_error,
        rows=rows,
    )
    write_manifest(pred_path, icfg, settings, started, summary.model_dump(mode="json", exclude={"rows"}))
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The gallery
# ---------------------------------------------------------------------------------------------------------------
def _thumbnail(path: str) -> str | None:
    """A JPEG data URL of the image at most THUMB_SIDE px on its long side (None when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_order(row: dict[str, Any]) -> tuple[int, str]:
    """Defects first, then images without an answer, normal ones, failed ones; by path within each."""
    rank = {"yes": 0, None: 1, "no": 2}.get(row.get("answer"), 1) if not row.get("error") else 3
    return rank, str(row.get("image"))


def write_gallery(rows: list[dict[str, Any]], path: Path) -> Path:
    """One self-contained HTML page (images inlined): a card per prediction, defects first, then unanswered, normal
    and failed images; the 3x3 cell the reply names is framed over the image."""
    cards = []
    for row in sorted(rows, key=display_order):
        esc = {k: html.escape(str(row.get(k) or "")) for k in ("image", "type", "location", "reasoning", "error")}
        answer = row.get("answer")
        label = "failed" if row.get("error") else {"yes": "defective", "no": "normal"}.get(answer, "no answer")
        score = "".join(
            f" &middot; {name} {row[key]:.3f}" for key, name in (("p_defect", "P(defect)"), ("p_yes", "P(yes)"))
            if row.get(key) is not None
        )  # fmt: skip
        if row.get("threshold") is not None and not row.get("error"):
            call = {"yes": "defective", "no": "normal"}.get(row.get("decision"), "no score")
            score += f" &middot; at {row['threshold']:g}: {call}"
        cell = location_cell(row.get("location") or "", strict=True) if answer == "yes" else None
        frame = ""
        if cell is not None:
            r, c = divmod(cell - 1, 3)
            frame = (f'<div class="cell" style="left:{c * 33.333:.3f}%;top:{r * 33.333:.3f}%" '
                     f'title="{html.escape(GRID_WORDS[cell - 1])}"></div>')  # fmt: skip
        thumb = _thumbnail(str(row.get("image"))) if not row.get("error") else None
        img = f'<img src="{thumb}" alt="{esc["image"]}">' if thumb else '<div class="noimg">no image</div>'
        details = (
            f"<div class=err>{esc['error']}</div>"
            if row.get("error")
            else (
                f"<div><b>{esc['type'] or '-'}</b> at <b>{esc['location'] or '-'}</b></div>" if answer == "yes" else ""
            )
            + f"<p>{esc['reasoning']}</p>"
        )
        cards.append(
            f'<div class="card {label.replace(" ", "-")}"><div class="pic">{img}{frame}</div>'
            f'<div class="head">{label}{score}</div><div class="path">{esc["image"]}</div>{details}</div>'
        )
    counts = Counter(display_order(r)[0] for r in rows)
    title = (f"iadr1 predict: {len(rows)} images, {counts[0]} defective, {counts[2]} normal, {counts[1]} without an "
             f"answer, {counts[3]} failed")  # fmt: skip
    style = (
        "body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:12px}"
        ".card{width:270px;border:1px solid #ccc;border-radius:6px;padding:6px;font-size:12px}"
        ".pic{position:relative;display:inline-block;line-height:0}.pic img{max-width:256px;max-height:256px}"
        ".cell{position:absolute;width:33.333%;height:33.333%;border:2px solid #ffd000;box-sizing:border-box}"
        ".head{font-weight:bold;margin-top:4px}.defective .head{color:#b00}.normal .head{color:#070}"
        ".path{color:#666;word-break:break-all}.err{color:#b00}p{margin:4px 0}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
        f"</head><body><h2>{html.escape(title)}</h2><div class='grid'>{''.join(cards)}</div></body></html>\n"
    )
    return atomic_write_text(path, page)
