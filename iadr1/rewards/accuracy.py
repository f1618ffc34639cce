"""Accuracy rewards: is the answer right, and for a defect, are its type and location right."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iadr1.answers import parse
from iadr1.rewards.defect_types import type_score
from iadr1.rewards.location import location_score
from iadr1.rewards.solution import align_solutions, parse_solution
from iadr1.rewards.tags import completion_text, first_on_line


def accuracy_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """The published SC-GRPO accuracy reward, quirks included, in 0..2.

    Ground truth "no": 1 if the first `<answer>` of the completion, stripped and lower-cased, is exactly "no",
    else 0. Ground truth "yes": `(type part + location part) / 2 + (1 if the answer is "yes")`. The type part
    is `type_score` of the first `<type>` texts, paid only when *both* the completion and the solution have a
    `<type>…</type>`, else 0; the location part likewise with `location_score` and `<location>`. As
    published: tags are case-sensitive and must open and close on one line (a tag split over lines is
    absent); the type and location earn credit even when the answer is "no"; a present location without
    direction words counts as the center (an empty `<location></location>` too; a missing one earns 0). A
    solution without a yes/no label scores 0 (see `validate_solution`).

    >>> sol = "<location>top left</location><type>scratch</type><answer>Yes</answer>"
    >>> accuracy_reward(["<location>upper left</location><type>scratch</type><answer>No</answer>"], [sol])
    [1.0]
    >>> accuracy_reward(["<type>scratch</type><answer>Yes</answer>"], [sol])
    [1.5]
    """
    out: list[float] = []
    for completion, sol in zip(completions, align_solutions(solution, len(completions)), strict=False):
        gt = parse_solution(sol)
        if gt is None:
            out.append(0.0)
            continue
        text = completion_text(completion)
        answer = first_on_line(text, "<answer>", "</answer>")
        said = answer.strip().lower() if answer is not None else None
        if gt.label == "no":
            out.append(1.0 if said == "no" else 0.0)
            continue
        location = first_on_line(text, "<location>", "</location>")
        type_ = first_on_line(text, "<type>", "</type>")
        t = type_score(type_, gt.type) if type_ is not None and gt.type is not None else 0.0
        loc = location_score(location, gt.location) if location is not None and gt.location is not None else 0.0
        out.append((t + loc) / 2 + (1.0 if said == "yes" else 0.0))
    return out


def accuracy_strict(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """Accuracy without the published quirks, in 0..2: no credit for a wrong answer.

    The completion is read with `iadr1.answers.parse` (tags case-insensitive and free to span lines;
    "Yes." and " no " read as answers); an answer outside an `<answer>` tag earns nothing. Ground truth
    "no": 1 if the answer is no. Ground truth "yes": 0 unless the answer is yes, then
    `1 + (type_score + strict location_score) / 2`, where a location without direction words matches only
    center-like text. Why: the published reward paid up to 1 for a type and location attached to a wrong
    "no", and paid location credit for any vague location.

    >>> sol = "<location>top left</location><type>scratch</type><answer>Yes</answer>"
    >>> accuracy_strict(["<location>upper left</location><type>scratch</type><answer>No</answer>"], [sol])
    [0.0]
    """
    out: list[float] = []
    for completion, sol in zip(completions, align_solutions(solution, len(completions)), strict=False):
        gt = parse_solution(sol)
        if gt is None:
            out.append(0.0)
            continue
        a = parse(completion_text(completion))
        if not a.tagged or a.answer != gt.label:
            out.append(0.0)
        elif gt.label == "no":
            out.append(1.0)
        else:
            t = type_score(a.type or "", gt.type or "")
            loc = location_score(a.location or "", gt.location or "", strict=True)
            out.append(1.0 + (t + loc) / 2)
    return out
