"""Read test files, predictions (ours or the original's) and annotations; match predictions to test images.

Speed matters (a million predictions in about a second): files are decoded with msgspec into structs that keep
only the fields evaluation reads, with the garbage collector paused while millions of small objects are made.
When the fast decoder rejects a file, the file is read again through the pydantic schemas of
`iadr1.data.schemas`, so the user sees the same one-line error (file, record, field) as everywhere in iadr1.
"""

from __future__ import annotations

import gc
import itertools
import mmap
import operator
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iadr1.data.io import iter_jsonl, read_json, read_json_or_jsonl
from iadr1.data.schemas import (
    OriginalAnswer,
    Prediction,
    TestEntry,
    format_validation_error,
    load_test_file,
    validate_record,
)
from iadr1.errors import DataError

LETTERS = ("A", "B", "E")  # code 0, 1, 2: yes (anomalous), no (normal), unanswered
LETTER_CODE = {letter: i for i, letter in enumerate(LETTERS)}
SHOW_FIRST = 5  # how many offending images a report names before "and N more"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: decoding a million records otherwise triggers hundreds of full
    collections that scan every object made so far (measured: 2-4x slower). Nothing made here has cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _file_bytes(path: Path) -> Iterator[Any]:
    """The file's bytes, memory-mapped (no copy of a 300 MB file into the heap; decoders copy what they keep)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the map
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


# ------------------------------------------------------------------------------------------------------------
# Ground truth
# ------------------------------------------------------------------------------------------------------------
class _Question(msgspec.Struct, gc=False):
    Answer: Any = None


class _Entry(msgspec.Struct, gc=False):
    conversation: list[_Question]
    location: Any = None  # optional ground truth carried by the test file (e.g. the synthetic dataset)
    type: Any = None


@dataclass
class GroundTruth:
    """The test images of one or more test files, as arrays aligned with `images`."""

    images: list[str]
    anomalous: np.ndarray  # bool, per image
    dataset_idx: np.ndarray  # int, index into `datasets`
    class_idx: np.ndarray  # int, index into `classes`
    datasets: list[str]
    classes: list[tuple[str, str]]  # (dataset, class)
    # Ground-truth defect location and type by image index, for anomalous images that carry them.
    defects: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def dataset_and_class(image: str) -> tuple[str, str]:
    """Dataset and class of an image path, by the rules of `TestEntry.dataset` / `TestEntry.cls_name`."""
    parts = image.split("/")
    dataset = parts[0]
    cls = parts[1] if len(parts) >= 3 and parts[1] not in ("test", "train") else parts[0]
    return dataset, cls


def _groups(images: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """Dataset and class index per image. The rule runs once per folder, not once per image."""
    # map() with C functions: no Python frame per image (a million images in a few tens of ms).
    folders = list(map(itemgetter(0), map(str.rpartition, images, itertools.repeat("/"))))
    folder_id = {f: i for i, f in enumerate(dict.fromkeys(folders))}
    codes = np.fromiter(map(folder_id.__getitem__, folders), np.int64, len(folders))
    datasets: dict[str, int] = {}
    classes: dict[tuple[str, str], int] = {}
    folder_ds = np.empty(len(folder_id), np.int64)
    folder_cls = np.empty(len(folder_id), np.int64)
    for folder, i in folder_id.items():
        ds, cls = dataset_and_class(f"{folder}/x") if folder else ("default", "default")
        folder_ds[i] = datasets.setdefault(ds, len(datasets))
        folder_cls[i] = classes.setdefault((ds, cls), len(classes))
    return folder_ds[codes], folder_cls[codes], list(datasets), list(classes)


def _read_test_file(path: Path) -> tuple[list[str], list[Any], list[_Entry]]:
    """Keys, first-question answers and entries of one test file; the schema's one-line error if bad."""
    try:
        with _file_bytes(path) as data, gc_paused():
            entries = msgspec.json.decode(data, type=dict[str, _Entry])
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        load_test_file(path)  # raises the schema's one-line error
        raise DataError(f"{path}: {e}") from None  # only if the schema accepts what msgspec refused
    if not entries:
        raise DataError(f"{path}: the test file lists no images")
    keys = list(entries)
    values = list(entries.values())
    try:
        answers = list(map(attrgetter("Answer"), map(itemgetter(0), map(attrgetter("conversation"), values))))
    except IndexError:
        answers = [e.conversation[0].Answer if e.conversation else None for e in values]
    if not set(answers) <= {"A", "B"}:
        bad = next(k for k, a in zip(keys, answers, strict=True) if a not in ("A", "B"))
        # Unknown label: the schema names the record and the field.
        validate_record(TestEntry, read_json(path)[bad], path, bad)
        raise DataError(f"{path}: record {bad!r}: field 'conversation.0.Answer': expected 'A' or 'B'")
    return keys, answers, values


