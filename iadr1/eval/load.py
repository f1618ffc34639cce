"""Read test files, predictions (ours or the original's) and annotations; match predictions to test images.

Speed matters (a million images, CPU time: the 283 MB test file in 1.1-1.2 s, 300 MB of predictions in 0.65-0.7 s,
matching in 0.33-0.48 s; docs/eval.md): files are decoded with msgspec into structs that keep only the fields
evaluation reads, with the garbage collector paused while millions of small objects are made; a big test file is
read in a forked child while the predictions are read (`TestFileReader`). The usual files are
decoded into strictly typed structs (`decoders.Entry`, `decoders.PlainPrediction`), so that decoding is the whole
check; any other file is decoded again as it is (`AnyEntry`, `AnyPrediction`) and judged record by record. Every
msgspec decoder lives in `iadr1.eval.decoders`, beside the pydantic twin it answers to. When the decoder rejects
a file, the file is read again through the pydantic schemas of `iadr1.data.schemas`, so the user sees the same
one-line error (file, record, field) as everywhere in iadr1. Nothing is dropped without a word: an image key that
appears twice in a test file, a reply (`raw`) that is not text and a `p_yes` that is NaN are errors, on both paths.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from iadr1.data.annotations import load_defects
from iadr1.data.io import gc_paused, iter_records, read_json
from iadr1.data.keys import NORMAL_SPECIE, KeyIndex, dataset_and_class, specie_of
from iadr1.data.schemas import (
    DETECTION_TYPE,
    OriginalAnswer,
    Prediction,
    TestEntry,
    load_test_file,
    validate_record,
)
from iadr1.errors import DataError
from iadr1.eval import decoders
from iadr1.eval.decoders import AnyEntry, AnyPrediction, PlainPrediction

# `gc_paused` and `dataset_and_class` are imported from here by older callers (benchmarks/bench_eval.py).
__all__ = [
    "GroundTruth",
    "Matched",
    "Predictions",
    "TestFileReader",
    "dataset_and_class",
    "gc_paused",
    "load_ground_truth",
    "load_predictions",
    "match",
    "positions",
]

LETTERS = ("A", "B", "E")  # code 0, 1, 2: yes (anomalous), no (normal), unanswered
LETTER_CODE = {letter: i for i, letter in enumerate(LETTERS)}
SHOW_FIRST = 5  # how many offending images a report names before "and N more"


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
# A test file is decoded as `decoders.Entry` first: the usual file, whose answers are all A or B and which carries no
# ground-truth location or type. Any other file is decoded again as `AnyEntry`, as it is, and judged record by record.


@dataclass(frozen=True)
class AnnotationMatch:
    """How the images of one annotations file matched the test images (by `iadr1.data.keys.KeyIndex`)."""

    file: str
    n: int  # annotations read
    matched: int  # of them naming a test image (in either key form)
    unmatched_first: list[str]  # the first few that name none


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
    specie_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int, index into `species`
    species: list[str] = field(default_factory=list)  # defect kinds (`iadr1.data.keys.specie_of`)
    annotation_matches: list[AnnotationMatch] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _groups(
    images: Sequence[str], anomalous: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]], np.ndarray, list[str]]:
    """Dataset, class and specie index per image (`iadr1.data.keys`). The rules run once per folder, not once per
    image."""
    # map() with C functions: no Python frame per image (a million images in a few tens of ms).
    folders = list(map(itemgetter(0), map(str.rpartition, images, itertools.repeat("/"))))
    folder_id = {f: i for i, f in enumerate(dict.fromkeys(folders))}
    codes = np.fromiter(map(folder_id.__getitem__, folders), np.int64, len(folders))
    datasets: dict[str, int] = {}
    classes: dict[tuple[str, str], int] = {}
    species: dict[str, int] = {NORMAL_SPECIE: 0}  # normal images are `good`, whatever their folder
    folder_ds = np.empty(len(folder_id), np.int64)
    folder_cls = np.empty(len(folder_id), np.int64)
    folder_sp = np.empty(len(folder_id), np.int64)  # the specie of a defective image in this folder
    for folder, i in folder_id.items():
        key = f"{folder}/x" if folder else "x"  # any image of the folder: the rules read folders only
        ds, cls = dataset_and_class(key)
        folder_ds[i] = datasets.setdefault(ds, len(datasets))
        folder_cls[i] = classes.setdefault((ds, cls), len(classes))
        folder_sp[i] = species.setdefault(specie_of(key, True), len(species))
    specie_idx = np.where(anomalous, folder_sp[codes], 0)
    return folder_ds[codes], folder_cls[codes], list(datasets), list(classes), specie_idx, list(species)


def _detection_answer(conversation: Sequence[Any]) -> Any:
    """The answer of the anomaly-detection question: the first of that type, else the first question's."""
    for q in conversation:
        if q.type == DETECTION_TYPE:
            return q.Answer
    return conversation[0].Answer if conversation else None


