"""The annotation run behind `iadr1 annotate`: meta.json (+ masks) -> annotations.jsonl + annotations_report.json.

- One JSON line per image is appended as soon as it is done (flushed at once; fsynced for teacher replies, which
  cost money), so a run killed with SIGKILL loses at most the images in flight, and a rerun skips every image
  already in the file. A file written with other settings (reasoner, seed, types file, teacher) is refused unless
  `overwrite` starts over: mixing two sets of texts would go unnoticed.
- An image that cannot be annotated is recorded as a problem in the report, never a crash; it is tried again on the
  next run. Kinds: `PROBLEMS`.
- Every annotation line carries, beside `image`, `reasoning`, `location` and `type` (what `build-data` and `eval`
  read), where it came from: `class`, `specie`, `anomaly`, `source` (`template`, `teacher`, `template_fallback`),
  `type_source` (`defect_names.TypeChoice`), the mask's `facts`, and for teacher runs `teacher` (attempts and
  refusals). The report's counts are computed from the file, so a resumed run reports the whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from iadr1.data.annotate.defect_names import TypeChoice, TypeTable
from iadr1.data.annotate.masks import MaskFacts, mask_facts, read_mask
from iadr1.data.annotate.reasoning import template_defect, template_normal
from iadr1.data.annotate.teacher import REFUSALS, Verdict, check_reply, teacher_segments
from iadr1.data.annotations import image_problem_kind
from iadr1.data.io import JsonlAppender, atomic_write_json, file_sha256, image_problem, iter_jsonl
from iadr1.data.meta import read_meta, split_of
from iadr1.data.schemas import MetaEntry
from iadr1.errors import ConfigError, DataError
from iadr1.prompts import TEACHER_SYSTEM

REPORT_SUFFIX = "_report.json"
SHEET_SUFFIX = "_sheet.png"
MAX_LISTED_PROBLEMS = 1000
EXAMPLES = 5
# Bump when the template texts or the teacher prompt change: a file written by another version is not resumed.
TEXT_VERSION = 1

# Every kind of problem, and what happens to the image.
PROBLEMS: dict[str, str] = {
    "missing_image": "image file does not exist (skipped)",
    "unreadable_image": "image file cannot be read (skipped)",
    "empty_image": "image file has 0 bytes (skipped)",
    "not_an_image": "file is not in an image format Pillow knows (skipped)",
    "corrupt_image": "image header cannot be decoded (skipped)",
    "duplicate_image": "the meta lists this image twice (the second entry is skipped)",
    "missing_mask": "defective image without a mask file (skipped; with the teacher, its location is the teacher's)",
    "unreadable_mask": "mask file cannot be read (skipped; with the teacher, its location is the teacher's)",
    "empty_mask": "mask has no defective pixel (skipped; with the teacher, its location is the teacher's)",
    "mask_size": "mask is not the size of the image (skipped; with the teacher, its location is the teacher's)",
    "generic_type": "defect name says no kind and no class default is given (written without a type; with the "
    "teacher, the teacher's type)",
    "unknown_type": "defect name is in no table (written without a type; with the teacher, the teacher's type; "
    "--types adds it)",
    "teacher_failed": "no teacher reply passed the check and no template can stand in: no mask (skipped)",
}

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TeacherPrompt:
    """One question to the teacher: the user turn as text segments and `None` image slots, the image files in
    slot order (reference first, query last) and the system prompt. The same shape as `iadr1.infer.base.Request`,
    which the teacher turns it into (the data layer does not import the inference layer)."""

    key: str
    segments: tuple[str | None, ...]
    images: tuple[Path, ...]
    system: str | None = None


# `teacher(prompts, attempt)` yields (key, reply or None, error or None) for every prompt, in any order; `attempt`
# counts the rounds from 0 (a sampling teacher changes its seed with it, so a refused reply is not repeated).
Teacher = Callable[[list[TeacherPrompt], int], Iterator[tuple[str, str | None, str | None]]]


class AnnotateConfig(BaseModel):
    """Options of `annotate` (the CLI's options, validated)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    meta: Path = Field(description="meta.json listing the images (as `iadr1 convert` writes it).")
    out: Path = Field(description="The annotations file to write (JSON Lines); the report and sheet go beside it.")
    image_root: Path | None = Field(None, description="Folder the meta paths are relative to (default: the meta's).")
    reasoner: Literal["template", "model"] = Field(
        "template", description="template (offline, deterministic) or model (a teacher VLM through a backend)."
    )
    seed: int = Field(0, description="Seed of the template phrasings and the contact sheet's sample.")
    types: Path | None = Field(None, description="YAML/JSON file extending the defect name -> category table.")
    splits: list[str] | None = Field(
        None, description="Annotate only meta entries of this split (train, test, template); repeatable. Default: all."
    )
    overwrite: bool = Field(False, description="Start over: delete the annotations file of an earlier run first.")
    sheet: int = Field(12, ge=0, description="Images on the contact sheet PNG (0: none).")
    # --- the teacher (reasoner model)
    model: str | None = Field(
        None, validate_default=True, description="model: the teacher's checkpoint folder or API model name."
    )
    backend: Literal["openai", "vllm", "transformers"] = Field("openai", description="model: the teacher's backend.")
    base_url: str | None = Field(None, description="openai: endpoint, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: NAME of the environment variable holding the key.")
    teacher_retries: int = Field(2, ge=0, description="model: asks again after a reply fails the check, then template.")
    references: bool = Field(True, description="model: show the teacher a normal image of the class beside the query.")
    temperature: float = Field(0.7, ge=0.0, description="model: sampling temperature of the teacher.")
    max_new_tokens: int = Field(600, ge=16, description="model: reply length limit.")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight.")
    retries: int = Field(5, ge=0, description="openai: retries on 429/5xx (back-off as `infer`).")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds per request.")
    max_pixels: int | None = Field(None, ge=28 * 28, description="vllm, transformers: image pixel cap.")
    batch_size: int = Field(8, ge=1, description="transformers: requests per generate call.")
    device: str | None = Field(None, description="transformers: cuda, cpu (default: auto).")
    chunk: int = Field(64, ge=1, description="model: images sent to the teacher per round (retries wait for it).")

    @field_validator("model")
    @classmethod
    def _teacher_named(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("reasoner") == "model" and not v:
            raise ValueError("--reasoner model needs --model (the teacher: a checkpoint folder or an API model name)")
        return v

    def settings(self) -> dict[str, Any]:
        """What decides the texts: a rerun with other settings may not append to the same file."""
        s: dict[str, Any] = {
            "version": TEXT_VERSION,
            "reasoner": self.reasoner,
            "seed": self.seed,
            "types_sha256": file_sha256(self.types) if self.types else None,
        }
        if self.reasoner == "model":
            s |= {"model": self.model, "backend": self.backend, "temperature": self.temperature,
                  "references": self.references}  # fmt: skip
        return s


@dataclass
class AnnotateResult:
    annotations: Path
    report_path: Path
    report: dict[str, Any]
    sheet: Path | None


@dataclass
class _Item:
    entry: MetaEntry
    facts: MaskFacts | None
    choice: TypeChoice
    reference: str | None = None
    attempts: int = 0
    refusals: list[str] | None = None


def report_path(out: str | os.PathLike) -> Path:
    p = Path(out)
    return p.with_name(p.stem + REPORT_SUFFIX)


def sheet_path(out: str | os.PathLike) -> Path:
    p = Path(out)
    return p.with_name(p.stem + SHEET_SUFFIX)


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------
def _image_size(path: Path) -> tuple[tuple[int, int] | None, tuple[str, str] | None]:
    """(width, height) from the image header (no decode), or a problem (kind, detail)."""
    from PIL import Image

    if not path.is_file():
        return None, ("missing_image", f"{path}: image file not found")
    if path.stat().st_size == 0:
        return None, ("empty_image", f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            return im.size, None
    except Exception as e:  # noqa: BLE001 - every decoder error is a recorded problem
        detail = image_problem(e)
        return None, (image_problem_kind(detail), f"{path}: {detail}")


def _check_settings(cfg: AnnotateConfig) -> None:
    """Refuse to append to a file of another run's settings (or of unknown origin)."""
    rp = report_path(cfg.out)
    if cfg.overwrite:
        for p in (cfg.out, rp, sheet_path(cfg.out)):
            p.unlink(missing_ok=True)
        return
    if not cfg.out.exists() or cfg.out.stat().st_size == 0:
        return
    old = None
    if rp.is_file():
        try:
            old = json.loads(rp.read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError):
            old = None
    if old is None:
        raise ConfigError(
            f"{cfg.out} exists and was not written by `iadr1 annotate` (no readable {rp.name} beside it): "
            "pass --overwrite to replace it, or choose another --out"
        )
    new = cfg.settings()
    if old != new:
        diff = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k))
        raise ConfigError(
            f"{cfg.out} was written with other settings ({diff}): pass --overwrite to start over, or another --out"
        )


def _done_images(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {obj["image"] for _, obj in iter_jsonl(path) if isinstance(obj, dict) and isinstance(obj.get("image"), str)}


def _references(entries: list[MetaEntry]) -> dict[str, list[str]]:
    """Normal non-test images per class, template images first: the teacher's reference candidates."""
    out: dict[str, list[str]] = {}
    for e in sorted(entries, key=lambda e: split_of(e) != "template"):
        if not e.anomaly and split_of(e) != "test":
            out.setdefault(e.cls_name, []).append(e.img_path)
    return out


def _pick(pool: list[str], key: str, seed: int) -> str | None:
    """A seeded choice that depends on (seed, key) only, never the query itself."""
    cands = [p for p in pool if p != key]
    if not cands:
        return None
    h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:4], "big")
    return cands[h % len(cands)]


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
def annotate(
    config: AnnotateConfig | None = None,
    on_progress: ProgressFn | None = None,
    teacher: Teacher | None = None,
    **kw: Any,
) -> AnnotateResult:
    """Annotate the images of a meta.json (module docstring); returns the paths and the report. The `model`
    reasoner needs `teacher`: `iadr1.infer.teacher.open_teacher(config)` opens one on the configured backend."""
    cfg = config or AnnotateConfig(**kw)
    t0 = time.perf_counter()
    if cfg.reasoner == "model" and teacher is None:
        raise ConfigError("the model reasoner needs a teacher: annotate(cfg, teacher=...) (iadr1.infer.teacher)")
    if cfg.out.suffix != ".jsonl":
        raise ConfigError(f"--out {cfg.out}: the annotations file is JSON Lines, name it *.jsonl")
    root = cfg.image_root if cfg.image_root is not None else cfg.meta.parent
    if not root.is_dir():
        raise DataError(f"{root}: image root folder not found")
    meta = read_meta(cfg.meta)
    table = TypeTable.load(cfg.types)
    splits = {s.lower() for s in cfg.splits} if cfg.splits else None
    entries = [e for es in meta.values() for e in es if splits is None or split_of(e) in splits]
    if not entries:
        raise DataError(f"{cfg.meta}: no image to annotate" + (f" in split(s) {sorted(splits)}" if splits else ""))
    _check_settings(cfg)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_images(cfg.out)
    problems: list[dict[str, str]] = []
    refs = _references(entries) if cfg.reasoner == "model" and cfg.references else {}

    def problem(kind: str, item: str, detail: str) -> None:
        problems.append({"kind": kind, "item": item, "detail": detail})

    seen: set[str] = set()
    todo: list[_Item] = []
    for e in entries:
        if e.img_path in seen:
            problem("duplicate_image", e.img_path, f"{cfg.meta}: {e.img_path} is listed twice")
            continue
        seen.add(e.img_path)
        if e.img_path in done:
            continue
        todo.append(_Item(e, None, TypeChoice(None, "normal")))
    total = len(todo)
    write_report(cfg, root, problems, complete=False, already=len(done))  # the settings on disk before any line
    written = 0
    with JsonlAppender(cfg.out, fsync=cfg.reasoner == "model") as out:
        teacher_items: list[_Item] = []
        for i, item in enumerate(todo):
            if on_progress and (i % 64 == 0 or i == total - 1):
                on_progress("reading masks" if cfg.reasoner == "model" else "annotating", i + 1, total)
            if not _prepare(item, root, table, problem, cfg.reasoner == "model"):
                continue
            if cfg.reasoner == "model":
                item.reference = _pick(refs.get(item.entry.cls_name, []), item.entry.img_path, cfg.seed)
                teacher_items.append(item)
                continue
            out.write(_record(item, _template_text(item, cfg.seed), "template"))
            written += 1
        if teacher_items:
            written += _run_teacher(cfg, root, teacher, teacher_items, out.write, problem, on_progress)
    seconds = time.perf_counter() - t0
    records = [r for _, r in iter_jsonl(cfg.out) if isinstance(r, dict)]  # the whole file, read once for both
    sheet = None
    if cfg.sheet:
        from iadr1.data.annotate.sheet import contact_sheet

        masks = {e.img_path: e.mask_path for e in entries if e.mask_path}
        sheet = contact_sheet(records, root, sheet_path(cfg.out), masks, n=cfg.sheet, seed=cfg.seed)
    report = write_report(
        cfg, root, problems, complete=True, already=len(done), written=written, seconds=seconds, records=records,
        sheet=sheet,
    )  # fmt: skip
    return AnnotateResult(cfg.out, report_path(cfg.out), report, sheet)