def load_ground_truth(
    test_files: Sequence[str | os.PathLike],
    compat: bool = False,
    annotations: Sequence[str | os.PathLike] = (),
) -> GroundTruth:
    """Read test files into one `GroundTruth`.

    Labels come from each image's answer (A anomalous, B normal); with `compat`, from the original rule
    instead: normal when "good" is in the path. Ground-truth defect `location`/`type` come from the test
    entries' own fields, then from `annotations` files (which win). An image in two test files is an error.
    """
    if not test_files:
        raise DataError("no test file given (--test-file)")
    images: list[str] = []
    answers: list[Any] = []
    defects_by_image: dict[str, tuple[str | None, str | None]] = {}
    file_keys: list[list[str]] = []
    for f in test_files:
        path = Path(f)
        keys, file_answers, entries = _read_test_file(path)
        file_keys.append(keys)
        images.extend(keys)
        answers.extend(file_answers)
        locations = list(map(attrgetter("location"), entries))
        types = list(map(attrgetter("type"), entries))
        if locations.count(None) < len(keys) or types.count(None) < len(keys):
            for k, loc, typ in zip(keys, locations, types, strict=True):
                if loc is not None or typ is not None:
                    defects_by_image[k] = (_text_or_none(loc), _text_or_none(typ))
    if len(file_keys) > 1 and len(set(images)) < len(images):
        # Keys of one JSON object are unique (the decoder keeps one), so a repeat spans two files.
        seen: dict[str, str] = {}
        for f, keys in zip(test_files, file_keys, strict=True):
            for k in keys:
                if k in seen:
                    raise DataError(f"image {k!r} is in two test files: {seen[k]} and {f}")
                seen[k] = str(f)
    for f in annotations:
        defects_by_image.update(load_defect_annotations(f))

    if compat:
        has_good = map(str.__contains__, images, itertools.repeat("good"))
        anomalous = ~np.fromiter(has_good, bool, len(images))
    else:
        anomalous = np.fromiter(map("A".__eq__, answers), bool, len(answers))
    dataset_idx, class_idx, datasets, classes = _groups(images)
    defects: dict[int, tuple[str | None, str | None]] = {}
    if defects_by_image:
        index = {k: i for i, k in enumerate(images)}
        for k, v in defects_by_image.items():
            i = index.get(k)
            if i is not None and anomalous[i]:
                defects[i] = v
    return GroundTruth(
        images=images,
        anomalous=anomalous,
        dataset_idx=dataset_idx,
        class_idx=class_idx,
        datasets=datasets,
        classes=classes,
        defects=defects,
        sources=[str(f) for f in test_files],
    )


def _text_or_none(v: Any) -> str | None:
    return v.strip() or None if isinstance(v, str) else None


# ------------------------------------------------------------------------------------------------------------
# Annotations (ground-truth defect location and type)
# ------------------------------------------------------------------------------------------------------------
class DefectAnnotation(BaseModel):
    """The part of an annotation record evaluation reads: which image, where the defect is, what kind it is.

    Accepts the records of `iadr1.data.annotations` (which also carry `reasoning`, not needed here) and
    records with `img_path` instead of `image`. Extra fields are ignored.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, str_strip_whitespace=True)

    image: str = Field(min_length=1)
    location: str | None = None
    type: str | None = None

    @field_validator("location", "type", mode="after")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


def _no_image(v: Any) -> bool:
    return isinstance(v, dict) and "image" not in v and "img_path" not in v


def load_defect_annotations(path: str | os.PathLike) -> dict[str, tuple[str | None, str | None]]:
    """Read an annotations file (JSON Lines, a JSON list, or a JSON object keyed by image) into
    `{image: (location, type)}`. A bad record is a one-line `DataError` naming file and record."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records: list[tuple[str, Any]] = [(f"line {n}", obj) for n, obj in iter_jsonl(path)]
    else:
        obj = read_json(path)
        if isinstance(obj, dict):
            # Keyed by image: the key fills `image` when the record has none.
            records = [(k, {"image": k, **v} if _no_image(v) else v) for k, v in obj.items()]
        elif isinstance(obj, list):
            records = [(str(i), v) for i, v in enumerate(obj)]
        else:
            raise DataError(f"{path}: annotations are a JSON list, an object keyed by image, or JSON Lines")
    out: dict[str, tuple[str | None, str | None]] = {}
    for key, raw in records:
        if isinstance(raw, dict) and "image" not in raw and "img_path" in raw:
            raw = {**raw, "image": raw["img_path"]}
        try:
            ann = DefectAnnotation.model_validate(raw)
        except ValidationError as e:
            raise DataError(format_validation_error(path, key, e)) from None
        out[ann.image] = (ann.location, ann.type)
    return out


