"""Typed records for every file format the method uses (docs/method.md §2), validated with pydantic v2.

Field names follow the real files exactly (`Question`, `Answer`, ... in test files) so that a file loads and dumps
back to equal JSON. Unknown fields are kept (`extra="allow"`) so that nothing a user's file carries is dropped.
Load through `load_records` / `load_test_file`: a validation error becomes one line naming file, record and field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iadr1.data.io import iter_records, read_json
from iadr1.data.keys import dataset_and_class
from iadr1.errors import DataError
from iadr1.prompts import QUESTION  # the benchmark's question: a prompt text (re-exported here)

OPTIONS = {"A": "Yes.", "B": "No."}
ANOMALY_LETTER = "A"
NORMAL_LETTER = "B"
UNANSWERED_LETTER = "E"
DETECTION_TYPE = "Anomaly Detection"  # the question type IAD-R1 scores (the only one of its test files)
Choice = Literal["A", "B", "C", "D", "E"]  # an option letter of an MMAD question (docs/eval.md, "MMAD")


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


# --- meta.json (AnomalyCLIP style) -----------------------------------------------------------------------------------
class MetaEntry(_Record):
    """One image of a meta.json: paths relative to the data root; `specie_name` is `good` for normal images."""

    img_path: str
    mask_path: str = ""
    cls_name: str
    specie_name: str
    anomaly: Literal[0, 1]

    @field_validator("anomaly", mode="before")
    @classmethod
    def _bool_to_int(cls, v: Any) -> Any:
        return int(v) if isinstance(v, bool) else v


# --- test file (MMAD style) ------------------------------------------------------------------------------------------
class Conversation(_Record):
    """One question about the image. IAD-R1's files hold one, the anomaly-detection question (A yes, B no);
    MMAD's hold several (`type`: defect classification, localization, ...) with options A to E."""

    Question: str = QUESTION
    Answer: Choice
    Options: dict[str, str] = Field(default_factory=lambda: dict(OPTIONS))
    type: str = DETECTION_TYPE


class TestEntry(_Record):
    """One image of a test file. `Answer` A means anomalous, B normal; templates are normal reference images."""

    __test__ = False  # not a pytest class

    image_path: str
    conversation: list[Conversation]
    similar_templates: list[str] = Field(default_factory=list)
    random_templates: list[str] = Field(default_factory=list)

    @property
    def detection_index(self) -> int:
        """The index of the anomaly-detection question: the first of that type, else the first question."""
        return next((i for i, q in enumerate(self.conversation) if q.type == DETECTION_TYPE), 0)

    @property
    def is_anomalous(self) -> bool:
        return self.conversation[self.detection_index].Answer == ANOMALY_LETTER

    @model_validator(mode="after")
    def _detection_is_yes_or_no(self) -> TestEntry:
        if self.conversation:
            i = self.detection_index
            got = self.conversation[i].Answer
            if got not in (ANOMALY_LETTER, NORMAL_LETTER):
                raise ValueError(f"conversation.{i}.Answer: the anomaly-detection answer is A or B, got {got!r}")
        return self

    @property
    def dataset(self) -> str:
        """The benchmark's dataset name (`SDD`, `MPDD`, ...): `iadr1.data.keys.dataset_and_class`."""
        return dataset_and_class(self.image_path)[0]

    @property
    def cls_name(self) -> str:
        """The class (the dataset name for layouts with no class level, SDD): `iadr1.data.keys.dataset_and_class`."""
        return dataset_and_class(self.image_path)[1]


# --- training records ------------------------------------------------------------------------------------------------
class Message(_Record):
    role: Literal["system", "user", "assistant"]
    content: str


class SFTRecord(_Record):
    """PA-SFT record: `images` is one path (zero-shot) or `[reference, query]` (one-shot)."""

    images: str | list[str]
    messages: list[Message]


class GRPORecord(_Record):
    """SC-GRPO record: `solution` carries the ground truth inside `<answer>` (and location/type for defects)."""

    id: str
    image: str | list[str]
    problem: str
    solution: str