def _prepare(
    item: _Item, root: Path, table: TypeTable, problem: Callable[[str, str, str], None], teacher: bool
) -> bool:
    """Read the image header, the mask and the type of one image; False when it is skipped (problem recorded)."""
    e = item.entry
    size, bad = _image_size(root / e.img_path)
    if bad:
        problem(bad[0], e.img_path, bad[1])
        return False
    if not e.anomaly:
        return True
    if e.mask_path:
        im, bad = read_mask(root / e.mask_path, size)
        if im is not None:
            item.facts = mask_facts(im)
    else:
        bad = ("missing_mask", f"{e.img_path}: defective image without a mask_path in the meta")
    item.choice = table.choose(e.specie_name, e.cls_name, e.img_path)
    if bad:
        problem(bad[0], e.img_path, bad[1])
        if not teacher:
            return False
    if item.choice.type is None:
        why = "says no kind" if item.choice.source == "generic" else "is in no table"
        problem(
            f"{item.choice.source}_type",
            e.img_path,
            f"{e.img_path}: defect name {e.specie_name!r} of class {e.cls_name!r} {why}; "
            "give a category in --types (names or classes)",
        )
    return True


def _template_text(item: _Item, seed: int) -> str:
    e = item.entry
    if not e.anomaly:
        return template_normal(e.cls_name, e.img_path, seed)
    assert item.facts is not None
    return template_defect(e.cls_name, item.facts, item.choice.type, e.specie_name, e.img_path, seed)


