"""Location credit on a 3×3 grid (docs/method.md §4).

Cells are numbered 1..9 row by row (1 top left, 5 center, 9 bottom right). A text's cell is read from
substrings: "left" → one column left, else "right" → one right; "top"/"upper" → one row up, else
"bottom"/"lower" → one row down.
"""

from __future__ import annotations

from functools import lru_cache

CENTER = 5
# Words that place a direction-less location in the middle, for the strict rule.
CENTER_WORDS = ("center", "centre", "central", "middle")


def _direction_cell(t: str) -> tuple[int, bool]:
    cell, moved = CENTER, False
    if "left" in t:
        cell, moved = cell - 1, True
    elif "right" in t:
        cell, moved = cell + 1, True
    if "top" in t or "upper" in t:
        cell, moved = cell - 3, True
    elif "bottom" in t or "lower" in t:
        cell, moved = cell + 3, True
    return min(max(cell, 1), 9), moved


def location_cell(text: str, strict: bool = False) -> int | None:
    """The grid cell (1..9) a location text names.

    Published rule: start at 5 and move by the direction words (substrings of the lower-cased text), so
    any text without one, "" included, is 5. Strict rule: a text without direction words is 5 only if it says
    center/centre/central/middle, else None (it names no cell).

    >>> location_cell("Upper-left"), location_cell("scattered"), location_cell("scattered", strict=True)
    (1, 5, None)
    """
    t = text.lower()
    cell, moved = _direction_cell(t)
    if strict and not moved and not any(w in t for w in CENTER_WORDS):
        return None
    return cell


@lru_cache(maxsize=65536)
def _score_cached(pred: str, gt: str, strict: bool) -> float:
    cell = location_cell(pred, strict)
    return 1.0 if cell is not None and cell == location_cell(gt, strict) else 0.0


def location_score(pred: str, gt: str, *, strict: bool = False) -> float:
    """1.0 when the predicted location names the ground truth's grid cell, else 0.0.

    Published (`strict=False`): texts without direction words all mean the center, so "scattered" matches
    "whole image" and a missing location matches "center" (the flaw the paper's numbers include). Strict: such
    texts match only center-like text, and a text naming no cell matches nothing.

    >>> location_score("top left", "upper-left"), location_score("", "center")
    (1.0, 1.0)
    >>> location_score("", "center", strict=True)
    0.0
    """
    if not isinstance(pred, str) or not isinstance(gt, str):
        return 0.0
    if len(pred) <= 256 and len(gt) <= 256:
        return _score_cached(pred, gt, strict)
    return _score_cached.__wrapped__(pred, gt, strict)
