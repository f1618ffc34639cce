"""Build the PA-SFT and SC-GRPO training files from a meta.json and an annotations file (docs/method.md §2).

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
- Test images never become training data unless asked for (`allow_test`, or `test` among `splits`; then the
  report warns with their count): the meta's `test` split and every image of the given test files. A build left
  with no defective training image is a `DataError` pointing to `iadr1 convert --train-share` (MVTec-style trees
  keep every defect in `test/`).
- The report compares the training images with the test images by content (never blocking): exact copies by a
  hash of the file's bytes, re-encoded ones by a perceptual hash within `NEAR_DISTANCE` bits (`data.io`).
"""

from __future__ import annotations

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
from iadr1.data.annotate.reasoning import generic_reasoning
from iadr1.data.annotations import PROBLEM_KINDS, Annotation, Problem, image_problem_kind, load_annotations
from iadr1.data.io import (
    NEAR_DISTANCE,
    NEAR_RMS,
    ImageFingerprint,
    atomic_write_json,
    atomic_write_text,
    inspect_image,
    resolve_under,
)
from iadr1.data.keys import KeyIndex, without_dataset
from iadr1.data.meta import read_meta, split_of
from iadr1.data.schemas import GRPORecord, MetaEntry, SFTRecord, load_test_file, validate_record
from iadr1.errors import DataError
from iadr1.prompts import grpo_problem, user_text
from iadr1.rewards.solution import validate_solution

REPORT_NAME = "build_report.json"
# The overlap report lists at most this many pairs of each kind (all are counted).
MAX_LISTED_PAIRS = 1000

# (stage, done, total): called as work advances, so a caller can drive a progress bar.
ProgressFn = Callable[[str, int, int], None]


class BuildConfig(BaseModel):
    """Options of `build_data` (the CLI's options, validated)."""

    model_config = ConfigDict(extra="forbid")

    shots: list[int] = Field(
        default_factory=lambda: [0], description="0 (zero-shot) and/or 1 (one reference); repeatable."
    )
    seed: int = Field(0, description="Seed of record order, validation split, reference draw, synthetic data.")
    val_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Hold out this fraction per (class, label) as *_val.json files."
    )
    strict: bool = Field(False, description="Fail on any problem instead of skipping and recording it.")
    workers: int | None = Field(None, ge=1, description="Image-check processes (default: CPU count).")
    compat: bool = Field(False, description="GRPO problem text exactly as the original (no space before the question).")
    splits: list[str] | None = Field(
        None,
        description="Use only meta entries of this split (train, test, template); repeatable. Default: every split "
        "but test. Naming test uses test images (warned).",
    )
    allow_test: bool = Field(
        False,
        description="Also train on test images (the meta's test split, the --test-file images); the count is warned "
        "about.",
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
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------
# Image checks
# ------------------------------------------------------------------------------------------------------------
def _check_batch(paths: list[str], fingerprint: bool = False) -> list[tuple[str | None, ImageFingerprint | None]]:
    return [inspect_image(p, fingerprint) for p in paths]


def _check_fingerprint_batch(paths: list[str]) -> list[tuple[str | None, ImageFingerprint | None]]:
    return _check_batch(paths, True)


def inspect_images(
    paths: Sequence[str | os.PathLike],
    fingerprint: bool = False,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    min_parallel: int = 512,
    chunk: int = 256,
) -> tuple[dict[str, str], dict[str, ImageFingerprint]]:
    """Decode every image once: `({path: problem}` of those missing, unreadable or corrupt, `{path: fingerprint})`
    of the readable ones when `fingerprint` (`data.io.inspect_image`; else empty).

    Batches of `chunk` paths go to a process pool (decoding is CPU-bound and Pillow holds the GIL for small
    files); fewer than `min_parallel` images, or `workers=1`, are checked in this process to save the pool's
    start-up. The pool uses `forkserver` so that a caller's threads (a progress bar) cannot deadlock a forked
    child.
    """
    items = [os.fspath(p) for p in paths]
    total = len(items)
    workers = workers or os.cpu_count() or 1
    done = 0
    results: list[tuple[str | None, ImageFingerprint | None]] = []
    batches = [items[i : i + chunk] for i in range(0, total, chunk)]
    check = _check_fingerprint_batch if fingerprint else _check_batch
    if on_progress:
        on_progress("checking images", 0, total)
    if workers == 1 or total < min_parallel:
        for b in batches:
            results.extend(check(b))
            done += len(b)
            if on_progress:
                on_progress("checking images", done, total)
    else:
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=min(workers, len(batches)), mp_context=ctx) as ex:
            for b, res in zip(batches, ex.map(check, batches), strict=True):
                results.extend(res)
                done += len(b)
                if on_progress:
                    on_progress("checking images", done, total)
    problems = {p: r[0] for p, r in zip(items, results, strict=True) if r[0] is not None}
    prints = {p: r[1] for p, r in zip(items, results, strict=True) if r[1] is not None}
    return problems, prints