def _read_test_file(path: Path) -> tuple[list[str], list[Any], dict[str, tuple[str | None, str | None]]]:
    """Keys, first-question answers and ground-truth (location, type) by image of one test file; the schema's
    one-line error if bad."""
    try:
        with _file_bytes(path) as data, gc_paused():
            entries, n_decoded = decoders.decode_test_file(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        load_test_file(path)  # raises the schema's one-line error
        raise DataError(f"{path}: {e}") from None  # only if the schema accepts what msgspec refused
    if n_decoded != len(entries):
        read_json(path)  # raises the one-line error naming the repeated key
        raise DataError(f"{path}: an image key appears twice")  # only if json saw no repeat: never expected
    if not entries:
        raise DataError(f"{path}: the test file lists no images")
    keys = list(entries)
    values = list(entries.values())
    if isinstance(values[0], AnyEntry):  # the general path: an MMAD file's label is its detection question's
        answers = [_detection_answer(e.conversation) for e in values]
    else:
        try:
            answers = list(map(attrgetter("Answer"), map(itemgetter(0), map(attrgetter("conversation"), values))))
        except IndexError:
            answers = [e.conversation[0].Answer if e.conversation else None for e in values]
    if answers.count("A") + answers.count("B") < len(answers):  # compared, not hashed: an answer may be anything
        bad = next(k for k, a in zip(keys, answers, strict=True) if a not in ("A", "B"))
        # Unknown label: the schema names the record and the field.
        validate_record(TestEntry, read_json(path)[bad], path, bad)
        raise DataError(f"{path}: record {bad!r}: field 'conversation.0.Answer': expected 'A' or 'B'")
    defects: dict[str, tuple[str | None, str | None]] = {}
    if isinstance(values[0], AnyEntry):  # an `Entry` has neither location nor type
        locations = list(map(attrgetter("location"), values))
        types = list(map(attrgetter("type"), values))
        if locations.count(None) < len(keys) or types.count(None) < len(keys):
            for k, loc, typ in zip(keys, locations, types, strict=True):
                if loc is not None or typ is not None:
                    defects[k] = (_text_or_none(loc), _text_or_none(typ))
    return keys, answers, defects


# ------------------------------------------------------------------------------------------------------------
# Reading big test files on the second core
# ------------------------------------------------------------------------------------------------------------
BACKGROUND_MIN_BYTES = 64 * 2**20  # smaller test files are read in place: a fork is not worth it


class TestFileReader:
    """Read test files in a forked child process while the caller decodes the predictions (msgspec holds the
    GIL, so a thread would not overlap): 1.0 s of a million-image test file then costs the caller ~0.1 s.

    The child sends back the keys, answers and defects of `_read_test_file` (msgpack through a pipe). Anything
    going wrong in the child (an error in the file included) makes `result()` read the files again in the caller,
    so errors and results are exactly those of the serial path. `start` returns None (read in place) when the
    files are small, when this is not Linux, or when other Python threads run (forking them is unsafe).
    """

    __test__ = False  # not a pytest class

    def __init__(self, paths: list[Path], pid: int, fd: int) -> None:
        self.paths, self.pid, self.fd = paths, pid, fd

    @classmethod
    def start(cls, test_files: Sequence[str | os.PathLike], force: bool = False) -> TestFileReader | None:
        import sys
        import threading

        paths = [Path(f) for f in test_files]
        try:
            size = sum(p.stat().st_size for p in paths)
        except OSError:
            return None  # a missing file: the serial path names it
        if not force and (size < BACKGROUND_MIN_BYTES or os.cpu_count() == 1):
            return None
        if sys.platform != "linux" or threading.active_count() > 1:
            return None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: read, send, leave without running the parent's cleanup
            os.close(r)
            code = 0
            try:
                out = []
                for p in paths:
                    keys, answers, defects = _read_test_file(p)
                    out.append((keys, "".join(answers), [(k, *v) for k, v in defects.items()]))
                payload = msgspec.msgpack.encode(out)
            except BaseException:  # noqa: BLE001 - any failure: the parent reads the files itself
                payload, code = b"", 1
            try:
                with os.fdopen(w, "wb") as f:
                    f.write(payload)
            finally:
                os._exit(code)
        os.close(w)
        return cls(paths, pid, r)

    def result(self) -> list[tuple[list[str], list[str], dict[str, tuple[str | None, str | None]]]]:
        """Per file: keys, first-question answers, defects (as `_read_test_file` returns them)."""
        with os.fdopen(self.fd, "rb") as f:
            payload = f.read()
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not payload:
            return [_read_test_file(p) for p in self.paths]
        with gc_paused():
            out = msgspec.msgpack.decode(payload)
            return [(keys, list(answers), {k: (loc, typ) for k, loc, typ in d}) for keys, answers, d in out]

    def cancel(self) -> None:
        """Stop the child (the caller failed before it needed the result)."""
        import signal

        os.close(self.fd)
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def load_ground_truth(
    test_files: Sequence[str | os.PathLike],
    compat: bool = False,
    annotations: Sequence[str | os.PathLike] = (),
    reader: TestFileReader | None = None,
) -> GroundTruth:
    """Read test files into one `GroundTruth`.

    Labels come from each image's answer (A anomalous, B normal); with `compat`, from the original rule
    instead: normal when "good" is in the path. Ground-truth defect `location`/`type` come from the test
    entries' own fields, then from `annotations` files (which win), whose images may be named by meta path or by
    test key (`iadr1.data.keys.KeyIndex`); `annotation_matches` says how many matched. An image in two test files
    is an error.
    `reader`: the files already being read in the background (`TestFileReader.start(test_files)`).
    """
    if not test_files:
        raise DataError("no test file given (--test-file)")
    defects_by_image: dict[str, tuple[str | None, str | None]] = {}
    file_keys: list[list[str]] = []
    file_answers: list[list[Any]] = []
    read = reader.result() if reader is not None else (_read_test_file(Path(f)) for f in test_files)
    for keys, first_answers, defects in read:
        file_keys.append(keys)
        file_answers.append(first_answers)
        defects_by_image.update(defects)
    # One test file (the usual case): its lists as they are, no copy.
    images = file_keys[0] if len(file_keys) == 1 else list(itertools.chain.from_iterable(file_keys))
    answers = file_answers[0] if len(file_answers) == 1 else list(itertools.chain.from_iterable(file_answers))
    if len(file_keys) > 1 and len(set(images)) < len(images):
        # Keys of one JSON object are unique (the decoder keeps one), so a repeat spans two files.
        seen: dict[str, str] = {}
        for f, keys in zip(test_files, file_keys, strict=True):
            for k in keys:
                if k in seen:
                    raise DataError(f"image {k!r} is in two test files: {seen[k]} and {f}")
                seen[k] = str(f)

    if compat:
        has_good = map(str.__contains__, images, itertools.repeat("good"))
        anomalous = ~np.fromiter(has_good, bool, len(images))
    else:
        # Every answer is "A" or "B" (checked when read): one character each, compared at once.
        anomalous = np.frombuffer("".join(answers).encode("ascii"), np.uint8) == ord("A")
    dataset_idx, class_idx, datasets, classes, specie_idx, species = _groups(images, anomalous)
    defects: dict[int, tuple[str | None, str | None]] = {}
    matches: list[AnnotationMatch] = []
    if defects_by_image or annotations:
        index = {k: i for i, k in enumerate(images)}
        by_image = [(index.get(k), v) for k, v in defects_by_image.items()]
        # Annotations name images by meta path or by test key (docs/convert.md, "Keys"): found in either form.
        key_index = KeyIndex(index)
        for f in annotations:
            found: dict[str, str] = {}
            unmatched: list[str] = []
            for path, v in load_defects(f).items():
                key = key_index.find(path)
                if key is None:
                    unmatched.append(path)
                    continue
                if key in found:
                    raise DataError(f"{f}: {found[key]!r} and {path!r} are the same test image {key!r}")
                found[key] = path
                by_image.append((index[key], v))
            matches.append(AnnotationMatch(str(f), len(found) + len(unmatched), len(found), unmatched[:SHOW_FIRST]))
        for i, v in by_image:  # in order: a later file wins
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
        specie_idx=specie_idx,
        species=species,
        annotation_matches=matches,
    )


