"""The one parser of model replies, shared by rewards, `infer` and `eval`.

`parse(text)` reads the IAD-R1 grammar (REFERENCE.md section 1) and the untagged replies of baselines:

>>> a = parse("<think>A dark line.</think><location>top left</location><type>scratch</type><answer>Yes</answer>")
>>> (a.answer, a.location, a.type, a.letter, a.well_formed)
('yes', 'top left', 'scratch', 'A', True)
>>> parse("There is an anomaly on the surface.").answer is None   # "no" inside "anomaly" is not an answer
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

YesNo = Literal["yes", "no"]

_FLAGS = re.IGNORECASE | re.DOTALL
_TAG = {name: re.compile(rf"<{name}>(.*?)</{name}>", _FLAGS) for name in ("think", "location", "type", "answer")}
_ANY_LOC_OR_TYPE = re.compile(r"</?(?:location|type)>", re.IGNORECASE)
_WELL_FORMED_YES = re.compile(
    r"\s*<think>.*?</think>\s*<location>.*?</location>\s*<type>.*?</type>\s*<answer>.*?</answer>\s*", _FLAGS
)
_WELL_FORMED_NO = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", _FLAGS)
_LEADING_YES_NO = re.compile(r"^[\W_]*(yes|no)\b")
_LETTER = re.compile(r"^[\W_]*\(?([ab])\)?(?:[\s.:,)]|$)")
_WORD_YES = re.compile(r"\byes\b")
_WORD_NO = re.compile(r"\bno\b")


@dataclass(frozen=True)
class Answer:
    """A parsed reply. `answer` is None when the reply states neither yes nor no (letter E: counted wrong)."""

    answer: YesNo | None
    location: str | None = None
    type: str | None = None
    reasoning: str | None = None
    well_formed: bool = False
    tagged: bool = False

    @property
    def letter(self) -> Literal["A", "B", "E"]:
        """The benchmark's option letter: A = Yes (anomalous), B = No (normal), E = unanswered."""
        return {"yes": "A", "no": "B"}.get(self.answer or "", "E")  # type: ignore[return-value]


def _first(name: str, text: str) -> str | None:
    m = _TAG[name].search(text)
    return m.group(1).strip() if m else None


def read_yes_no(text: str, letters: bool = True) -> YesNo | None:
    """Read yes/no from a short free-text answer.

    A leading "yes"/"no" word wins ("Yes, there is a scratch." is yes); then an option letter when `letters`
    ("A", "(B)", "B. No."); then a lone whole word "yes" or "no" anywhere (never "no" inside "anomaly" or "not").
    Both or neither: None.
    """
    t = text.strip().lower()
    if not t:
        return None
    m = _LEADING_YES_NO.match(t)
    if m:
        return m.group(1)  # type: ignore[return-value]
    if letters:
        m = _LETTER.match(t)
        if m:
            return "yes" if m.group(1) == "a" else "no"
    has_yes, has_no = bool(_WORD_YES.search(t)), bool(_WORD_NO.search(t))
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


def parse(text: str | None) -> Answer:
    """Parse a model reply into an `Answer`.

    With an `<answer>` tag, the first one decides (case, whitespace and a trailing period do not matter; an empty
    tag is unanswered). Without one, the whole reply is read as a baseline's free text (`read_yes_no`).
    `well_formed` is the consistency rule, tolerant of whitespace between tags and newlines inside them: a "yes"
    reply is think, location, type, answer in that order; a "no" reply is think then answer with no location or
    type tag anywhere.
    """
    if not text:
        return Answer(answer=None)
    if not isinstance(text, str):
        text = str(text)
    tagged_answer = _first("answer", text)
    if tagged_answer is None:
        return Answer(answer=read_yes_no(text), reasoning=_first("think", text))
    answer = read_yes_no(tagged_answer)
    if answer == "yes":
        well_formed = _WELL_FORMED_YES.fullmatch(text) is not None
    elif answer == "no":
        well_formed = _WELL_FORMED_NO.fullmatch(text) is not None and not _ANY_LOC_OR_TYPE.search(text)
    else:
        well_formed = False
    return Answer(
        answer=answer,
        location=_first("location", text),
        type=_first("type", text),
        reasoning=_first("think", text),
        well_formed=well_formed,
        tagged=True,
    )
