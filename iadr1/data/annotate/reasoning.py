"""The reasoning texts of the template reasoner (the text inside `<think>`), and the generic text for normal images.

Every text is built from facts only: the class, the mask's facts (`masks.MaskFacts`), the category and the defect
name. Several phrasings of each sentence, drawn by a generator seeded with (seed, image path), so that a model does
not learn one sentence and a rerun writes the same text. Texts never contain `<` or `>` (they would break the tags).
"""

from __future__ import annotations

import hashlib
import random

from iadr1.data.annotate.masks import MaskFacts, where_phrase

# Normal images, as the synthetic demo dataset words them (generic: they fit any class).
NORMAL_ENDINGS: tuple[str, ...] = (
    "The pattern is consistent across the whole image and I see no scratch, hole, stain, crack, missing part, "
    "deformation, wear or foreign object. The image is normal.",
    "Every part of the image looks like the rest of the surface; nothing is broken, missing, discoloured or out of "
    "place. There is no defect.",
    "I inspect each region of the image and find only the normal appearance of the material. No defect is present.",
)

# `iadr1 build-data`'s text for a normal image that has no annotation (`generic_reasoning`).
_GENERIC_REASONING = (
    "The {cls} in the image looks uniform and intact. I see no scratch, hole, stain, crack, missing part, "
    "deformation or foreign object anywhere in the image, so it is normal.",
    "I inspect the whole {cls} surface: the texture and shading are consistent everywhere and nothing is broken, "
    "missing or out of place. There is no defect.",
    "The image shows a regular {cls} with no visible damage, contamination or irregularity. "
    "It matches a normal sample.",
)


def generic_reasoning(cls_name: str, img_path: str) -> str:
    """Reasoning text for a normal image that has no annotation: one of a few templates, chosen by the path's
    hash (stable across runs and independent of the seed)."""
    h = int.from_bytes(hashlib.sha1(img_path.encode()).digest()[:4], "big")
    return _GENERIC_REASONING[h % len(_GENERIC_REASONING)].format(cls=cls_name.replace("_", " "))


def defect_verdict(type_: str) -> str:
    """The closing sentence of a defect's reasoning, as the synthetic dataset writes it."""
    return f"So the image is defective: {type_.lower()}."


# What the defect looks like, per category (a noun phrase after "a small ...").
_NOUNS: dict[str | None, tuple[str, ...]] = {
    "Scratch": ("scratch", "thin scratch line"),
    "Hole": ("hole", "puncture"),
    "Contamination": ("area of contamination", "stain"),
    "Damage": ("damaged area", "area of broken material"),
    "Missing parts": ("area where material is missing", "gap where part of the object is missing"),
    "Deformation": ("deformed area", "area where the shape is bent out of form"),
    "Presence of foreign objects": ("foreign object", "piece of foreign material"),
    "Abrasion": ("worn area", "abraded patch"),
    None: ("anomalous area", "region that differs from the normal pattern"),
}
_INTROS = (  # "the": class names are nouns, plurals and codes alike (bottle, coins, gravel, pcb1)
    "The image shows the {cls}.",
    "This is a close view of the {cls}.",
    "I inspect the {cls} in the image region by region.",
)
_FINDINGS = (
    "{Where}, there is a {size} {noun}.",
    "I see a {size} {noun} {where}.",
    "{Where}, the surface shows a {size} {noun}.",
)
_VERDICTS = (
    "So the image is defective: {t}.",
    "The part is defective; the defect is {t}.",
    "There is a defect, and it is {t}.",
)


def _rng(seed: int, img_path: str) -> random.Random:
    return random.Random(f"{seed}:{img_path}")


def _percent(fraction: float) -> str:
    pct = fraction * 100
    return "less than 1%" if pct < 1 else f"about {pct:.0f}%"


def _intro(cls_name: str, rng: random.Random) -> str:
    cls = cls_name.replace("_", " ")
    return rng.choice(_INTROS).format(cls=cls)


def template_defect(
    cls_name: str, facts: MaskFacts, type_: str | None, specie: str, img_path: str, seed: int = 0
) -> str:
    """A defect's reasoning from the class, the mask's facts, the category (None: generic) and the defect name."""
    rng = _rng(seed, img_path)
    where = where_phrase(facts.location)
    noun = rng.choice(_NOUNS.get(type_, _NOUNS[None]))
    parts = [
        _intro(cls_name, rng),
        rng.choice(_FINDINGS).format(Where=where[0].upper() + where[1:], where=where, size=facts.size, noun=noun),
    ]
    if facts.regions > 1:
        parts.append(
            rng.choice(
                (
                    f"The defect appears in {facts.regions} separate places; the largest is there.",
                    f"It is the largest of {facts.regions} separate defective spots.",
                )
            )
        )
    if facts.extent:
        parts.append(f"It {facts.extent}.")
    parts.append(f"It covers {_percent(facts.area_fraction)} of the image.")
    name = specie.replace("_", " ").strip()
    if type_ is not None and name and name.lower() != type_.lower():
        parts.append(rng.choice((f'It matches the known defect "{name}".', f'The defect is of the kind "{name}".')))
    if type_ is None:
        parts.append("So the image is defective.")
    else:
        parts.append(rng.choice(_VERDICTS).format(t=type_.lower()))
    return " ".join(parts)


def template_normal(cls_name: str, img_path: str, seed: int = 0) -> str:
    """A normal image's reasoning: an introduction to the class and a description of a defect-free part."""
    rng = _rng(seed, img_path)
    return f"{_intro(cls_name, rng)} {rng.choice(NORMAL_ENDINGS)}"