def _text_or_none(v: Any) -> str | None:
    return v.strip() or None if isinstance(v, str) else None


# ------------------------------------------------------------------------------------------------------------
# Predictions
# ------------------------------------------------------------------------------------------------------------
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
    p_defect: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float, NaN where absent (files before 0.3)


# A key repeated inside one prediction record is not looked for: the msgspec decoders keep the last value and cannot
# tell, and both paths must take the same files (tests/test_eval_load.py checks it). Predictions are written by
# `iadr1 infer`, one `json.dumps` of a dict per line, which cannot repeat a key.
_PREDICTION_UNIQUE_KEYS = False


def _slow_validate(path: Path) -> None:
    """Re-read a file through the pydantic schemas to raise their one-line error naming the record."""
    for key, obj in iter_records(path, unique_keys=_PREDICTION_UNIQUE_KEYS):
        model = OriginalAnswer if isinstance(obj, dict) and "gpt_answer" in obj else Prediction
        validate_record(model, obj, path, str(key))
        rec = msgspec.convert(obj, AnyPrediction)  # raises if the schema is looser than what eval needs
        _record_letter(rec, path, str(key))


def _record_letter(rec: AnyPrediction, path: Path, key: str) -> tuple[str, str | None]:
    """(letter, raw reply) of one record whose letter needs a decision; an unknown label, or a reply that is not
    text, names the record."""
    from iadr1.answers import parse

    if rec.raw is not None and not isinstance(rec.raw, str):  # dropping it would score a reply never read
        raise DataError(f"{path}: record {key!r}: field 'raw': expected a string or null, got {rec.raw!r:.60}")
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
    raw = rec.raw
    if rec.error is not None:
        return "E", None
    if rec.letter is not None:
        if rec.letter not in LETTERS:
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