def validate_images(
    paths: Sequence[str | os.PathLike],
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    min_parallel: int = 512,
    chunk: int = 256,
) -> dict[str, str]:
    """Decode every image once; return `{path: problem}` for those that are missing, unreadable or corrupt
    (`inspect_images` without fingerprints)."""
    return inspect_images(paths, False, workers, on_progress, min_parallel, chunk)[0]


# ------------------------------------------------------------------------------------------------------------
# Record texts
# ------------------------------------------------------------------------------------------------------------
def assistant_text(reasoning: str, anomalous: bool, location: str | None = None, type: str | None = None) -> str:
    """`<think>…</think>[<location>…</location><type>…</type>]<answer>Yes|No</answer>` (docs/method.md §1)."""
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
    test_files: Sequence[str | os.PathLike] = (),
) -> BuildResult:
    """Write `sft_{k}shot.json` and `grpo_{k}shot.json` (plus `*_val.json` with a validation split) and
    `build_report.json` into `out_dir`; see the module docstring for the rules. Returns what was written.

    `test_files`: benchmark test files whose images must stay out of training data (besides the meta's test
    split) and which the overlap report compares the training images with. Their keys are image paths under
    `image_root`, or (as `iadr1 convert` writes them for every layout but `folder`) the dataset name, then such a
    path.
    """
    config = config or BuildConfig()
    image_root = Path(image_root)
    out_dir = Path(out_dir)
    problems: list[Problem] = []
    warnings: list[str] = []

    # 1. Inputs: the meta's images, which of them are test images, and which are used ---------------------------
    test_keys = [k for f in test_files for k in load_test_file(f)]
    meta_map = meta if isinstance(meta, dict) else read_meta(meta)
    meta_name = "meta" if isinstance(meta, dict) else os.fspath(meta)
    listed: dict[str, MetaEntry] = {}
    for cls_entries in meta_map.values():
        for e in cls_entries:
            listed.setdefault(e.img_path, e)  # the same image listed twice is one image
    # Test-file keys carry the dataset name, meta paths may not (docs/convert.md, "Keys"): found in either form.
    key_index = KeyIndex(listed)
    test_images = _test_images(listed, test_keys, key_index)
    wanted = {s.lower() for s in config.splits} if config.splits else None
    use_test = config.allow_test or (wanted is not None and "test" in wanted)
    entries: dict[str, MetaEntry] = {}
    left_out: list[str] = []
    for p, e in listed.items():
        if wanted is not None and split_of(e) not in wanted:
            continue
        if p in test_images and not use_test:
            left_out.append(p)  # never training data unless asked for: scores on the test set would be inflated
            continue
        entries[p] = e
    used_test = sorted(p for p in entries if p in test_images)
    if used_test:
        asked = "--allow-test" if config.allow_test else "--split test"
        warnings.append(
            f"{len(used_test)} test images are in the training data (asked for with {asked}): a score on that test "
            "set no longer measures unseen images"
        )
    if not entries:
        which = f" in split {', '.join(sorted(wanted))}" if wanted else ""
        if left_out:
            raise DataError(
                f"{meta_name}: lists no training images{which}: all {len(left_out)} are test images (split test or "
                f"in a test file); {_LEAK_FREE_HINT}"
            )
        raise DataError(f"{meta_name}: lists no images{which}")
    if annotations is None:
        anns: dict[str, Annotation] = {}
    elif isinstance(annotations, dict):
        anns = annotations
    else:
        anns, ann_problems = load_annotations(annotations)
        problems.extend(ann_problems)
    anns = _by_meta_path(anns, key_index, problems)

    # 2. Open every image once (and fingerprint it when there are test images to compare with) -----------------
    paths = sorted(entries)
    root_s = os.fspath(image_root)
    files = {p: _image_file(root_s, p) for p in paths}
    test_image_files = {t: files.get(t) or _image_file(root_s, t) for t in sorted(test_images)}
    for key in test_keys:  # a test file's image the meta does not list: found under the image root
        if key_index.find(key) is None and key not in test_image_files:
            test_image_files[key] = _test_image_file(root_s, key)
    extra = sorted(set(test_image_files.values()) - set(files.values()))
    bad, prints = inspect_images(
        [*(files[p] for p in paths), *extra],
        fingerprint=bool(test_image_files),
        workers=config.workers,
        on_progress=on_progress,
    )
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

    # 6. Report, then (strict, or nothing defective to learn from) fail, or write ------------------------------
    report_path = out_dir / REPORT_NAME
    counts = _counts(entries, items, train, val, anns, problems)
    counts["test_left_out"], counts["test_used"] = len(left_out), len(used_test)
    per_class = _per_class(entries, items)
    overlap = _overlap([(it.path, files[it.path]) for it in train + val], list(test_image_files.items()), prints, bad)
    report = {
        "meta": None if isinstance(meta, dict) else _rel(meta, out_dir),
        "annotations": _rel(annotations, out_dir) if isinstance(annotations, (str, os.PathLike)) else None,
        "image_root": _rel(image_root, out_dir),
        "options": config.model_dump(),
        "counts": counts,
        "per_class": per_class,
        "problem_counts": dict(sorted(Counter(p.kind for p in problems).items())),
        "problems": [p.to_json() for p in problems],
        "warnings": warnings,
        "overlap": overlap,
        "files": {},
    }
    if config.strict and problems:
        atomic_write_json(report_path, report, indent=2)
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{first.kind.replace('_', ' ')}: {first.detail}{more}; nothing written, report: {report_path}")
    if not any(it.anomalous for it in train):
        # A set of normal images only teaches "always No": say why (MVTec-style trees keep every defect in test/).
        atomic_write_json(report_path, report, indent=2)
        kept_out = [listed[p] for p in sorted(test_images) if p not in entries]
        kept = (
            f"; the meta's {len(kept_out)} test images ({sum(e.anomaly for e in kept_out)} defective) are kept out "
            "of training"
            if kept_out
            else ""
        )
        raise DataError(
            f"{meta_name}: no defective image to train on ({len(train)} normal training images){kept}; "
            f"{_LEAK_FREE_HINT}; nothing written, report: {report_path}"
        )
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
    return BuildResult(out, problems, counts, per_class, report_path, report, warnings)


