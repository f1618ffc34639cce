"""MMAD's multiple-choice questions: accuracy per question type, per dataset and class (docs/eval.md, "MMAD").

MMAD test files are IAD-R1's format with several questions per image (`conversation`), each with its `type` and
options A to E. `iadr1 infer --task mmad` writes one predictions line per (image, question) with the option letter
it read (`choice`); MMAD's own answers JSON (records with `question_type` and `gpt_answer`, in question order per
image) is read too. The anomaly-detection question keeps iadr1's detection metrics (balanced accuracy, Overkill,
Miss, ...); this module adds the other types.

Two conventions, both reported and labelled: **iadr1** counts a question without a usable answer (no prediction, an
error, a reply naming no option) wrong; **MMAD** (its scorer, `caculate_accuracy_mmad`) drops such answers from the
counts. Both take, as MMAD does, balanced accuracy for the anomaly-detection type, accuracy for the others, merge
"Object Structure" and "Object Details" into "Object Analysis", average over the question types per dataset, and
then over datasets.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iadr1.data.io import iter_records
from iadr1.data.keys import dataset_and_class
from iadr1.data.schemas import DETECTION_TYPE, load_test_file
from iadr1.errors import DataError

# MMAD's question types in its table's order, with the two its scorer folds into one.
QUESTION_TYPES = (
    DETECTION_TYPE,
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
)
MERGED_TYPES = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}
CHOICES = frozenset("ABCDE")


def report_type(question_type: str) -> str:
    """The column a question type is reported under (MMAD's merge of the object questions)."""
    return MERGED_TYPES.get(question_type, question_type)


@dataclass(frozen=True)
class MmadQuestion:
    image: str
    index: int
    type: str  # as reported (`report_type`)
    answer: str
    anomalous: bool  # the image's anomaly-detection answer is A


def read_questions(test_files: Sequence[str | os.PathLike]) -> list[MmadQuestion]:
    """Every question of every image of the test files, in order."""
    out = []
    for f in test_files:
        for key, entry in load_test_file(f).items():
            anomalous = entry.is_anomalous
            for i, q in enumerate(entry.conversation):
                out.append(MmadQuestion(key, i, report_type(q.type), q.Answer, anomalous))
    return out


def read_choices(prediction_files: Sequence[str | os.PathLike]) -> tuple[dict[tuple[str, int], str | None], int]:
    """{(image, question index): the option letter given, None when unusable} from our MMAD lines (those with
    `question_index`) and MMAD's answers records (`question_type` and `gpt_answer`, numbered in order per image),
    and how many records were read. Two answers to one question are an error naming it."""
    choices: dict[tuple[str, int], str | None] = {}
    next_index: dict[tuple[str, int], int] = defaultdict(int)  # (file, image) -> the next question of MMAD's records
    n = 0
    for fi, f in enumerate(prediction_files):
        for _, rec in iter_records(f):
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                continue
            image = rec["image"]
            if rec.get("question_index") is not None:
                index = int(rec["question_index"])
                given = rec.get("choice") if rec.get("error") is None else None
            elif rec.get("question_type") is not None and "gpt_answer" in rec:
                index = next_index[(fi, image)]
                next_index[(fi, image)] += 1
                given = rec.get("gpt_answer")
            else:
                continue  # a detection line: scored by the detection metrics
            if (image, index) in choices:
                raise DataError(f"{f}: two answers to question {index} of image {image!r}")
            choices[(image, index)] = given if given in CHOICES else None
            n += 1
    return choices, n


def _accuracy(right: int, n: int) -> float | None:
    return right / n * 100 if n else None


def _balanced(cells: dict[bool, list[int]]) -> float | None:
    """Balanced accuracy (%) from {anomalous: [right, total]} (one class present: that class's accuracy)."""
    accs = [r / t for r, t in cells.values() if t]
    return sum(accs) / len(accs) * 100 if accs else None


def _score(questions: list[MmadQuestion], choices: dict[tuple[str, int], str | None], answered_only: bool) -> Any:
    """{type: value} for one group of questions, detection as balanced accuracy; `answered_only`: MMAD's rule."""
    by_type: dict[str, dict[bool, list[int]]] = defaultdict(lambda: {True: [0, 0], False: [0, 0]})
    for q in questions:
        given = choices.get((q.image, q.index))
        if answered_only and given is None:
            continue
        cell = by_type[q.type][q.anomalous if q.type == DETECTION_TYPE else True]
        cell[0] += given == q.answer
        cell[1] += 1
    out = {}
    for t, cells in by_type.items():
        out[t] = _balanced(cells) if t == DETECTION_TYPE else _accuracy(*cells[True])
    return out


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _ordered(types: set[str]) -> list[str]:
    return [t for t in QUESTION_TYPES if t in types] + sorted(types - set(QUESTION_TYPES))


def mmad_metrics(
    test_files: Sequence[str | os.PathLike], prediction_files: Sequence[str | os.PathLike]
) -> dict[str, Any] | None:
    """The MMAD block of metrics.json, or None when no prediction answers an MMAD question (module docstring).

    `{"types": [...], "datasets": {ds: {"iadr1": {type: %, "average": %}, "mmad": {...}, "n": {type: questions},
    "n_answered": {type: questions with a usable answer}, "classes": {cls: {"iadr1": ..., "mmad": ...}}}},
    "average": {"iadr1": {type: %, "average": %}, "mmad": {...}}, "n_questions", "n_answered", "n_predictions"}`.
    """
    choices, n_read = read_choices(prediction_files)
    if not n_read:
        return None
    questions = read_questions(test_files)
    types = _ordered({q.type for q in questions})
    groups: dict[str, dict[str, list[MmadQuestion]]] = defaultdict(lambda: defaultdict(list))
    for q in questions:
        ds, cls = dataset_and_class(q.image)
        groups[ds][cls].append(q)
    datasets: dict[str, Any] = {}
    for ds in sorted(groups):
        qs = [q for cls_qs in groups[ds].values() for q in cls_qs]
        block: dict[str, Any] = {}
        for rule, only in (("iadr1", False), ("mmad", True)):
            scores = _score(qs, choices, only)
            block[rule] = {t: scores.get(t) for t in types} | {"average": _mean([scores.get(t) for t in types])}
        n: dict[str, int] = defaultdict(int)
        answered: dict[str, int] = defaultdict(int)
        for q in qs:
            n[q.type] += 1
            answered[q.type] += choices.get((q.image, q.index)) is not None
        block["n"] = {t: n[t] for t in types if n[t]}
        block["n_answered"] = {t: answered[t] for t in types if n[t]}
        block["classes"] = {
            cls: {rule: _score(cls_qs, choices, only) for rule, only in (("iadr1", False), ("mmad", True))}
            for cls, cls_qs in sorted(groups[ds].items())
        }
        datasets[ds] = block
    average = {
        rule: {t: _mean([d[rule][t] for d in datasets.values()]) for t in [*types, "average"]}
        for rule in ("iadr1", "mmad")
    }
    known = {(q.image, q.index) for q in questions}
    return {
        "types": types,
        "datasets": datasets,
        "average": average,
        "n_questions": len(questions),
        "n_answered": sum(choices.get(k) is not None for k in known),
        "n_predictions": n_read,
        "n_unknown": sum(k not in known for k in choices),
    }
