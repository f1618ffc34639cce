"""Consistency rewards ("structured control"): does the reply follow the grammar the ground truth needs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from iadr1.answers import DEFECT_GRAMMAR, NORMAL_GRAMMAR, follows_grammar
from iadr1.rewards.solution import align_solutions, parse_solution
from iadr1.rewards.tags import chain, completion_text

# The literal parts of the published patterns, between their `.*?` gaps.
_DEFECT_PIECES = ("<think>", "</think><location>", "</location><type>", "</type><answer>", "</answer>")
_NORMAL_PIECES = ("<think>", "</think><answer>", "</answer>")
_TAG = re.compile(r"<(/?)(think|location|type|answer)>", re.IGNORECASE)


def consistency_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """The published SC-GRPO consistency reward, 0 or 1; the answer's content is not judged.

    As published, the whole completion is matched with `re.fullmatch(pattern, text, re.DOTALL)`. Ground truth
    "yes": `.*<think>.*?</think><location>.*?</location><type>.*?</type><answer>.*?</answer>.*`; ground truth
    "no": `^(?!.*<location>)(?!.*<type>).*<think>.*?</think><answer>.*?</answer>.*$`. So: any text, line
    breaks included, may stand before, inside and after the tags; the pieces come in that order with the
    junctions (`</think><location>`, `</location><type>`, `</type><answer>`, `</think><answer>`) adjacent;
    for "no", no `<location>` or `<type>` substring anywhere. Tags are case-sensitive. A solution without a
    yes/no label scores 0.

    >>> consistency_reward(["<think>o\\nk</think><answer>No</answer>", "<think>ok</think> <answer>No</answer>"],
    ...                    ["<answer>No</answer>"] * 2)
    [1.0, 0.0]
    """
    out: list[float] = []
    for completion, sol in zip(completions, align_solutions(solution, len(completions)), strict=False):
        gt = parse_solution(sol)
        if gt is None:
            out.append(0.0)
            continue
        text = completion_text(completion)
        if gt.label == "yes":
            ok = chain(text, _DEFECT_PIECES)
        else:
            ok = "<location>" not in text and "<type>" not in text and chain(text, _NORMAL_PIECES)
        out.append(1.0 if ok else 0.0)
    return out


def consistency_strict(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """Consistency judged on the whole reply with `iadr1.answers.follows_grammar`, 0 or 1.

    The reply must be exactly the grammar of docs/method.md §1 for the ground truth (yes: think,
    location, type, answer; no: think, answer), each tag once, with only whitespace around tags; tags are
    case-insensitive and contents may span lines. Why: the published check fails a reply for a space or a
    line break between two tags (common in sampled text) yet passes one with junk or extra tags around the
    matching part.

    >>> ok = "<think>multi\\nline</think>\\n<answer>No</answer>"
    >>> junk = "<think>a</think><answer>No</answer> ok"
    >>> consistency_strict([ok, junk], ["<answer>No</answer>"] * 2)
    [1.0, 0.0]
    """
    out: list[float] = []
    for completion, sol in zip(completions, align_solutions(solution, len(completions)), strict=False):
        gt = parse_solution(sol)
        ok = gt is not None and follows_grammar(completion_text(completion), defect=gt.defect)
        out.append(1.0 if ok else 0.0)
    return out


def tag_count_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """Partial credit for the grammar's tags, in 0..1: the fraction of tag counts that are right.

    Checks: each opening and each closing tag of the grammar the ground truth calls for appears exactly
    once (yes: think, location, type, answer → 8 checks; no: think, answer → 4 checks), and for "no" also
    that no location and no type tag appears at all (2 more checks). Case-insensitive; order and text
    between tags are not judged (that is consistency's job). Why: a 0/1 consistency reward gives every
    completion of a group the same score while a model is far from the format, so GRPO has no signal;
    counts grade the way there.

    >>> no = ["<answer>No</answer>"] * 2
    >>> tag_count_reward(["<think>x</think><answer>No</answer>", "<answer>No</answer>"], no)
    [1.0, 0.6666666666666666]
    """
    out: list[float] = []
    for completion, sol in zip(completions, align_solutions(solution, len(completions)), strict=False):
        gt = parse_solution(sol)
        if gt is None:
            out.append(0.0)
            continue
        counts: dict[str, int] = {}
        for m in _TAG.finditer(completion_text(completion)):
            key = m.group(1) + m.group(2).lower()
            counts[key] = counts.get(key, 0) + 1
        if gt.label == "yes":
            checks = [counts.get(p + n, 0) == 1 for n in DEFECT_GRAMMAR for p in ("", "/")]
        else:
            checks = [counts.get(p + n, 0) == 1 for n in NORMAL_GRAMMAR for p in ("", "/")]
            checks += [not any(counts.get(p + n) for p in ("", "/")) for n in ("location", "type")]
        out.append(sum(checks) / len(checks))
    return out