_LEAK_FREE_HINT = (
    "make a leak-free split with `iadr1 convert --layout L --root R --meta META --train-share 0.2` (moves a share of "
    "each defect type's test images to training and out of the test file), or train on test images anyway with "
    "--allow-test"
)


def _test_images(listed: dict[str, MetaEntry], test_keys: list[str], key_index: KeyIndex) -> set[str]:
    """Meta paths of the test images: the meta's `test` split and the images the test files name."""
    named = {key_index.find(k) for k in test_keys}
    return {p for p, e in listed.items() if split_of(e) == "test" or p in named}


def _by_meta_path(anns: dict[str, Annotation], key_index: KeyIndex, problems: list[Problem]) -> dict[str, Annotation]:
    """Annotations keyed by the meta path of their image: an annotation may name it by test key too (the dataset name
    first). Two annotations for one image are a `duplicate_annotation` (the first is kept); an image the meta does
    not list keeps its name (counted as unused)."""
    out: dict[str, Annotation] = {}
    for name, ann in anns.items():
        path = key_index.find(name) or name
        if path in out:
            problems.append(Problem("duplicate_annotation", path, f"{name}: a second annotation for image {path!r}"))
            continue
        out[path] = ann
    return out


def _test_image_file(root: str, key: str) -> str:
    """The file of a test-file key the meta does not list: `root/key`, else `root/` + the key without the dataset
    name (keys of non-folder layouts), else `root/key` (reported as missing)."""
    path = _image_file(root, key)
    if os.path.exists(path) or "/" not in key:
        return path
    rest = _image_file(root, without_dataset(key))
    return rest if os.path.exists(rest) else path


