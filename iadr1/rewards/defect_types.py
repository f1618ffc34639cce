"""Defect-type similarity: the 8 categories in 2 groups of docs/method.md §4 and `type_score`.

A type text is normalised, then mapped to a category (exact keyword, else keyword substring, else the
closest keyword by difflib ratio >= 0.7). `type_score` compares a predicted type with the ground-truth type
using the rules
in the published order. Lookups are cached on normalised strings, and difflib ratios are only computed
where their cheap upper bounds (length, then character multiset) leave them a chance: same numbers, a
fraction of the time.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

SURFACE = "surface"
STRUCTURAL = "structural"

# category -> (group, keywords). The category name is itself a keyword, listed first; table order breaks ties.
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "contamination": (SURFACE, ("surface contamination", "stain", "dirt", "impurity", "color anomaly")),
    "presence of foreign objects": (
        SURFACE,
        (
            "foreign object",
            "foreign body",
            "debris",
            "contaminant object",
            "extraneous material",
            "foreign element",
            "foreign matter",
            "unwanted object",
        ),
    ),
    "scratch": (
        SURFACE,
        ("surface scratch", "scratch mark", "linear scratch", "score mark", "linear anomaly"),
    ),
    "missing parts": (
        SURFACE,
        ("missing part", "surface notch", "notch", "gap", "chip", "surface discontinuity"),
    ),
    "deformation": (
        STRUCTURAL,
        (
            "shape distortion",
            "warping",
            "bending",
            "twisting",
            "shape deviation",
            "geometric distortion",
            "irregularity",
            "bent component",
        ),
    ),
    "hole": (
        STRUCTURAL,
        (
            "opening",
            "perforation",
            "puncture",
            "cavity",
            "void",
            "aperture",
            "penetration defect",
            "through-hole",
        ),
    ),
    "damage": (
        STRUCTURAL,
        (
            "structural damage",
            "breakage",
            "fracture",
            "rupture",
            "deterioration",
            "material damage",
            "surface damage",
        ),
    ),
    "abrasion": (STRUCTURAL, ("wear", "grinding damage", "surface erosion", "wear mark", "surface wear")),
}

# Bare group terms name a group, not a category. They are not looked up in the table: difflib would map
# "surface anomalies" to "surface damage" (ratio 0.77), a structural category, the opposite of what they say.
GROUP_TERMS: dict[str, str] = {
    "surface anomaly": SURFACE,
    "surface anomalies": SURFACE,
    "structural anomaly": STRUCTURAL,
    "structural anomalies": STRUCTURAL,
}

FUZZY_THRESHOLD = 0.7
_CACHE_MAX_LEN = 256  # longer texts are computed, not cached: a few 1 MB keys would pin gigabytes

# (keyword, category, character multiset) in table order.
_KEYWORDS: tuple[tuple[str, str, Counter[str]], ...] = tuple(
    (kw, cat, Counter(kw)) for cat, (_, kws) in CATEGORIES.items() for kw in (cat, *kws)
)
_EXACT: dict[str, str] = {}
for _kw, _cat, _ in _KEYWORDS:
    _EXACT.setdefault(_kw, _cat)

_SPACES = re.compile(r"\s+")
_DROP = re.compile(r"[^\w\s-]")


@dataclass(frozen=True)
class TypeMatch:
    """How a normalised type text maps to the table: `category`, `group` (None: unknown), `confidence`."""

    category: str | None
    group: str | None
    confidence: float


def normalize_type(text: str) -> str:
    """Lower-case, strip, collapse whitespace, then drop characters other than word chars, spaces and "-".

    The published order, kept: dropping comes last, so "stain !" keeps a trailing space ("stain ").

    >>> normalize_type("  Surface   Scratch! ")
    'surface scratch'
    """
    return _DROP.sub("", _SPACES.sub(" ", text.lower().strip()))


def _beats(value: float, floor: float, strictly: bool) -> bool:
    return value > floor if strictly else value >= floor


def _ratio_if_beats(a: str, b: str, floor: float, strictly: bool = False) -> float | None:
    """`SequenceMatcher(None, a, b).ratio()` if it beats `floor`, else None (skipped when a bound can't)."""
    total = len(a) + len(b)
    # Both bounds are computed with difflib's own formula (2 × count / total), so the comparisons are exact.
    if total == 0 or not _beats(2.0 * min(len(a), len(b)) / total, floor, strictly):
        return None
    sm = SequenceMatcher(None, a, b)
    if not _beats(sm.quick_ratio(), floor, strictly):
        return None
    r = sm.ratio()
    return r if _beats(r, floor, strictly) else None


def _lookup(norm: str) -> TypeMatch:
    if not norm:
        return TypeMatch(None, None, 0.0)
    if norm in GROUP_TERMS:
        return TypeMatch(None, GROUP_TERMS[norm], 1.0)
    cat = _EXACT.get(norm)
    if cat is not None:
        return TypeMatch(cat, CATEGORIES[cat][0], 1.0)
    # Keyword substring either way; confidence = shorter / longer length; best wins, table order breaks ties.
    best_cat, best = None, 0.0
    for kw, kcat, _ in _KEYWORDS:
        if kw in norm or norm in kw:
            conf = min(len(kw), len(norm)) / max(len(kw), len(norm))
            if conf > best:
                best_cat, best = kcat, conf
    if best_cat is not None:
        return TypeMatch(best_cat, CATEGORIES[best_cat][0], best)
    # Closest keyword by difflib ratio, if >= 0.7; first in table order on ties (a later one must beat it).
    text_chars: Counter[str] | None = None  # built only if some keyword passes the length bound
    for kw, kcat, kw_chars in _KEYWORDS:
        floor, strictly = (best, True) if best_cat is not None else (FUZZY_THRESHOLD, False)
        total = len(norm) + len(kw)
        if not _beats(2.0 * min(len(norm), len(kw)) / total, floor, strictly):
            continue
        # difflib's quick_ratio from precomputed counters, before building a matcher.
        if text_chars is None:
            text_chars = Counter(norm)
        if not _beats(2.0 * sum((text_chars & kw_chars).values()) / total, floor, strictly):
            continue
        r = SequenceMatcher(None, norm, kw).ratio()
        if _beats(r, floor, strictly):
            best_cat, best = kcat, r
    if best_cat is not None:
        return TypeMatch(best_cat, CATEGORIES[best_cat][0], best)
    return TypeMatch(None, None, 0.0)


_lookup_cached = lru_cache(maxsize=65536)(_lookup)


def type_category(text: str) -> TypeMatch:
    """Map a type text to its category, group and confidence (normalised first; see the module docstring).

    Exact keyword: confidence 1. Keyword contained in the text or containing it: shorter/longer length. Else
    the best difflib ratio if >= 0.7. A bare group term ("surface anomalies") has a group and no category.

    >>> type_category("Scratches")
    TypeMatch(category='scratch', group='surface', confidence=0.7777777777777778)
    """
    norm = normalize_type(text)
    return _lookup_cached(norm) if len(norm) <= _CACHE_MAX_LEN else _lookup(norm)


def _fuzzy(p: str, g: str) -> float:
    r = _ratio_if_beats(p, g, FUZZY_THRESHOLD)
    return 0.0 if r is None else 0.4 * r


def _score(pred: str, gt: str) -> float:
    p, g = normalize_type(pred), normalize_type(gt)
    if not p or not g:
        return 0.0
    mp = _lookup_cached(p) if len(p) <= _CACHE_MAX_LEN else _lookup(p)
    mg = _lookup_cached(g) if len(g) <= _CACHE_MAX_LEN else _lookup(g)
    if mp.group is not None and mg.group is not None and mp.group != mg.group:
        return 0.0
    # Exactly one side a bare group term: two group terms go on to the later rules (equal texts score 1.0).
    p_group, g_group = p in GROUP_TERMS, g in GROUP_TERMS
    if p_group != g_group and ((p_group and GROUP_TERMS[p] == mg.group) or (g_group and GROUP_TERMS[g] == mp.group)):
        return 0.3
    if p == g:
        return 1.0
    if p in g or g in p:
        return 0.85
    if mp.category is None or mg.category is None:
        return _fuzzy(p, g)
    if mp.category == mg.category:
        return 0.6 + 0.25 * min(mp.confidence, mg.confidence)
    if mp.group == mg.group:
        return 0.3
    return _fuzzy(p, g)  # unreachable while every category has a group; kept as the published fallback


_score_cached = lru_cache(maxsize=65536)(_score)


def type_score(pred: str, gt: str) -> float:
    """Similarity of a predicted defect type to the ground-truth type, 0..1 (docs/method.md §4).

    Rules on normalised texts, first that applies: either empty → 0; both groups known and different → 0;
    exactly one side a bare group term naming the other's group → 0.3; equal → 1; one contains the other → 0.85; a side
    without category → 0.4 × ratio if ratio >= 0.7 else 0; same category → 0.6 + 0.25 × min(confidences);
    same group → 0.3.

    >>> type_score("scratch", "surface scratch"), type_score("hole", "scratch"), type_score("dirt", "stain")
    (0.85, 0.0, 0.85)
    """
    if not isinstance(pred, str) or not isinstance(gt, str):
        return 0.0
    if len(pred) <= _CACHE_MAX_LEN and len(gt) <= _CACHE_MAX_LEN:
        return _score_cached(pred, gt)
    return _score(pred, gt)
