"""The teacher of `iadr1 annotate --reasoner model`: its prompt, and the check every reply must pass.

The teacher (any inference backend: an API model, a local checkpoint through vLLM or transformers) sees the query
image, a normal reference image of the class where one exists, and the verified facts (defective or not, the mask's
location and size, the mapped category), and is asked for the reasoning in the method's tag grammar. A reply is
accepted only when (`check_reply`):

- it follows the grammar the truth calls for (`iadr1.answers.follows_grammar`) and answers it (Yes for a defect);
- a defect's `<location>` names the mask's grid cell (`iadr1.rewards.location.location_cell`, strict: a text that
  names no cell fails), and its `<type>` scores at least `TYPE_ACCEPT` against the mapped category with the type
  reward's rules (`type_score`: 0.6 and above means the same category);
- its reasoning is a valid annotation text (no `<`/`>`, not empty).

Where the mask or the category is unknown, the teacher supplies it: any grid cell, any text that maps to a category.
"""

from __future__ import annotations

from dataclasses import dataclass

from iadr1 import prompts
from iadr1.answers import first_tag, follows_grammar, parse
from iadr1.data.annotate.defect_names import CATEGORY_NAMES
from iadr1.data.annotate.masks import GRID_WORDS, MaskFacts, where_phrase
from iadr1.data.annotations import clean_text
from iadr1.rewards.defect_types import type_category, type_score
from iadr1.rewards.location import location_cell

TYPE_ACCEPT = 0.6  # type_score of two texts of the same category is 0.6 + 0.25 x confidence

# Why a reply was refused (the report counts them).
REFUSALS: dict[str, str] = {
    "no_reply": "the backend returned no reply (error, refusal, timeout)",
    "grammar": "the reply does not follow the tag grammar the truth calls for",
    "wrong_answer": "the reply's answer contradicts the truth",
    "wrong_location": "the location names another grid cell than the mask (or none)",
    "wrong_type": "the type is not of the mapped category (or names none)",
    "bad_reasoning": "the reasoning is empty or holds '<' or '>'",
}


@dataclass(frozen=True)
class Verdict:
    """The check of one reply: `refusal` None means accepted, with the fields to write."""

    refusal: str | None
    reasoning: str | None = None
    location: str | None = None
    type: str | None = None
    teacher_location: str | None = None
    teacher_type: str | None = None


def teacher_segments(
    cls_name: str, anomalous: bool, facts: MaskFacts | None, type_: str | None, reference: bool
) -> tuple[str | None, ...]:
    """The teacher's user turn as text segments and `None` image slots (reference first when given, then query)."""
    cls = cls_name.replace("_", " ")
    segs: list[str | None] = []
    if reference:
        segs += [prompts.TEACHER_REFERENCE.format(cls=cls), None]
    segs += [prompts.TEACHER_QUERY, None]
    if not anomalous:
        segs.append(f"{prompts.TEACHER_NORMAL_FACTS.format(cls=cls)} {prompts.TEACHER_NORMAL_TASK}")
        return tuple(segs)
    lines = [prompts.TEACHER_DEFECT_FACTS.format(cls=cls)]
    if facts is not None:
        spots = f", in {facts.regions} separate places" if facts.regions > 1 else ""
        spread = f"; it {facts.extent}" if facts.extent else ""
        lines.append(
            f"The defect is {facts.size} (about {facts.area_fraction * 100:.1f}% of the image){spots}; its largest "
            f"part lies {where_phrase(facts.location)}, the {facts.location} cell of a 3x3 grid{spread}."
        )
    else:
        lines.append(prompts.TEACHER_UNKNOWN_LOCATION)
    if type_ is not None:
        lines.append(f"Defect type: {type_}.")
    else:
        lines.append(prompts.TEACHER_UNKNOWN_TYPE.format(categories=", ".join(CATEGORY_NAMES.values())))
    lines.append(prompts.TEACHER_DEFECT_TASK)
    segs.append(" ".join(lines))
    return tuple(segs)


def check_reply(text: str | None, anomalous: bool, location: str | None, type_: str | None) -> Verdict:
    """Accept or refuse one reply (module docstring). `location` / `type_` None: the teacher supplies them."""
    if not text:
        return Verdict("no_reply")
    if not follows_grammar(text, defect=anomalous):
        return Verdict("grammar")
    answer = parse(text)
    if answer.answer != ("yes" if anomalous else "no"):
        return Verdict("wrong_answer")
    try:
        reasoning = clean_text(first_tag("think", text) or "")
    except ValueError:
        return Verdict("bad_reasoning")
    if not reasoning:
        return Verdict("bad_reasoning")
    if not anomalous:
        return Verdict(None, reasoning)
    t_loc, t_type = answer.location or "", answer.type or ""
    cell = location_cell(t_loc, strict=True)
    if location is not None:
        if cell is None or GRID_WORDS[cell - 1] != location:
            return Verdict("wrong_location")
    elif cell is None:
        return Verdict("wrong_location")
    if type_ is not None:
        if type_score(t_type, type_) < TYPE_ACCEPT:
            return Verdict("wrong_type")
        final_type = type_
    else:
        m = type_category(t_type)
        if m.category is None:
            return Verdict("wrong_type")
        final_type = CATEGORY_NAMES[m.category]
    return Verdict(None, reasoning, location or GRID_WORDS[cell - 1], final_type, t_loc, t_type)