def _popcount(x: Any) -> Any:
    """Set bits of each uint64 of a contiguous array (`np.bitwise_count` needs numpy 2; we allow numpy 1.24)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int16)
    table = np.array([bin(i).count("1") for i in range(256)], np.int16)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def _overlap(
    training: list[tuple[str, str]],
    tests: list[tuple[str, str]],
    prints: dict[str, ImageFingerprint],
    bad: dict[str, str],
) -> dict[str, Any]:
    """Training images that are copies of test images, by content: `exact` (same bytes) and `near` (the same picture
    re-encoded: `ImageFingerprint.is_near`). `training`, `tests`: (name, file) pairs. An image is never compared
    with itself (a test image used for training on purpose is counted elsewhere)."""
    import numpy as np

    test_fp = [(name, f, prints[f]) for name, f in tests if f in prints]
    train_fp = [(name, f, prints[f]) for name, f in training if f in prints]
    by_sha: dict[str, list[str]] = {}
    for name, _, fp in test_fp:
        by_sha.setdefault(fp.sha, []).append(name)
    exact = sorted((name, t) for name, _, fp in train_fp for t in by_sha.get(fp.sha, ()) if t != name)
    near: list[tuple[int, float, str, str]] = []
    tr = [(name, fp) for name, _, fp in train_fp if fp.phash is not None]
    te = [(name, fp) for name, _, fp in test_fp if fp.phash is not None]
    if tr and te:
        # 128-bit hashes as two uint64 columns; Hamming distances by blocks of training images (bounded memory);
        # the few pairs within NEAR_DISTANCE are then confirmed by their thumbnails.
        def halves(fps: list[tuple[str, ImageFingerprint]]) -> tuple[np.ndarray, np.ndarray]:
            hashes = [fp.phash for _, fp in fps]
            hi = np.fromiter((h >> 64 for h in hashes), np.uint64, len(hashes))
            lo = np.fromiter((h & 0xFFFF_FFFF_FFFF_FFFF for h in hashes), np.uint64, len(hashes))
            return hi, lo

        (a_hi, a_lo), (b_hi, b_lo) = halves(tr), halves(te)
        step = max(1, 1_000_000 // len(te))
        for s in range(0, len(tr), step):
            d = _popcount(a_hi[s : s + step, None] ^ b_hi[None, :]) + _popcount(
                a_lo[s : s + step, None] ^ b_lo[None, :]
            )
            for i, j in zip(*np.nonzero(d <= NEAR_DISTANCE), strict=True):
                (a, fa), (b, fb) = tr[s + int(i)], te[int(j)]
                if a != b and fa.sha != fb.sha and fa.is_near(fb):  # same bytes: listed as exact
                    near.append((int(d[i, j]), round(fa.thumbnail_rms(fb), 2), a, b))
        near.sort()
    return {
        "max_distance": NEAR_DISTANCE,
        "max_thumbnail_rms": NEAR_RMS,
        "training_images": len(train_fp),
        "test_images": len(test_fp),
        "unreadable_test_images": sum(1 for _, f in tests if f in bad),
        "flat_images": sum(fp.phash is None for _, _, fp in (*train_fp, *test_fp)),
        "exact": {
            "count": len(exact),
            "pairs": [{"train": a, "test": b} for a, b in exact[:MAX_LISTED_PAIRS]],
        },
        "near": {
            "count": len(near),
            "pairs": [
                {"train": a, "test": b, "distance": d, "thumbnail_rms": r} for d, r, a, b in near[:MAX_LISTED_PAIRS]
            ],
        },
    }


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
