"""Build the PA-SFT and SC-GRPO training files from a meta.json and an annotations file (REFERENCE.md §2).

`build_data` opens every image once (in parallel), skips and records what it cannot use (unreadable, corrupt
or missing images; malformed or missing annotations; classes with no normal reference image for one-shot
records), writes one file per stage, shot count and split, validates every record it writes, and writes a JSON
report. With `strict` any problem is a `DataError` (after the report is written).

Decisions a user must know:
- Image paths in records are the meta.json `img_path`s: relative to the image root (trainers take
  `--image-root`).
- A normal image without an annotation gets a generic reasoning text (`generic_reasoning`); an anomalous
  image without an annotation that has reasoning, location and type is skipped (`missing_annotation`).
  Normal images never get `<location>`/`<type>` tags, even when their annotation has them.
- One-shot records (`shots=1`) pair each query with a reference: another readable normal image of the same
  class from the training split, chosen by a seeded draw that depends only on (seed, query path), so adding
  images does not reshuffle the other pairs. Validation queries draw references from the training split too.
- The validation split is stratified by (class, normal/anomalous); the same images are held out for every
  file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iadr1.answers import parse
from iadr1.data.annotations import PROBLEM_KINDS, Annotation, Problem, image_problem_kind, load_annotations
from iadr1.data.convert import read_meta, split_of
from iadr1.data.io import atomic_write_json, atomic_write_text, check_image, resolve_under
from iadr1.data.schemas import GRPORecord, MetaEntry, SFTRecord, validate_record
from iadr1.errors import DataError
from iadr1.prompts import grpo_problem, user_text
from iadr1.rewards.solution import validate_solution

REPORT_NAME = "build_report.json"

# (stage, done, total): called as work advances, so a caller can drive a progress bar.
ProgressFn = Callable[[str, int, int], None]


class BuildConfig(BaseModel):
    """Options of `build_data` (the CLI's options, validated)."""

    model_config = ConfigDict(extra="forbid")

    shots: list[int] = Field(default_factory=lambda: [0], description="shot counts to write: 0, 1 or both")
    seed: int = Field(0, description="seed of the record order, the validation split and the reference draw")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction held out per (class, label)")
    strict: bool = Field(False, description="fail on the first problem instead of skipping and recording it")
    workers: int | None = Field(None, ge=1, description="image-check processes (default: CPU count)")
    compat: bool = Field(False, description="GRPO problem text without the space the original forgot")
    splits: list[str] | None = Field(
        None,
        description="use only meta entries of these splits (train, test, template); default: all entries",
    )

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s not in (0, 1)]
        if bad or not v:
            raise ValueError(f"shots must be 0 and/or 1 (one reference image), got {v}")
        return sorted(set(v))


@dataclass
class OutputFile:
    path: Path
    records: int


@dataclass
class BuildResult:
    """What `build_data` wrote: files by name (`sft_0shot`, `grpo_1shot_val`, ...), problems, counts, the
    report."""

    files: dict[str, OutputFile]
    problems: list[Problem]
    counts: dict[str, int]
    per_class: dict[str, dict[str, int]]
    report_path: Path
    report: dict[str, Any] = field(repr=False)


# ------------------------------------------------------------------------------------------------------------
# Image checks
# ------------------------------------------------------------------------------------------------------------
def _check_batch(paths: list[str]) -> list[str | None]:
    return [check_image(p) for p in paths]


def validate_images(
    paths: Sequence[str | os.PathLike],
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    min_parallel: int = 512,
    chunk: int = 256,
) -> dict[str, str]:
    """Decode every image once; return `{path: problem}` for those that are missing, unreadable or corrupt.

    Batches of `chunk` paths go to a process pool (decoding is CPU-bound and Pillow holds the GIL for small
    files); fewer than `min_parallel` images, or `workers=1`, are checked in this process to save the pool's
    start-up. The pool uses `forkserver` so that a caller's threads (a progress bar) cannot deadlock a forked
    child.
    """
    items = [os.fspath(p) for p in paths]
    total = len(items)
    workers = workers or os.cpu_count() or 1
    done = 0
    results: list[str | None] = []
    batches = [items[i : i + chunk] for i in range(0, total, chunk)]
    if on_progress:
        on_progress("checking images", 0, total)
    if workers == 1 or total < min_parallel:
        for b in batches:
            results.extend(_check_batch(b))
            done += len(b)
            if on_progress:
                on_progress("checking images", done, total)
    else:
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=min(workers, len(batches)), mp_context=ctx) as ex:
            for b, res in zip(batches, ex.map(_check_batch, batches), strict=True):
                results.extend(res)
                done += len(b)
                if on_progress:
                    on_progress("checking images", done, total)
    return {p: r for p, r in zip(items, results, strict=True) if r is not None}