# ------------------------------------------------------------------------------------------------------------
# Predictions
# ------------------------------------------------------------------------------------------------------------
class _AnyPrediction(msgspec.Struct, gc=False):
    """A line of our predictions.jsonl or a record of the original's answers JSON: what eval reads of both."""

    image: str
    letter: Any = None
    answer: Any = None
    raw: Any = None
    p_yes: Any = None
    error: Any = None
    gpt_answer: Any = None  # the original's format
    correct_answer: Any = None
    question_type: Any = None


@dataclass
class Predictions:
    """Predictions of one or more files, as parallel lists (one entry per record)."""

    images: list[str]
    letters: list[str]  # A, B or E
    p_yes: np.ndarray  # float, NaN where absent
    raws: list[str | None]
    file_idx: np.ndarray  # int, index into `files`
    files: list[str]
    n_error: int = 0  # records with an `error` field (unreadable image at inference): scored unanswered
    n_skipped: int = 0  # original records of another question type
    correct_answers: list[str | None] = field(default_factory=list)  # the original's labels, cross-checked


def _slow_validate(path: Path) -> None:
    """Re-read a file through the pydantic schemas to raise their one-line error naming the record."""
    items: Iterator[tuple[str, Any]]
    if path.suffix == ".jsonl":
        items = ((f"line {n}", obj) for n, obj in iter_jsonl(path))
    else:
        items = ((str(i), obj) for i, obj in enumerate(read_json_or_jsonl(path)))
    for key, obj in items:
        model = OriginalAnswer if isinstance(obj, dict) and "gpt_answer" in obj else Prediction
        validate_record(model, obj, path, key)
        rec = msgspec.convert(obj, _AnyPrediction)  # raises if the schema is looser than what eval needs
        _record_letter(rec, path, key)


def _record_letter(rec: _AnyPrediction, path: Path, key: str) -> tuple[str, str | None]:
    """(letter, raw reply) of one record whose letter needs a decision; an unknown label names the record."""
    from iadr1.answers import parse

    if rec.gpt_answer is not None:  # the original's record
        if rec.correct_answer not in ("A", "B"):
            raise DataError(f"{path}: record {key!r}: field 'correct_answer': unknown label {rec.correct_answer!r}")
        g = rec.gpt_answer
        if not isinstance(g, str):
            raise DataError(f"{path}: record {key!r}: field 'gpt_answer': expected a string, got {g!r}")
        if g in LETTER_CODE:
            return g, None
        if len(g.strip()) <= 1:
            raise DataError(f"{path}: record {key!r}: field 'gpt_answer': unknown label {g!r} (expected A, B or E)")
        return parse(g).letter, g  # a full reply stored instead of a letter
    raw = rec.raw if isinstance(rec.raw, str) else None
    if rec.error is not None:
        return "E", None
    if rec.letter is not None:
        if rec.letter not in LETTER_CODE:
            raise DataError(
                f"{path}: record {key!r}: field 'letter': unknown label {rec.letter!r} (expected A, B or E)"
            )
        return rec.letter, raw
    if rec.answer is not None:
        if rec.answer not in ("yes", "no"):
            raise DataError(
                f"{path}: record {key!r}: field 'answer': unknown label {rec.answer!r} (expected yes or no)"
            )
        return ("A" if rec.answer == "yes" else "B"), raw
    return (parse(raw).letter if raw else "E"), raw


def _decode_predictions(path: Path) -> list[_AnyPrediction]:
    try:
        with _file_bytes(path) as data, gc_paused():
            if path.suffix == ".jsonl":
                return msgspec.json.Decoder(_AnyPrediction).decode_lines(data)
            return msgspec.json.decode(data, type=list[_AnyPrediction])
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        _slow_validate(path)
        if path.suffix == ".jsonl":  # a torn last line (killed writer) is skipped, as iter_jsonl does
            good = [obj for _, obj in iter_jsonl(path)]
            return [msgspec.convert(o, _AnyPrediction) for o in good]
        raise DataError(f"{path}: {e}") from None