# --- predictions -----------------------------------------------------------------------------------------------------
class Prediction(_Record):
    """One line of `predictions.jsonl` written by `iadr1 infer`."""

    image: str
    prompt_style: str = "iadr1"
    shots: int = 0
    raw: str | None = None
    answer: Literal["yes", "no"] | None = None
    letter: Literal["A", "B", "E"] | None = UNANSWERED_LETTER  # None on MMAD lines of other question types
    # Python's json reads NaN: refused, not taken for absent. Strict: a string or a bool is no probability (eval's
    # rule, and the twin of `iadr1.eval.decoders.PlainPrediction`, which takes numbers only).
    p_yes: float | None = Field(None, allow_inf_nan=False, strict=True)
    # MMAD lines (`iadr1 infer --task mmad`, 0.3): one line per (image, question); `choice` is the option letter the
    # reply gave (None: unparsable). `answer`/`letter` are set on the anomaly-detection question's line only.
    question_index: int | None = Field(None, ge=0)
    question_type: str | None = None
    choice: Choice | None = None
    # Added in 0.3 (older files read as before, without them): the decision score, P(defect) where the reply
    # decides (docs/deploy.md, "An operating point"), and, when a threshold was given, the call at that threshold
    # beside the bare `answer`.
    p_defect: float | None = Field(None, allow_inf_nan=False, strict=True)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    decision: Literal["yes", "no"] | None = None
    latency_s: float | None = None
    error: str | None = None
    # Added with `--perturb` (iadr1.data.perturb): the canonical specs applied to the images, in order. Written only
    # by perturbed runs (a clean run's lines carry no such key; absent or None reads as clean).
    perturb: list[str] | None = None


class OriginalQuestion(_Record):
    type: str
    text: str
    options: dict[str, str]


class OriginalAnswer(_Record):
    """One record of the original code's `answers_{k}_shot_{model}.json`."""

    image: str
    question: OriginalQuestion
    question_type: str
    correct_answer: str
    gpt_answer: str


# --- loading with one-line errors ------------------------------------------------------------------------------------
R = TypeVar("R", bound=BaseModel)


def format_validation_error(source: str | os.PathLike, key: str | int, err: ValidationError) -> str:
    """One line: `FILE: record KEY: field a.b.c: message (got VALUE)`, plus a count when several fields fail."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<record>"
    got = first.get("input")
    got_text = "" if first["type"] == "missing" else f" (got {_short(got)})"
    more = err.error_count() - 1
    tail = f" [+{more} more error{'s' if more > 1 else ''}]" if more else ""
    return f"{source}: record {key!r}: field {loc!r}: {first['msg']}{got_text}{tail}"


def _short(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def validate_record(model: type[R], obj: Any, source: str | os.PathLike, key: str | int) -> R:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise DataError(format_validation_error(source, key, e)) from None


def load_records(path: str | os.PathLike, model: type[R]) -> list[R]:
    """Load a JSON list, a JSON dict of records, or JSON Lines (`iadr1.data.io.iter_records`) into `model` instances.

    Fails on the first bad record with a one-line `DataError`.
    """
    return [validate_record(model, obj, path, key) for key, obj in iter_records(path)]


def load_test_file(path: str | os.PathLike) -> dict[str, TestEntry]:
    """Load a benchmark test file: a dict keyed by relative image path."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a test file is a JSON object keyed by image path, got {type(obj).__name__}")
    out = {k: validate_record(TestEntry, v, path, k) for k, v in obj.items()}
    for k, e in out.items():
        if not e.conversation:
            raise DataError(f"{path}: record {k!r}: field 'conversation': empty list")
    return out


def dump_test_file(entries: dict[str, TestEntry], path: str | os.PathLike) -> Path:
    """Write a test file atomically in the benchmark's format (`json.dumps(indent=4)` text, as the released files),
    through the one writer, `iadr1.data.convert.write_test_file`. meta.json: `iadr1.data.meta`."""
    from iadr1.data.convert import write_test_file  # convert imports this module

    return write_test_file(entries, path)