# ------------------------------------------------------------------------------------------------------------
# Record texts
# ------------------------------------------------------------------------------------------------------------
_GENERIC_REASONING = (
    "The {cls} in the image looks uniform and intact. I see no scratch, hole, stain, crack, missing part, "
    "deformation or foreign object anywhere in the image, so it is normal.",
    "I inspect the whole {cls} surface: the texture and shading are consistent everywhere and nothing is "
    "broken, "
    "missing or out of place. There is no defect.",
    "The image shows a regular {cls} with no visible damage, contamination or irregularity. "
    "It matches a normal sample.",
)


def generic_reasoning(cls_name: str, img_path: str) -> str:
    """Reasoning text for a normal image that has no annotation: one of a few templates, chosen by the path's
    hash (stable across runs and independent of the seed)."""
    h = int.from_bytes(hashlib.sha1(img_path.encode()).digest()[:4], "big")
    return _GENERIC_REASONING[h % len(_GENERIC_REASONING)].format(cls=cls_name.replace("_", " "))


def assistant_text(reasoning: str, anomalous: bool, location: str | None = None, type: str | None = None) -> str:
    """`<think>…</think>[<location>…</location><type>…</type>]<answer>Yes|No</answer>` (REFERENCE.md section
    1)."""
    return f"<think>{reasoning}</think>" + solution_text(anomalous, location, type)


def solution_text(anomalous: bool, location: str | None = None, type: str | None = None) -> str:
    """The SC-GRPO `solution`: `<answer>No</answer>`, or location, type and `<answer>Yes</answer>` for a
    defect."""
    if not anomalous:
        return "<answer>No</answer>"
    if not location or not type:
        raise ValueError("an anomalous solution needs both a location and a type")
    return f"<location>{location}</location><type>{type}</type><answer>Yes</answer>"


def sft_user_text(shots: int) -> str:
    """PA-SFT user turn: `prompts.user_text`, the same text the k-shot inference prompt renders, so training and
    inference prompts agree token for token. One-shot: preamble, reference, test-sample line, query, question."""
    return user_text(shots)


def sft_record(query: str, assistant: str, reference: str | None = None) -> dict[str, Any]:
    images: str | list[str] = query if reference is None else [reference, query]
    return {
        "images": images,
        "messages": [
            {"role": "user", "content": sft_user_text(0 if reference is None else 1)},
            {"role": "assistant", "content": assistant},
        ],
    }


def grpo_record(
    id: str, query: str, solution: str, reference: str | None = None, compat: bool = False
) -> dict[str, Any]:
    image: str | list[str] = query if reference is None else [reference, query]
    return {
        "id": id,
        "image": image,
        "problem": grpo_problem(0 if reference is None else 1, compat),
        "solution": solution,
    }


# ------------------------------------------------------------------------------------------------------------
# The build
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    entry: MetaEntry
    reasoning: str
    location: str | None
    type: str | None

    @property
    def path(self) -> str:
        return self.entry.img_path

    @property
    def anomalous(self) -> bool:
        return self.entry.anomaly == 1


def _split(items: list[_Item], val_fraction: float, seed: int) -> tuple[list[_Item], list[_Item]]:
    """Stratified by (class, label); deterministic for a seed. Returns (train, val), each sorted by path."""
    if val_fraction <= 0:
        return sorted(items, key=lambda it: it.path), []
    groups: dict[tuple[str, int], list[_Item]] = {}
    for it in items:
        groups.setdefault((it.entry.cls_name, it.entry.anomaly), []).append(it)
    train: list[_Item] = []
    val: list[_Item] = []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda it: it.path)
        random.Random(f"{seed}:split:{key[0]}:{key[1]}").shuffle(g)
        n_val = int(len(g) * val_fraction + 0.5)  # half up, as the synthetic defect rate
        val.extend(g[:n_val])
        train.extend(g[n_val:])
    return sorted(train, key=lambda it: it.path), sorted(val, key=lambda it: it.path)


def _pick_reference(query: str, pool: list[str], index: dict[str, int], seed: int) -> str | None:
    """A seeded draw from `pool` (whose positions `index` gives) that depends only on (seed, query), never the
    query itself. O(1) per query: one draw among the others, stepping over the query's own position."""
    own = index.get(query)
    n = len(pool) - (own is not None)
    if n <= 0:
        return None
    j = random.Random(f"{seed}:ref:{query}").randrange(n)
    if own is not None and j >= own:
        j += 1
    return pool[j]