def _record(item: _Item, reasoning: str, source: str, verdict: Verdict | None = None) -> dict[str, Any]:
    e = item.entry
    rec: dict[str, Any] = {"image": e.img_path, "reasoning": reasoning}
    if e.anomaly:
        location = verdict.location if verdict and verdict.location else (item.facts.location if item.facts else None)
        type_ = verdict.type if verdict and verdict.type else item.choice.type
        rec |= {"location": location, "type": type_}
    rec |= {"class": e.cls_name, "specie": e.specie_name, "anomaly": e.anomaly, "source": source}
    if e.anomaly:
        rec["type_source"] = "teacher" if verdict and verdict.type and item.choice.type is None else item.choice.source
        rec["location_source"] = "mask" if item.facts else "teacher"
        rec["facts"] = item.facts.to_json() if item.facts else None
    if item.attempts:
        rec["teacher"] = {"attempts": item.attempts, "refusals": item.refusals or []}
        if verdict is not None and verdict.refusal is None and e.anomaly:
            rec["teacher"] |= {"location": verdict.teacher_location, "type": verdict.teacher_type}
    return rec


# ---------------------------------------------------------------------------------------------------------------
# The teacher
# ---------------------------------------------------------------------------------------------------------------
def _prompt(item: _Item, root: Path, retry_note: str | None) -> TeacherPrompt:
    e = item.entry
    segs = list(teacher_segments(e.cls_name, bool(e.anomaly), item.facts, item.choice.type, item.reference is not None))
    if retry_note:
        segs[-1] = f"{segs[-1]} {retry_note}"
    images = (root / item.reference, root / e.img_path) if item.reference else (root / e.img_path,)
    return TeacherPrompt(key=e.img_path, segments=tuple(segs), images=images, system=TEACHER_SYSTEM)