def _decode_plain(path: Path) -> list[PlainPrediction] | None:
    """The file's records as `PlainPrediction`, or None when one of them is not plain (or the file is not JSON:
    the general path reports it)."""
    try:
        with _file_bytes(path) as data, gc_paused():
            return decoders.decode_predictions(data, path.suffix == ".jsonl", plain=True)  # type: ignore[return-value]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _decode_predictions(path: Path) -> list[AnyPrediction]:
    try:
        with _file_bytes(path) as data, gc_paused():
            return decoders.decode_predictions(data, path.suffix == ".jsonl", plain=False)  # type: ignore[return-value]
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        _slow_validate(path)
        if path.suffix == ".jsonl":  # a torn last line (killed writer) is skipped, as iter_records does
            good = [obj for _, obj in iter_records(path, unique_keys=_PREDICTION_UNIQUE_KEYS)]
            return [msgspec.convert(o, AnyPrediction) for o in good]
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
    p_defect: list[Any] = []
    raws: list[Any] = []
    correct: list[Any] = []
    file_idx: list[np.ndarray] = []
    n_error = n_skipped = 0
    n_general = 0  # files read by the general path
    for fi, f in enumerate(files):
        path = Path(f)
        fast = _decode_plain(path)
        if fast is not None:  # every record valid as decoded: no per-record decision, no type check
            with gc_paused():
                start = len(letters)
                images.extend(map(attrgetter("image"), fast))
                letters.extend(map(attrgetter("letter"), fast))
                raws.extend(map(attrgetter("raw"), fast))
                p_yes.extend(map(attrgetter("p_yes"), fast))
                p_defect.extend(map(attrgetter("p_defect"), fast))
                correct.extend(itertools.repeat(None, len(fast)))
                errors = list(map(attrgetter("error"), fast))
                if errors.count(None) < len(errors):  # unreadable images: unanswered, as `_record_letter` rules
                    for i in [start + i for i, e in enumerate(errors) if e is not None]:
                        letters[i], raws[i] = "E", None
                        n_error += 1
            file_idx.append(np.full(len(fast), fi, np.int32))
            del fast  # before the next file is decoded: its records reuse this memory (fewer page faults)
            continue
        n_general += 1
        recs = _decode_predictions(path)
        # Field values may be anything JSON holds (a list, an object): compared, never hashed.
        n_before = len(recs)
        recs = [r for r in recs if r.question_type in (None, "Anomaly Detection")]
        n_skipped += n_before - len(recs)
        with gc_paused():
            f_letters = list(map(attrgetter("letter"), recs))
            f_raws = list(map(attrgetter("raw"), recs))
            # Records that need no per-record decision (a valid letter, no error, ours) are taken as they are;
            # anything else goes through `_record_letter`, which names a bad record.
            plain = (
                all(map(LETTERS.__contains__, f_letters))
                and list(map(attrgetter("error"), recs)).count(None) == len(recs)
                and list(map(attrgetter("gpt_answer"), recs)).count(None) == len(recs)
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
            p_defect.extend(map(attrgetter("p_defect"), recs))
            correct.extend(map(attrgetter("correct_answer"), recs))
        file_idx.append(np.full(len(recs), fi, np.int32))
    fidx = np.concatenate(file_idx) if file_idx else np.zeros(0, np.int32)
    return Predictions(
        images=images,
        letters=letters,
        p_yes=_p_yes_array(p_yes, files, fidx, typed=n_general == 0),
        p_defect=_p_yes_array(p_defect, files, fidx, typed=n_general == 0, name="p_defect"),
        raws=raws,
        file_idx=fidx,
        files=[str(f) for f in files],
        n_error=n_error,
        n_skipped=n_skipped,
        correct_answers=correct,
    )


def _record_key(path: Path, i: int) -> str:
    return f"record {i + 1}" if path.suffix == ".jsonl" else str(i)


def _p_yes_array(
    p_yes: list[Any], files: Sequence[Any], file_idx: np.ndarray, typed: bool = False, name: str = "p_yes"
) -> np.ndarray:
    """`p_yes` (or the field `name`, `p_defect`, read the same way) as floats (NaN where absent); a value that is no
    probability (NaN included) is an error naming the record. `typed`: every value is known to be a float, an int
    or None, as msgspec decoded it (msgspec refuses the NaN token, so only the general path, which reads with
    Python's json, can meet one)."""
    if p_yes.count(None) == len(p_yes):  # absent everywhere (p_defect of files before 0.3): 1 ms, not 70
        return np.full(len(p_yes), np.nan)
    kinds = {float} if typed else set(map(type, p_yes))
    bad_type = kinds - {float, int, type(None)}
    arr = np.full(len(p_yes), np.nan) if kinds <= {type(None)} or bad_type else np.array(p_yes, dtype=float)
    bad = ~np.isnan(arr) & ~((arr >= 0) & (arr <= 1))
    if not typed and not bad_type and int(np.isnan(arr).sum()) > p_yes.count(None):  # a NaN given, not absent
        bad |= np.fromiter((v is not None and v != v for v in p_yes), bool, len(p_yes))
    if bad_type:
        bad = np.fromiter((type(v) not in (float, int, type(None)) for v in p_yes), bool, len(p_yes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fi = int(file_idx[i])
        start = int(np.searchsorted(file_idx, fi, side="left"))
        raise DataError(
            f"{files[fi]}: record {i - start + 1}: field {name!r}: {p_yes[i]!r} is not a probability in [0, 1]"
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
    p_defect: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float, NaN where unknown

    @property
    def score(self) -> np.ndarray:
        """The decision score per test image (`iadr1.ranking.decision_score`): P(defect), else P(yes); NaN
        without either."""
        if not len(self.p_defect):
            return self.p_yes
        return np.where(np.isnan(self.p_defect), self.p_yes, self.p_defect)

    def raw(self, i: int) -> str | None:
        """The reply text for test image `i`, None without one (replies are not copied into test order)."""
        j = int(self.pred_index[i])
        return self.pred_raws[j] if j >= 0 else None


def _hashes(items: list[str]) -> np.ndarray:
    return np.fromiter(map(hash, items), np.int64, len(items))


def positions(keys: list[str], items: list[str]) -> np.ndarray:
    """Index in `keys` of each of `items` (-1 when absent); `keys` are unique.

    The same result as a dict lookup, about 2x faster for a million shuffled items (0.5 s against 1 s): a dict
    lookup per item touches memory at random, sorting 64-bit hashes does not. Items are matched on Python's 64-bit
    string hash (SipHash, salted per process) without comparing the strings: an item that is *not* a key is taken
    for one with probability len(keys) / 2**64 (5e-14 for a million test images); an item that is a key always
    finds its own key, since the keys' hashes are checked to be distinct. Confirming each match with a second hash
    cost 0.19 s and comparing the strings 0.32 s, for a risk far below that of a memory bit flip. Keys whose
    hashes collide (never seen in practice) fall back to the dict, which compares strings.
    """
    n, m = len(keys), len(items)
    if items == keys:  # `iadr1 infer` writes in test-file order: no lookup at all
        return np.arange(n, dtype=np.int64)
    if n == 0 or m == 0:
        return np.full(m, -1, np.int64)
    k1 = _hashes(keys)
    order = np.argsort(k1)
    sk1 = k1[order]
    if (sk1[1:] == sk1[:-1]).any():
        index = dict(zip(keys, range(n), strict=True))
        return np.fromiter(map(index.get, items, itertools.repeat(-1)), np.int64, m)
    i1 = _hashes(items)
    q = np.argsort(i1)  # sorted queries make the binary searches walk memory in order
    j = np.minimum(np.searchsorted(sk1, i1[q]), n - 1)
    hit = order[j]
    ok = sk1[j] == i1[q]
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
    letter_code[sel] = _letter_codes(preds.letters)[src]
    p = np.full(n, np.nan)
    p[sel] = preds.p_yes[src]
    pd = np.full(n, np.nan)
    if len(preds.p_defect):
        pd[sel] = preds.p_defect[src]
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
        p_defect=pd,
        pred_raws=preds.raws,
        has_prediction=has,
        pred_index=pred_index,
        missing=missing,
        unknown=unknown,
        n_error=preds.n_error,
        n_skipped=preds.n_skipped,
        n_label_disagreements=disagree,
    )


_LETTER_BYTE_CODE = np.full(256, -1, np.int8)
_LETTER_BYTE_CODE[[ord(c) for c in LETTERS]] = range(len(LETTERS))


def _letter_codes(letters: list[str]) -> np.ndarray:
    """`LETTER_CODE` of each letter. Each is one of A, B, E (`load_predictions` decided them), so the letters
    joined are one byte each: coded at once, not one dict lookup per record."""
    joined = "".join(letters).encode("ascii", "replace")
    codes = _LETTER_BYTE_CODE[np.frombuffer(joined, np.uint8)]
    if len(codes) != len(letters) or (codes < 0).any():  # not a letter each: the dict names the offender
        return np.fromiter(map(LETTER_CODE.__getitem__, letters), np.int8, len(letters))
    return codes


def _file_start(preds: Predictions, j: int) -> int:
    return int(np.searchsorted(preds.file_idx, preds.file_idx[j], side="left"))
