"""No completion makes a reward raise or hang; the linear-time tag matching equals the published regexes."""

from __future__ import annotations

import re
import time
from difflib import SequenceMatcher

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iadr1.answers import first_tag, parse
from iadr1.rewards import (
    CATEGORIES,
    GROUP_TERMS,
    accuracy_reward,
    accuracy_strict,
    consistency_reward,
    consistency_strict,
    location_score,
    normalize_type,
    tag_count_reward,
    type_category,
    type_score,
)
from iadr1.rewards.tags import chain, first_on_line

REWARDS = [accuracy_reward, consistency_reward, accuracy_strict, consistency_strict, tag_count_reward]
RANGES = {
    accuracy_reward: (0.0, 2.0),
    accuracy_strict: (0.0, 2.0),
    consistency_reward: (0.0, 1.0),
    consistency_strict: (0.0, 1.0),
    tag_count_reward: (0.0, 1.0),
}
SOLUTIONS = [
    "<answer>No</answer>",
    "<location>top left</location><type>scratch</type><answer>Yes</answer>",
    "<location>center</location><type>surface anomaly</type><answer>Yes</answer>",
    "<answer>Yes</answer>",
    "no answer here",
]
TOKENS = [
    "<think>", "</think>", "<location>", "</location>", "<type>", "</type>", "<answer>", "</answer>",
    "<THINK>", "</Answer>", "<", ">", "/", "\n", " ", "yes", "No", "no.", "anomaly", "top left", "scratch",
    "surface anomalies", "é", "\u2028", "\x00",
]  # fmt: skip
tag_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=300), tag_soup)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(reward, completions, solutions):
    out = reward(completions, solutions)
    assert len(out) == len(completions)
    lo, hi = RANGES[reward]
    assert all(isinstance(r, float) and lo <= r <= hi for r in out)


@FUZZ
@given(st.lists(any_text, min_size=1, max_size=4), st.sampled_from(SOLUTIONS), st.booleans())
def test_rewards_never_raise(texts, solution, conversational):
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    for reward in REWARDS:
        check(reward, completions, [solution] * len(texts))


@FUZZ
@given(any_text, any_text)
def test_parts_never_raise_and_stay_in_range(a, b):
    assert 0.0 <= type_score(a, b) <= 1.0
    assert location_score(a, b) in (0.0, 1.0)
    assert location_score(a, b, strict=True) in (0.0, 1.0)
    parse(a)


@FUZZ
@given(tag_soup, st.sampled_from(SOLUTIONS))
def test_solutions_of_any_shape_never_raise(text, solution):
    for reward in REWARDS:
        check(reward, [solution], [text])  # swapped: arbitrary text as the solution
        check(reward, [text], [solution + text])


# The published rules, restated here with Python's regexes (docs/rewards.md): the linear-time functions and the
# rewards must give exactly what these give.
PUBLISHED_TAG = {n: re.compile(rf"<{n}>(.*?)</{n}>") for n in ("think", "location", "type", "answer")}
PUBLISHED_DEFECT = re.compile(
    r".*<think>.*?</think><location>.*?</location><type>.*?</type><answer>.*?</answer>.*", re.DOTALL
)
PUBLISHED_NORMAL = re.compile(r"^(?!.*<location>)(?!.*<type>).*<think>.*?</think><answer>.*?</answer>.*$", re.DOTALL)
TIGHT = st.lists(
    st.sampled_from(["<think>", "</think>", "<location>", "</location>", "<type>", "</type>", "<answer>",
                     "</answer>", "\n", "a", "<", "answer>"]),
    max_size=30,
).map("".join)  # fmt: skip


def published_consistency(text: str, solution: str) -> float:
    label = PUBLISHED_TAG["answer"].search(solution).group(1).strip().lower()
    pattern = PUBLISHED_DEFECT if label == "yes" else PUBLISHED_NORMAL
    return 1.0 if pattern.fullmatch(text) else 0.0


def published_accuracy(text: str, solution: str) -> float:
    def tag(name: str, s: str) -> str | None:
        m = PUBLISHED_TAG[name].search(s)
        return m.group(1) if m else None

    label = tag("answer", solution).strip().lower()
    said = tag("answer", text)
    said = said.strip().lower() if said is not None else None
    if label == "no":
        return 1.0 if said == "no" else 0.0
    parts = 0.0
    for name, score in (("type", type_score), ("location", location_score)):
        pred, gt = tag(name, text), tag(name, solution)
        if pred is not None and gt is not None:  # a part is paid only when both sides have its tag
            parts += score(pred, gt)
    return parts / 2 + (1.0 if said == "yes" else 0.0)


@settings(max_examples=1000, deadline=None)
@given(TIGHT)
@example("<think>\n</think><answer>\n</answer>")  # line breaks inside the pieces: DOTALL
@example("a\n<think></think><location></location><type></type><answer>\n</answer>\n")
@example("<think></think>\n<answer></answer>")  # a broken junction
def test_linear_matching_equals_published_regexes(text):
    for name, pattern in PUBLISHED_TAG.items():
        m = pattern.search(text)
        assert first_on_line(text, f"<{name}>", f"</{name}>") == (m.group(1) if m else None)
    defect = ("<think>", "</think><location>", "</location><type>", "</type><answer>", "</answer>")
    assert chain(text, defect) == (PUBLISHED_DEFECT.fullmatch(text) is not None)
    normal = ("<think>", "</think><answer>", "</answer>")
    no_tags = "<location>" not in text and "<type>" not in text
    assert (no_tags and chain(text, normal)) == (PUBLISHED_NORMAL.fullmatch(text) is not None)