def _chunks(items: list[_Item], n: int) -> Iterator[list[_Item]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _run_teacher(
    cfg: AnnotateConfig,
    root: Path,
    teacher: Teacher,
    items: list[_Item],
    write: Callable[[dict[str, Any]], None],
    problem: Callable[[str, str, str], None],
    on_progress: ProgressFn | None,
) -> int:
    """Ask the teacher for every item, check each reply, ask again (with the reason) up to `teacher_retries`
    times, then fall back to the template text; returns the number of lines written."""
    written = finished = 0
    for chunk in _chunks(items, cfg.chunk):
        pending = {it.entry.img_path: it for it in chunk}
        for attempt in range(cfg.teacher_retries + 1):
            if not pending:
                break
            prompts = [
                _prompt(it, root, _retry_note(it.refusals[-1]) if it.refusals else None) for it in pending.values()
            ]
            for key, raw, error in teacher(prompts, attempt):
                it = pending[key]
                it.attempts += 1
                truth_loc = it.facts.location if it.facts else None
                verdict = (
                    Verdict("no_reply")
                    if error
                    else check_reply(raw, bool(it.entry.anomaly), truth_loc, it.choice.type)
                )
                if verdict.refusal is None:
                    write(_record(it, verdict.reasoning or "", "teacher", verdict))
                    written += 1
                    del pending[key]
                else:
                    it.refusals = [*(it.refusals or []), verdict.refusal]
        for it in pending.values():  # every attempt refused: the template stands in where it can
            if it.entry.anomaly and it.facts is None:
                problem("teacher_failed", it.entry.img_path, f"{it.entry.img_path}: refused {it.refusals}")
                continue
            write(_record(it, _template_text(it, cfg.seed), "template_fallback"))
            written += 1
        finished += len(chunk)
        if on_progress:
            on_progress("teacher", finished, len(items))
    return written


def _retry_note(refusal: str) -> str:
    return f"Your previous reply was refused ({REFUSALS[refusal]}); follow the result and the format exactly."


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------
def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the records of an annotations file written by `annotate`: per class and type, sources, teacher
    statistics."""
    per_class: dict[str, Counter[str]] = {}
    per_type: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    type_sources: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    first_try = asked = 0
    examples: list[dict[str, Any]] = []
    n = 0
    if records:
        for rec in records:
            n += 1
            c = per_class.setdefault(str(rec.get("class")), Counter())
            c["defective" if rec.get("anomaly") else "normal"] += 1
            sources[str(rec.get("source"))] += 1
            if rec.get("anomaly"):
                per_type[str(rec.get("type"))] += 1
                type_sources[str(rec.get("type_source"))] += 1
            t = rec.get("teacher")
            if t:
                asked += 1
                refusals.update(t.get("refusals", []))
                first_try += rec.get("source") == "teacher" and t.get("attempts") == 1
            if len(examples) < EXAMPLES and (rec.get("anomaly") or len(examples) < 2):
                examples.append({k: rec.get(k) for k in ("image", "reasoning", "location", "type", "source")})
    teacher = None
    if asked:
        accepted = sources["teacher"]
        teacher = {
            "images": asked,
            "accepted": accepted,
            "accepted_first_try": first_try,
            "accepted_after_retry": accepted - first_try,
            "template_fallback": sources["template_fallback"],
            "acceptance_rate": round(accepted / asked, 4),
            "refusals": dict(refusals.most_common()),
        }
    return {
        "annotated": n,
        "per_class": {k: dict(v) for k, v in sorted(per_class.items())},
        "per_type": dict(per_type.most_common()),
        "sources": dict(sources),
        "type_sources": dict(type_sources),
        "without_type": per_type.get("None", 0),
        "teacher": teacher,
        "examples": examples,
    }


def write_report(
    cfg: AnnotateConfig,
    root: Path,
    problems: list[dict[str, str]],
    complete: bool,
    already: int = 0,
    written: int = 0,
    seconds: float = 0.0,
    records: list[dict[str, Any]] | None = None,
    sheet: Path | None = None,
) -> dict[str, Any]:
    """`annotations_report.json`. Written at the start with the settings only (`complete` false: what a rerun is
    compared with), then at the end with the counts of `records` (the whole file) and this run's problems."""
    report: dict[str, Any] = {
        "settings": cfg.settings(),
        "complete": complete,
        "meta": str(cfg.meta),
        "image_root": str(root),
        "annotations": str(cfg.out),
    }
    if complete:
        counts = Counter(p["kind"] for p in problems)
        report |= {
            "run": {
                "already_done": already,
                "written": written,
                "problems": len(problems),
                "seconds": round(seconds, 3),
                "images_per_s": round(written / seconds, 2) if written and seconds > 0 else None,
            },
            **summarize(records or []),
            "problem_counts": dict(counts.most_common()),
            "problem_meanings": {k: PROBLEMS[k] for k in counts},
            "problems": problems[:MAX_LISTED_PROBLEMS],
            "sheet": str(sheet) if sheet else None,
        }
    atomic_write_json(report_path(cfg.out), report)
    return report
