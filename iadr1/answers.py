"""The one parser of model replies, shared by rewards, `infer` and `eval`.

`parse(text)` reads the IAD-R1 grammar (docs/method.md §1) and the untagged replies of baselines:

>>> a = parse("<think>Dark.</think><location>top left</location><type>scratch</type><answer>Yes</answer>")
>>> (a.answer, a.location, a.type, a.letter, a.well_formed)
('yes', 'top left', 'scratch', 'A', True)
>>> parse("There is an anomaly on the surface.").answer is None   # "no" inside "anomaly" is not an answer
True

Every function here runs in time linear in the length of the text (no backtracking regex over tag
contents), so a 1 MB reply with thousands of unclosed tags is read in milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

YesNo = Literal["yes", "no"]

TAG_NAMES = ("think", "location", "type", "answer")
# The grammar of section 1 as the sequence of tags a reply is made of, nothing but whitespace around them.
DEFECT_GRAMMAR = ("think", "location", "type", "answer")
NORMAL_GRAMMAR = ("think", "answer")

_OPEN = {name: re.compile(rf"<{name}>", re.IGNORECASE) for name in TAG_NAMES}
_CLOSE = {name: re.compile(rf"</{name}>", re.IGNORECASE) for name in TAG_NAMES}
_ANY_TAG = re.compile(r"<(/?)(think|location|type|answer)>", re.IGNORECASE)
_LEADING_YES_NO = re.compile(r"^[\W_]*(yes|no)\b")
# A bare option letter: "A", "(B)", "B.", "A: Yes", "B) No", "**A**"; not the article of "A careful look...".
_LETTER = re.compile(r"^[\W_]*\(?([ab])(?:\s*$|\s*[.:]|[)*])")
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


def first_tag(name: str, text: str) -> str | None:
    """Content of the first `<name>...</name>`, stripped; None when there is none.

    Case-insensitive, newlines allowed inside. The same result as the lazy regex `<name>(.*?)</name>` with
    IGNORECASE | DOTALL, found without backtracking: if the first opening tag has no closing tag after it, no
    later one has either.
    """
    m = _OPEN[name].search(text)
    if m is None:
        return None
    end = _CLOSE[name].search(text, m.end())
    return None if end is None else text[m.end() : end.start()].strip()


def follows_grammar(text: str, defect: bool) -> bool:
    """True when `text` is exactly the section 1 grammar for a defective (`defect`) or normal reply.

    Defective: `<think>…</think><location>…</location><type>…</type><answer>…</answer>`; normal:
    `<think>…</think><answer>…</answer>`. Tags are case-insensitive, contents may span lines, whitespace may
    surround the tags; anything else outside the tags, a repeated, missing or extra tag fails. The answer text
    itself is not judged here.

    >>> follows_grammar("<think>a\\nb</think>\\n<answer>No</answer>", defect=False)
    True
    >>> follows_grammar("<think>a</think><answer>No</answer><type>stain</type>", defect=False)
    False
    """
    expected = DEFECT_GRAMMAR if defect else NORMAL_GRAMMAR
    pos = 0
    depth_name: str | None = None
    seen = 0
    for m in _ANY_TAG.finditer(text):
        closing, name = m.group(1) == "/", m.group(2).lower()
        if depth_name is None:
            # Between tags only whitespace is allowed.
            if closing or seen >= len(expected) or name != expected[seen] or text[pos : m.start()].strip():
                return False
            depth_name = name
        else:
            # Inside a tag, the only tag allowed is its own closing tag.
            if not closing or name != depth_name:
                return False
            depth_name = None
            seen += 1
            pos = m.end()
    return depth_name is None and seen == len(expected) and not text[pos:].strip()


def read_yes_no(text: str, letters: bool = True) -> YesNo | None:
    """Read yes/no from a short free-text answer.

    A leading "yes"/"no" word wins ("Yes, there is a scratch." is yes); then a bare option letter when
    `letters` ("A", "(B)", "B. No.", but not the article of "A careful look..."); then a lone whole word
    "yes" or "no" anywhere (never "no" inside "anomaly" or "not"). Both or neither: None.
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

    With an `<answer>` tag, the first one decides (case, whitespace and a trailing period do not matter; an
    empty tag is unanswered). Without one, the whole reply is read as a baseline's free text (`read_yes_no`).
    `well_formed` is `follows_grammar` for the grammar the answer calls for: a "yes" reply is think, location,
    type, answer; a "no" reply is think then answer, with no location or type tag anywhere.
    """
    if not text:
        return Answer(answer=None)
    if not isinstance(text, str):
        text = str(text)
    tagged_answer = first_tag("answer", text)
    if tagged_answer is None:
        return Answer(answer=read_yes_no(text), reasoning=first_tag("think", text))
    answer = read_yes_no(tagged_answer)
    return Answer(
        answer=answer,
        location=first_tag("location", text),
        type=first_tag("type", text),
        reasoning=first_tag("think", text),
        well_formed=answer is not None and follows_grammar(text, defect=answer == "yes"),
        tagged=True,
    )


# --- MMAD's multiple-choice answers ---------------------------------------------------------------------------------
_CHOICE_LEAD = re.compile(r"^[\W_]*\(?([A-Ea-e])(?:\s*$|\s*[.:]|[)*])")  # "B", "(C)", "D.", "A: text", "**E**"
_CHOICE_SAID = re.compile(r"\b(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*\(?\**([A-E])\b", re.IGNORECASE)
_CHOICE_LONE = re.compile(r"(?<![\w'])([A-E])(?![\w'])")  # a capital letter standing alone
_NON_WORD = re.compile(r"[\W_]+")


def _plain(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def parse_choice(text: str | None, options: dict[str, str]) -> str | None:
    """The option letter a reply to a multiple-choice question gives, or None when it gives none (unparsable).

    Read from the first `<answer>` tag when there is one, else from the whole reply, in this order: a leading
    letter ("B", "(C)", "D. Scratch", "**A**"); a stated one ("Answer: C", "the answer is (B)"); the text of exactly
    one option ("Scratch." for `{"C": "Scratch"}`, or a reply containing that one option's text and no other's); a
    single capital letter standing alone somewhere in the reply (two different ones: None). Only letters that are
    keys of `options` count. MMAD's own scorer takes the last capital letter it finds and otherwise the closest
    option by string similarity, so it never leaves a reply unparsed; iadr1 leaves a reply that names no option
    unparsed and counts it wrong (and reports MMAD's convention, dropping those, beside it).
    """
    if not text:
        return None
    text = str(text)
    tagged = first_tag("answer", text)
    body = (tagged if tagged is not None else text).strip()
    keys = {k.upper() for k in options}
    for pattern in (_CHOICE_LEAD, _CHOICE_SAID):
        m = pattern.search(body)
        if m and m.group(1).upper() in keys:
            return m.group(1).upper()
    plain = _plain(body)
    by_text = {_plain(v): k.upper() for k, v in options.items() if _plain(v)}
    if plain in by_text:
        return by_text[plain]
    inside = {letter for opt, letter in by_text.items() if re.search(rf"\b{re.escape(opt)}\b", plain)}
    if len(inside) == 1:
        return inside.pop()
    lone = {m.group(1) for m in _CHOICE_LONE.finditer(body)} & keys
    return lone.pop() if len(lone) == 1 else None