# Realistic sampled replies: the grammar's pieces with line breaks, spaces, text around, tags missing or empty,
# types and locations from the table, group terms, and off-table words.
WORDS = ["top left", "upper-left", "bottom", "center", "", "scattered", "right side", "lower right", "middle"]
TYPES = ["scratch", "surface scratch", "stain", "hole", "surface anomaly", "structural anomalies", "crack", "",
         "Surface Anomaly", "dirt", "warping", "debris"]  # fmt: skip
GAP = st.sampled_from(["", "", "", "\n", " ", "\n\n", "ok "])
PIECE = st.one_of(
    st.tuples(st.just("think"), st.sampled_from(["A dark line.", "line one\nline two", "", "x\n"])),
    st.tuples(st.just("location"), st.sampled_from(WORDS + ["top\nleft"])),
    st.tuples(st.just("type"), st.sampled_from(TYPES + ["\nscratch"])),
    st.tuples(st.just("answer"), st.sampled_from(["Yes", "No", " yes ", "No.", "\nYes", ""])),
)
REPLY = st.lists(st.tuples(GAP, PIECE, st.booleans()), max_size=6).map(
    lambda ps: "".join(f"{g}<{n}>{c}" + ("" if cut else f"</{n}>") for g, (n, c), cut in ps)
)
GT = st.one_of(
    st.just("<answer>No</answer>"),
    st.builds(
        lambda loc, typ, which: (
            "".join(
                p
                for p, keep in ((f"<location>{loc}</location>", which != 1), (f"<type>{typ}</type>", which != 2))
                if keep
            )
            + "<answer>Yes</answer>"
        ),
        st.sampled_from(WORDS),
        st.sampled_from(TYPES),
        st.sampled_from([0, 0, 0, 1, 2]),
    ),
)


@settings(max_examples=3000, deadline=None)
@given(REPLY, GT)
def test_rewards_equal_the_published_rules(text, solution):
    assert accuracy_reward([text], [solution]) == [pytest.approx(published_accuracy(text, solution))]
    assert consistency_reward([text], [solution]) == [published_consistency(text, solution)]


@settings(max_examples=500, deadline=None)
@given(TIGHT.map(lambda t: t.replace("answer", "ANSWER", 1)))
def test_first_tag_equals_the_dotall_regex(text):
    m = re.search(r"<answer>(.*?)</answer>", text, re.IGNORECASE | re.DOTALL)
    assert first_tag("answer", text) == (m.group(1).strip() if m else None)


MB = 1_000_000
HEAD = "<think>x</think><location>top</location><type>"
HUGE = {
    "unclosed answers": "<answer>" * (MB // 8),
    "unclosed answers, one per line": "<answer>\n" * (MB // 9),
    "unclosed thinks": "<think>" * (MB // 7),
    "thinks with a gap per line": "<think></think><location>\n" * (MB // 26),
    "nested tags": ("<think><location><type><answer>" * (MB // 32)) + "</answer></type></location></think>",
    "one huge type": HEAD + "a" * MB + "</type><answer>Yes</answer>",
    "angle brackets": "<" * MB,
    "unicode": "é\u2028😀" * (MB // 3),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_one_megabyte_completions_are_fast(name):
    text = HUGE[name]
    start = time.perf_counter()
    for reward in REWARDS:
        check(reward, [text, [{"role": "assistant", "content": text}]], SOLUTIONS[:2])
    # Backtracking regexes take minutes here; the linear scans well under a second each (shared CI cores).
    assert time.perf_counter() - start < 10


def naive_category(norm: str) -> tuple[str | None, float]:
    """The category rule computed the slow way: every keyword, every difflib ratio."""
    from iadr1.rewards.defect_types import CATEGORIES

    keywords = [(kw, cat) for cat, (_, kws) in CATEGORIES.items() for kw in (cat, *kws)]
    for kw, cat in keywords:
        if norm == kw:
            return cat, 1.0
    best: tuple[str | None, float] = (None, 0.0)
    for kw, cat in keywords:
        if kw in norm or norm in kw:
            conf = min(len(kw), len(norm)) / max(len(kw), len(norm))
            if conf > best[1]:
                best = (cat, conf)
    if best[0] is not None:
        return best
    for kw, cat in keywords:
        r = SequenceMatcher(None, norm, kw).ratio()
        if r >= 0.7 and r > best[1]:
            best = (cat, r)
    return best


def typo(kw: str, i: int, c: str, op: str) -> str:
    return {"d": kw[:i] + kw[i + 1 :], "s": kw[:i] + c + kw[i + 1 :], "i": kw[:i] + c + kw[i:]}[op]


near_keywords = st.builds(
    typo,
    st.sampled_from([kw for cat, (_, kws) in CATEGORIES.items() for kw in (cat, *kws)]),
    st.integers(0, 25),
    st.sampled_from("aeiostrnlhc -"),
    st.sampled_from("dsi"),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(near_keywords, st.text(alphabet="abcdefghilmnoprstuvw -", min_size=1, max_size=25)))
def test_bounded_fuzzy_lookup_equals_the_naive_rule(text):
    norm = normalize_type(text)
    if not norm or norm in GROUP_TERMS:
        return
    m = type_category(text)
    category, confidence = naive_category(norm)
    assert m.category == category
    assert m.confidence == pytest.approx(confidence)