def load_predictions(files: Sequence[str | os.PathLike]) -> Predictions:
    """Read prediction files (our JSONL, or the original's answers JSON list) in order, concatenated.

    The letter of a record: the original's `gpt_answer` letter; else our `letter`; else our `answer`; else
    the parsed `raw` reply. Records with an `error` are unanswered (E). An unknown label is an error naming
    the record.
    """
    if not files:
        raise DataError("no predictions file given (--predictions)")
    images: list[str] = []
    letters: list[str] = []
    p_yes: list[Any] = []
    raws: list[Any] = []
    correct: list[Any] = []
    file_idx: list[np.ndarray] = []
    n_error = n_skipped = 0
    for fi, f in enumerate(files):
        path = Path(f)
        recs = _decode_predictions(path)
        qtypes = set(map(attrgetter("question_type"), recs))
        if qtypes - {None, "Anomaly Detection"}:
            n_before = len(recs)
            recs = [r for r in recs if r.question_type in (None, "Anomaly Detection")]
            n_skipped += n_before - len(recs)
        with gc_paused():
            f_letters = list(map(attrgetter("letter"), recs))
            f_raws = list(map(attrgetter("raw"), recs))
            # The common case (every record of `iadr1 infer` carries a valid letter and no error) needs no
            # per-record decision; anything else goes through `_record_letter`, which names a bad record.
            plain = (
                set(f_letters) <= set(LETTERS)
                and set(map(attrgetter("error"), recs)) <= {None}
                and set(map(attrgetter("gpt_answer"), recs)) <= {None}
                and set(map(type, f_raws)) <= {str, type(None)}
            )
            if not plain:
                decided = [_record_letter(r, path, _record_key(path, i)) for i, r in enumerate(recs)]
                f_letters = [d[0] for d in decided]
                f_raws = [d[1] for d in decided]
                n_error += sum(r.error is not None for r in recs)
            images.extend(map(attrgetter("image"), recs))
            letters.extend(f_letters)
            raws.extend(f_raws)
            p_yes.extend(map(attrgetter("p_yes"), recs))
            correct.extend(map(attrgetter("correct_answer"), recs))
        file_idx.append(np.full(len(recs), fi, np.int32))
    fidx = np.concatenate(file_idx) if file_idx else np.zeros(0, np.int32)
    return Predictions(
        images=images,
        letters=letters,
        p_yes=_p_yes_array(p_yes, files, fidx),
        raws=raws,
        file_idx=fidx,
        files=[str(f) for f in files],
        n_error=n_error,
        n_skipped=n_skipped,
        correct_answers=correct,
    )


def _record_key(path: Path, i: int) -> str:
    return f"record {i + 1}" if path.suffix == ".jsonl" else str(i)


