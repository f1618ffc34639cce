"""Ground truth read from a GRPO record's `solution`, and its up-front validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from iadr1.rewards.tags import first_on_line

LABELS = ("yes", "no")


@dataclass(frozen=True)
class GroundTruth:
    """What a `solution` says: `label` yes/no; for a defect, the raw location and type.

    `location` / `type` are None when the solution has no such tag and "" when the tag is there but empty:
    the published accuracy pays a part only when both the completion and the solution have its tag.
    """

    label: str
    location: str | None = None
    type: str | None = None

    @property
    def defect(self) -> bool:
        return self.label == "yes"


@lru_cache(maxsize=4096)
def _parse_cached(solution: str) -> GroundTruth | None:
    answer = first_on_line(solution, "<answer>", "</answer>")
    if answer is None:
        return None
    label = answer.strip().lower()
    if label not in LABELS:
        return None
    if label == "no":
        return GroundTruth("no")
    location = first_on_line(solution, "<location>", "</location>")
    type_ = first_on_line(solution, "<type>", "</type>")
    return GroundTruth("yes", location, type_)


def parse_solution(solution: object) -> GroundTruth | None:
    """The ground truth of a solution, read as the published code reads it; None when it has no usable label.

    Label: the first `<answer>…</answer>` on one line (case-sensitive tags), stripped and lower-cased; it
    must be "yes" or "no". Location and type: the first `<location>` / `<type>` on one line, raw (None
    when absent). Never raises.

    >>> parse_solution("<location>top left</location><type>scratch</type><answer>Yes</answer>")
    GroundTruth(label='yes', location='top left', type='scratch')
    """
    if not isinstance(solution, str):
        return None
    # Solutions repeat (G completions per prompt): cache the short ones; long ones would only bloat the cache.
    return _parse_cached(solution) if len(solution) <= 4096 else _parse_cached.__wrapped__(solution)


def validate_solution(solution: str) -> None:
    """Raise ValueError, naming the solution, unless the rewards can read a yes/no label from it.

    Call it when the dataset is built (and when the GRPO trainer starts) so a bad record fails before
    training; the reward functions themselves score such a record 0 instead of raising.

    >>> validate_solution("<answer>Maybe</answer>")
    Traceback (most recent call last):
    ...
    ValueError: solution '<answer>Maybe</answer>': the <answer> tag must contain Yes or No, got 'Maybe'
    """
    if not isinstance(solution, str):
        raise ValueError(f"solution {solution!r}: expected a string, got {type(solution).__name__}")
    shown = solution if len(solution) <= 200 else solution[:197] + "..."
    answer = first_on_line(solution, "<answer>", "</answer>")
    if answer is None:
        why = (
            "the <answer> tag must open and close on one line"
            if "<answer>" in solution and "</answer>" in solution
            else "no <answer>…</answer> tag (tags are case-sensitive)"
        )
        raise ValueError(f"solution {shown!r}: {why}")
    if answer.strip().lower() not in LABELS:
        got = answer.strip()
        raise ValueError(f"solution {shown!r}: the <answer> tag must contain Yes or No, got {got!r}")


def align_solutions(solution: Any, n: int) -> Sequence[Any]:
    """`solution` as one entry per completion.

    TRL passes a list as long as the completions; a single string is repeated, and a short or missing
    column is padded with None (scored 0) so that a reward never raises.
    """
    if isinstance(solution, str):
        return [solution] * n
    if not isinstance(solution, (list, tuple)):
        return [None] * n
    return solution if len(solution) >= n else list(solution) + [None] * (n - len(solution))