def _check_targets(path: str, assistant: str, solution: str, anomalous: bool) -> None:
    """The texts a record teaches must follow the output grammar and give the right answer (per image)."""
    a = parse(assistant)
    if not a.well_formed or a.answer != ("yes" if anomalous else "no"):
        raise DataError(f"{path}: target {assistant[:80]!r} does not follow the output grammar")
    try:
        validate_solution(solution)  # what the SC-GRPO trainer will check: fail here, not there
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None


def _check_written(records: list[dict[str, Any]], path: Path, kind: str) -> None:
    """Every record must load through its schema (`SFTRecord` / `GRPORecord`), as the trainers load it."""
    model = SFTRecord if kind == "sft" else GRPORecord
    for i, rec in enumerate(records):
        validate_record(model, rec, path, i)


def _records_json(records: list[dict[str, Any]]) -> str:
    """A JSON list with one record per line: readable, diff-friendly, and written by the C encoder (fast)."""
    if not records:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def _image_file(root: str, rel: str) -> str:
    """`root/rel`, refusing absolute or escaping paths; plain relative paths skip the slower pathlib check."""
    if rel and rel[0] != "/" and rel[1:2] != ":" and ".." not in rel and "\\" not in rel:
        return os.path.join(root, rel)
    return os.fspath(resolve_under(root, rel, what="img_path"))


def build_data(
    meta: str | os.PathLike | dict[str, list[MetaEntry]],
    annotations: str | os.PathLike | dict[str, Annotation] | None,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BuildConfig | None = None,
    on_progress: ProgressFn | None = None,
) -> BuildResult:
    """Write `sft_{k}shot.json` and `grpo_{k}shot.json` (plus `*_val.json` with a validation split) and
    `build_report.json` into `out_dir`; see the module docstring for the rules. Returns what was written."""
    config = config or BuildConfig()
    image_root = Path(image_root)
    out_dir = Path(out_dir)
    problems: list[Problem] = []

    # 1. Inputs ----------------------------------------------------------------------------------------------
    meta_map = meta if isinstance(meta, dict) else read_meta(meta)
    meta_name = "meta" if isinstance(meta, dict) else os.fspath(meta)
    entries: dict[str, MetaEntry] = {}
    wanted = {s.lower() for s in config.splits} if config.splits else None
    for cls_entries in meta_map.values():
        for e in cls_entries:
            if wanted is None or split_of(e) in wanted:
                entries.setdefault(e.img_path, e)  # the same image listed twice is one image
    if not entries:
        which = f" in split {', '.join(sorted(wanted))}" if wanted else ""
        raise DataError(f"{meta_name}: lists no images{which}")
    if annotations is None:
        anns: dict[str, Annotation] = {}
    elif isinstance(annotations, dict):
        anns = annotations
    else:
        anns, ann_problems = load_annotations(annotations)
        problems.extend(ann_problems)

    # 2. Open every image once -------------------------------------------------------------------------------
    paths = sorted(entries)
    root_s = os.fspath(image_root)
    files = {p: _image_file(root_s, p) for p in paths}
    bad = validate_images([files[p] for p in paths], workers=config.workers, on_progress=on_progress)
    for p in paths:
        detail = bad.get(files[p])
        if detail is not None:
            problems.append(Problem(image_problem_kind(detail), p, f"{files[p]}: {detail}"))
    bad_paths = {pr.item for pr in problems if pr.kind in _IMAGE_KINDS}

    # 3. Pair images with reasoning --------------------------------------------------------------------------
    items: list[_Item] = []
    for p in paths:
        if p in bad_paths:
            continue
        e = entries[p]
        ann = anns.get(p)
        if e.anomaly == 0:
            reasoning = ann.reasoning if ann else generic_reasoning(e.cls_name, p)
            items.append(_Item(e, reasoning, None, None))
            continue
        missing = [] if ann else ["annotation"]
        if ann:
            missing = [f for f in ("location", "type") if not getattr(ann, f)]
        if missing:
            what = "no annotation" if ann is None else "annotation has no " + " and no ".join(missing)
            problems.append(Problem("missing_annotation", p, f"{p}: anomalous image, {what}"))
            continue
        assert ann is not None and ann.location and ann.type
        items.append(_Item(e, ann.reasoning, ann.location, ann.type))

    # 4. Split and one-shot references -----------------------------------------------------------------------
    train, val = _split(items, config.val_fraction, config.seed)
    pools: dict[str, list[str]] = {}
    for it in train:
        if not it.anomalous:
            pools.setdefault(it.entry.cls_name, []).append(it.path)
    references: dict[str, str | None] = {}
    indexes = {cls: {p: i for i, p in enumerate(pool)} for cls, pool in pools.items()}
    if 1 in config.shots:
        for it in train + val:
            cls = it.entry.cls_name
            ref = _pick_reference(it.path, pools.get(cls, []), indexes.get(cls, {}), config.seed)
            references[it.path] = ref
            if ref is None:
                problems.append(
                    Problem(
                        "no_reference",
                        it.path,
                        f"{it.path}: class {it.entry.cls_name!r} has no other readable "
                        "normal training image to use as the one-shot reference",
                    )
                )

    # 5. Records (each image's target texts are built and checked once, then shared by every file) -----------
    targets: dict[str, tuple[str, str]] = {}
    for it in train + val:
        assistant = assistant_text(it.reasoning, it.anomalous, it.location, it.type)
        solution = solution_text(it.anomalous, it.location, it.type)
        _check_targets(it.path, assistant, solution, it.anomalous)
        targets[it.path] = (assistant, solution)
    out: dict[str, OutputFile] = {}
    written: dict[str, list[dict[str, Any]]] = {}
    for split_name, split_items in (("", train), ("_val", val)):
        if split_name and not split_items:
            continue
        order = list(split_items)
        random.Random(f"{config.seed}:order{split_name}").shuffle(order)
        for k in config.shots:
            sft, grpo = [], []
            for it in order:
                ref = references[it.path] if k == 1 else None
                if k == 1 and ref is None:
                    continue
                assistant, solution = targets[it.path]
                sft.append(sft_record(it.path, assistant, ref))
                grpo.append(grpo_record(it.path, it.path, solution, ref, config.compat))
            written[f"sft_{k}shot{split_name}"] = sft
            written[f"grpo_{k}shot{split_name}"] = grpo

    # 6. Report, then (strict) fail or write -----------------------------------------------------------------
    report_path = out_dir / REPORT_NAME
    counts = _counts(entries, items, train, val, anns, problems)
    per_class = _per_class(entries, items)
    report = {
        "meta": None if isinstance(meta, dict) else _rel(meta, out_dir),
        "annotations": _rel(annotations, out_dir) if isinstance(annotations, (str, os.PathLike)) else None,
        "image_root": _rel(image_root, out_dir),
        "options": config.model_dump(),
        "counts": counts,
        "per_class": per_class,
        "problem_counts": dict(sorted(Counter(p.kind for p in problems).items())),
        "problems": [p.to_json() for p in problems],
        "files": {},
    }
    if config.strict and problems:
        atomic_write_json(report_path, report, indent=2)
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{first.kind.replace('_', ' ')}: {first.detail}{more}; nothing written, report: {report_path}")
    for name, records in written.items():
        path = out_dir / f"{name}.json"
        _check_written(records, path, "sft" if name.startswith("sft") else "grpo")
        atomic_write_text(path, _records_json(records))
        out[name] = OutputFile(path, len(records))
    # A file of ours left by an earlier run with other options (say, a validation split) would look current.
    for stale in _OUTPUT_NAMES - set(written):
        (out_dir / f"{stale}.json").unlink(missing_ok=True)
    report["files"] = {name: {"path": f.path.name, "records": f.records} for name, f in out.items()}
    atomic_write_json(report_path, report, indent=2)
    return BuildResult(out, problems, counts, per_class, report_path, report)