def _p_yes_array(p_yes: list[Any], files: Sequence[Any], file_idx: np.ndarray) -> np.ndarray:
    """`p_yes` as floats (NaN where absent); a value that is no probability is an error naming the record."""
    kinds = set(map(type, p_yes))
    bad_type = kinds - {float, int, type(None)}
    arr = np.full(len(p_yes), np.nan) if kinds <= {type(None)} or bad_type else np.array(p_yes, dtype=float)
    bad = ~np.isnan(arr) & ~((arr >= 0) & (arr <= 1))
    if bad_type:
        bad = np.fromiter((type(v) not in (float, int, type(None)) for v in p_yes), bool, len(p_yes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fi = int(file_idx[i])
        start = int(np.searchsorted(file_idx, fi, side="left"))
        raise DataError(
            f"{files[fi]}: record {i - start + 1}: field 'p_yes': {p_yes[i]!r} is not a probability in [0, 1]"
        )
    return arr


# ------------------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Matched:
    """Predictions aligned with the ground truth: one entry per test image."""

    letter_code: np.ndarray  # int8: 0 = A (yes), 1 = B (no), 2 = E (unanswered or no prediction)
    p_yes: np.ndarray  # float, NaN where unknown
    pred_raws: list[str | None]  # reply texts in prediction-file order (see `raw`)
    has_prediction: np.ndarray  # bool
    pred_index: np.ndarray  # int: the record (in the concatenated prediction files) of each image, -1 for none
    missing: list[str]  # test images without a prediction (scored unanswered)
    unknown: list[str]  # predicted images not in the test files (ignored)
    n_error: int
    n_skipped: int
    n_label_disagreements: int  # original records whose `correct_answer` differs from the test file's label

    def raw(self, i: int) -> str | None:
        """The reply text for test image `i`, None without one (replies are not copied into test order)."""
        j = int(self.pred_index[i])
        return self.pred_raws[j] if j >= 0 else None


def _hashes(items: list[str], salted: bool) -> np.ndarray:
    if salted:  # a second, independent 64-bit hash: of the string with a prefix
        return np.fromiter(map(hash, map(operator.add, itertools.repeat("\x00"), items)), np.int64, len(items))
    return np.fromiter(map(hash, items), np.int64, len(items))


def positions(keys: list[str], items: list[str]) -> np.ndarray:
    """Index in `keys` of each of `items` (-1 when absent); `keys` are unique.

    The same result as a dict lookup, about 3x faster for a million shuffled items: a dict lookup per item
    touches memory at random, sorting 64-bit hashes does not. Items are matched on two independent 64-bit
    string hashes (a false match needs both to collide: about 1e-26 for a million pairs); a collision among
    the keys themselves, never seen in practice, falls back to the dict.
    """
    n, m = len(keys), len(items)
    if items == keys:  # `iadr1 infer` writes in test-file order: no lookup at all
        return np.arange(n, dtype=np.int64)
    if n == 0 or m == 0:
        return np.full(m, -1, np.int64)
    k1, k2 = _hashes(keys, False), _hashes(keys, True)
    order = np.argsort(k1)
    sk1 = k1[order]
    if (sk1[1:] == sk1[:-1]).any():
        index = dict(zip(keys, range(n), strict=True))
        return np.fromiter(map(index.get, items, itertools.repeat(-1)), np.int64, m)
    i1, i2 = _hashes(items, False), _hashes(items, True)
    q = np.argsort(i1)  # sorted queries make the binary searches walk memory in order
    j = np.minimum(np.searchsorted(sk1, i1[q]), n - 1)
    hit = order[j]
    ok = (sk1[j] == i1[q]) & (k2[hit] == i2[q])
    pos = np.full(m, -1, np.int64)
    pos[q[ok]] = hit[ok]
    return pos


def match(gt: GroundTruth, preds: Predictions) -> Matched:
    """Align predictions with test images.

    Two predictions for one image (in one file or across shards) are an error naming the image and where both
    are; unknown images are reported and ignored; missing ones are scored unanswered.
    """
    n, m = len(gt), len(preds.images)
    pos = positions(gt.images, preds.images)
    known = pos >= 0
    counts = np.bincount(pos[known], minlength=n)
    if m and counts.max(initial=0) > 1:
        i = int(np.argmax(counts > 1))
        where = [
            f"{preds.files[preds.file_idx[j]]} record {j - _file_start(preds, j) + 1}" for j in np.flatnonzero(pos == i)
        ]
        raise DataError(f"two predictions for image {gt.images[i]!r}: {' and '.join(where[:2])}")
    unknown = [preds.images[j] for j in np.flatnonzero(~known)]
    sel = pos[known]
    src = np.flatnonzero(known)
    letter_code = np.full(n, LETTER_CODE["E"], np.int8)
    letter_code[sel] = np.fromiter(map(LETTER_CODE.__getitem__, preds.letters), np.int8, m)[src]
    p = np.full(n, np.nan)
    p[sel] = preds.p_yes[src]
    has = np.zeros(n, bool)
    has[sel] = True
    pred_index = np.full(n, -1, np.int64)
    pred_index[sel] = src
    missing = [gt.images[i] for i in np.flatnonzero(~has)]
    disagree = 0
    if preds.correct_answers.count(None) < len(preds.correct_answers):
        ca = np.array([c == "A" if c is not None else -1 for c in preds.correct_answers], dtype=np.int8)[src]
        given = ca >= 0
        disagree = int((ca[given].astype(bool) != gt.anomalous[sel][given]).sum())
    return Matched(
        letter_code=letter_code,
        p_yes=p,
        pred_raws=preds.raws,
        has_prediction=has,
        pred_index=pred_index,
        missing=missing,
        unknown=unknown,
        n_error=preds.n_error,
        n_skipped=preds.n_skipped,
        n_label_disagreements=disagree,
    )


def _file_start(preds: Predictions, j: int) -> int:
    return int(np.searchsorted(preds.file_idx, preds.file_idx[j], side="left"))
