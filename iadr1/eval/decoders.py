"""Eval's msgspec decoders, in one place: each file format eval reads fast, and the pydantic schema it answers to.

msgspec decodes a million records in a fraction of the time pydantic takes (docs/eval.md, "Speed"), but a second
definition of a format can drift from the first. So each typed decoder here names its pydantic twin in
`iadr1.data.schemas`, and tests/test_eval_decoders.py checks, on random records, that it accepts exactly the records
its twin accepts, on the fields eval reads:

| decoder | twin | accepts exactly when the twin accepts and |
|---|---|---|
| `Entry` (test file) | `TestEntry` | the record carries no ground-truth `location` / `type` |
| `PlainPrediction` (predictions) | `Prediction` | it has a `letter` and none of the original's fields |

A file the typed decoder refuses is decoded again as it is (`AnyEntry`, `AnyPrediction`: every field `Any`) and judged
record by record by `iadr1.eval.load`, whose rules and one-line messages stay the only ones; a file even those refuse
is re-read through the pydantic schemas for their error.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import msgspec

# msgspec keeps the last value of a key that appears twice, without a word (it has no option to refuse): a test image
# would vanish. So every entry decoded, kept or not, is appended to `_DECODED` by `list.append` itself as the entry's
# `__post_init__`: a C call, no Python frame (measured: within the noise of decoding a million entries, where a
# Python `__post_init__` costs 50 ms). More entries decoded than keys kept means a repeated key.
_DECODED: list[Any] = []
_DECODED_LOCK = threading.Lock()  # one decode at a time uses `_DECODED`


# ------------------------------------------------------------------------------------------------------------
# Test files
# ------------------------------------------------------------------------------------------------------------
class Question(msgspec.Struct, gc=False):
    Answer: Literal["A", "B"]  # decoded as the constants "A" and "B": no string made per answer


class Entry(msgspec.Struct, gc=False):
    """A test-file record of the usual file (twin: `TestEntry`): answers A or B, no ground truth of its own."""

    conversation: tuple[Question, ...]  # a tuple is one allocation, a list two
    location: None = None
    type: None = None
    __post_init__ = _DECODED.append


class AnyQuestion(msgspec.Struct, gc=False):
    Answer: Any = None
    type: Any = None  # MMAD's files hold several question types: the label is the anomaly-detection one's


class AnyEntry(msgspec.Struct, gc=False):
    """A test-file record as it is, judged by `iadr1.eval.load` (only the anomaly-detection question's answer is
    read: the first question of that type, else the first question)."""

    conversation: tuple[AnyQuestion, ...]
    location: Any = None  # optional ground truth carried by the test file
    type: Any = None
    __post_init__ = _DECODED.append


def decode_test_file(data: Any) -> tuple[dict[str, Entry] | dict[str, AnyEntry], int]:
    """A test file's records (`Entry`, else `AnyEntry`) and the number of records decoded (more than the keys kept
    when a key repeats). msgspec's errors pass through (the caller re-reads the file for the schema's message)."""
    with _DECODED_LOCK:
        try:
            try:
                entries: dict[str, Entry] | dict[str, AnyEntry] = msgspec.json.decode(data, type=dict[str, Entry])
            except msgspec.ValidationError:  # not the usual file: read as it is, judged by the caller
                _DECODED.clear()
                entries = msgspec.json.decode(data, type=dict[str, AnyEntry])
            return entries, len(_DECODED)
        finally:
            _DECODED.clear()


# ------------------------------------------------------------------------------------------------------------
# Predictions
# ------------------------------------------------------------------------------------------------------------
class AnyPrediction(msgspec.Struct, gc=False):
    """A line of our predictions.jsonl or a record of the original's answers JSON: what eval reads of both."""

    image: str
    letter: Any = None
    answer: Any = None
    raw: Any = None
    p_yes: Any = None
    p_defect: Any = None
    error: Any = None
    gpt_answer: Any = None  # the original's format
    correct_answer: Any = None
    question_type: Any = None


class PlainPrediction(msgspec.Struct, gc=False):
    """A line of `iadr1 infer`'s predictions.jsonl in the common case (twin: `Prediction`), typed so strictly that
    decoding it is the whole check: a valid letter, a string (or no) reply, a number (or no) `p_yes`, and none of
    the original's fields, which would call for a per-record decision. `p_yes` keeps ints as ints, so a bad value is
    quoted as written."""

    image: str
    letter: Literal["A", "B", "E"]
    raw: str | None = None
    p_yes: float | int | None = None
    p_defect: float | int | None = None
    error: str | None = None  # kept: unreadable images are common enough not to leave the fast path
    gpt_answer: None = None
    correct_answer: None = None
    question_type: None = None


def decode_predictions(data: Any, jsonl: bool, plain: bool) -> list[PlainPrediction] | list[AnyPrediction]:
    """The records of a predictions file, JSON Lines or a JSON list, as `PlainPrediction` (`plain`) or
    `AnyPrediction`; msgspec's errors pass through."""
    kind: type[PlainPrediction] | type[AnyPrediction] = PlainPrediction if plain else AnyPrediction
    if jsonl:
        return msgspec.json.Decoder(kind).decode_lines(data)
    return msgspec.json.decode(data, type=list[kind])  # type: ignore[valid-type]