_OUTPUT_NAMES = frozenset(
    f"{stage}_{k}shot{split}" for stage in ("sft", "grpo") for k in (0, 1) for split in ("", "_val")
)


def _rel(path: str | os.PathLike, start: Path) -> str:
    """`path` relative to the report's folder, so that a report does not depend on where the tree lives."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return os.fspath(path)


_IMAGE_KINDS = frozenset({"missing_image", "unreadable_image", "empty_image", "not_an_image", "corrupt_image"})
assert set(PROBLEM_KINDS) >= _IMAGE_KINDS


def _counts(
    entries: dict[str, MetaEntry],
    items: list[_Item],
    train: list[_Item],
    val: list[_Item],
    anns: dict[str, Annotation],
    problems: list[Problem],
) -> dict[str, int]:
    return {
        "images": len(entries),
        "usable": len(items),
        "skipped": len(entries) - len(items),
        "normal": sum(not it.anomalous for it in items),
        "anomalous": sum(it.anomalous for it in items),
        "train": len(train),
        "val": len(val),
        "annotations": len(anns),
        "unused_annotations": sum(1 for p in anns if p not in entries),
        "problems": len(problems),
    }


def _per_class(entries: dict[str, MetaEntry], items: list[_Item]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for e in entries.values():
        out.setdefault(e.cls_name, {"normal": 0, "anomalous": 0, "skipped": 0})
    usable = {it.path for it in items}
    for it in items:
        out[it.entry.cls_name]["anomalous" if it.anomalous else "normal"] += 1
    for p, e in entries.items():
        if p not in usable:
            out[e.cls_name]["skipped"] += 1
    return dict(sorted(out.items()))
