"""Rewards of docs/method.md §4: tables of (completion, solution, expected) written from the rules."""

from __future__ import annotations

import doctest

import pytest

import iadr1.rewards.accuracy
import iadr1.rewards.consistency
import iadr1.rewards.defect_types
import iadr1.rewards.location
import iadr1.rewards.registry
import iadr1.rewards.solution
import iadr1.rewards.tags
from iadr1.rewards import (
    accuracy_reward,
    accuracy_strict,
    consistency_reward,
    consistency_strict,
    location_cell,
    location_score,
    normalize_type,
    parse_solution,
    tag_count_reward,
    type_category,
    type_score,
    validate_solution,
)

YES_TL = "<location>top left</location><type>scratch</type><answer>Yes</answer>"
YES_CENTER = "<location>center</location><type>hole</type><answer>Yes</answer>"
NO = "<answer>No</answer>"


def full(location: str, type_: str, answer: str = "Yes", think: str = "A dark line.") -> str:
    tagged = f"<location>{location}</location><type>{type_}</type><answer>{answer}</answer>"
    return f"<think>{think}</think>{tagged}"


# --- type_score ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        # empty side (after normalisation) → 0
        ("", "stain", 0.0),
        ("stain", "", 0.0),
        ("!!!", "stain", 0.0),
        # both groups known and different → 0
        ("hole", "scratch", 0.0),
        ("surface anomaly", "hole", 0.0),  # a bare group term has its group
        ("surface", "stain", 0.0),  # "surface" is closest to "surface wear" (7/12): abrasion, structural
        # bare group term naming the other's group → 0.3
        ("Surface anomalies", "stain", 0.3),
        ("structural anomaly", "warping", 0.3),
        ("dirt", "surface anomalies", 0.3),
        # two bare group terms: the group rule is for exactly one; they go on to the later rules
        ("surface anomaly", "surface anomaly", 1.0),
        ("structural anomaly", "Structural  Anomaly", 1.0),
        # "anomaly" is not inside "anomalies"; group terms have no category → 0.4 × ratio ("structural anomal": 17)
        ("structural anomaly", "structural anomalies", 0.4 * 34 / 38),
        ("surface anomalies", "structural anomaly", 0.0),  # both groups known and different
        # equal normalised → 1
        ("scratch", "scratch", 1.0),
        ("  Surface   Scratch! ", "surface scratch", 1.0),
        ("Through-Hole", "through-hole", 1.0),
        # one contains the other → 0.85
        ("scratch", "surface scratch", 0.85),
        ("long surface scratch", "scratch", 0.85),
        ("cracks", "crack", 0.85),  # containment applies to off-table words too
        ("through-hole", "hole", 0.85),
        # a side without category → 0.4 × ratio if ratio >= 0.7: "crak" vs "crack" match "cra"+"k" = 4, 2·4/9
        ("crak", "crack", 0.4 * 8 / 9),
        ("dent", "crack", 0.0),  # no letter in common: ratio 0
        ("crack", "scratch", 0.0),  # "crack" has no category; ratio 2·4/12 < 0.7
        # same category → 0.6 + 0.25 × min(confidence)
        ("dirt", "stain", 0.85),  # both exact keywords
        ("abrasion", "wear", 0.85),  # a category name is a keyword
        ("presence of foreign objects", "debris", 0.85),
        ("stains", "dirt", 0.6 + 0.25 * 5 / 6),  # "stain" inside "stains": confidence 5/6
        ("scrach", "scratch mark", 0.6 + 0.25 * 12 / 13),  # difflib "scra"+"ch" vs "scratch": 2·6/13
        ("through hole", "perforation", 0.6 + 0.25 * 4 / 12),  # "hole" inside "through hole": 4/12
        # same group, other category → 0.3
        ("stain", "scratch", 0.3),
        ("hole", "warping", 0.3),
        ("debris", "notch", 0.3),
    ],
)
def test_type_score(pred, gt, expected):
    assert type_score(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, category, group, confidence",
    [
        ("Scratch", "scratch", "surface", 1.0),
        ("surface damage", "damage", "structural", 1.0),
        ("scratches", "scratch", "surface", 7 / 9),
        ("surface", "abrasion", "structural", 7 / 12),  # best substring confidence, not the first
        ("mark", "abrasion", "structural", 4 / 9),  # "wear mark" (9) beats "score mark" (10)
        ("ing", "deformation", "structural", 3 / 7),  # "warping", "opening" tie at 3/7: table order
        ("scrach", "scratch", "surface", 12 / 13),
        ("surface anomalies", None, "surface", 1.0),  # a group term, not difflib's "surface damage"
        ("crack", None, None, 0.0),
        ("", None, None, 0.0),
    ],
)
def test_type_category(text, category, group, confidence):
    m = type_category(text)
    assert (m.category, m.group) == (category, group)
    assert m.confidence == pytest.approx(confidence)


def test_normalize_type_keeps_the_published_order():
    assert normalize_type("  Surface\t\nScratch!! ") == "surface scratch"
    assert normalize_type("stain !") == "stain "  # drop comes after strip: a space survives
    assert normalize_type("Through-Hole (small)") == "through-hole small"


# --- location_score -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("top left", "upper-left", 1.0),
        ("Top Left corner", "top-left", 1.0),
        ("upper left", "top right", 0.0),
        ("bottom", "lower middle", 1.0),
        ("bottom right", "lower-right corner", 1.0),
        ("left", "right", 0.0),
        ("left right", "left", 1.0),  # "left" is tested first
        ("right", "left and right", 0.0),
        ("upper bottom", "top", 1.0),  # "top"/"upper" is tested first
        ("stop sign area", "top", 1.0),  # substrings: "top" inside "stop"
        ("center", "middle", 1.0),
        ("scattered", "whole image", 1.0),  # published flaw: direction-less texts all match
        ("", "center", 1.0),  # a missing location is the center too
        ("center", "top", 0.0),
    ],
)
def test_location_score_published(pred, gt, expected):
    assert location_score(pred, gt) == expected


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("top left", "upper-left", 1.0),
        ("center", "middle", 1.0),
        ("central area", "Centre", 1.0),
        ("scattered", "whole image", 0.0),
        ("scattered", "center", 0.0),
        ("", "center", 0.0),
        ("center", "top", 0.0),
        ("middle left", "left", 1.0),
    ],
)
def test_location_score_strict(pred, gt, expected):
    assert location_score(pred, gt, strict=True) == expected


def test_location_cells():
    grid = ["top left", "top", "top right", "left", "center", "right"]
    grid += ["bottom left", "bottom", "bottom right"]
    assert [location_cell(t) for t in grid] == list(range(1, 10))
    assert location_cell("whole image") == 5
    assert location_cell("whole image", strict=True) is None


# --- accuracy (published) -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, solution, expected",
    [
        # ground truth "no": 1 iff the first <answer>, stripped and lower-cased, is exactly "no"
        ("<think>x</think><answer>No</answer>", NO, 1.0),
        ("<answer> NO </answer>", NO, 1.0),
        ("<answer>No.</answer>", NO, 0.0),  # exact comparison: the period counts
        ("<answer>Yes</answer>", NO, 0.0),
        ("<answer>\nNo</answer>", NO, 0.0),  # no DOTALL: a newline breaks the tag
        ("<ANSWER>No</ANSWER>", NO, 0.0),  # case-sensitive tags
        ("No", NO, 0.0),  # no tag, no answer
        ("<answer>No</answer><answer>Yes</answer>", NO, 1.0),  # the first one counts
        ("<answer>\nYes</answer><answer>No</answer>", NO, 1.0),  # the first tag on one line
        ("<think>x</think><location>left</location><type>stain</type><answer>No</answer>", NO, 1.0),
        # ground truth "yes": (type + location) / 2 + 1[answer == "yes"]
        (full("top left", "scratch"), YES_TL, 2.0),
        (full("upper-left", "surface scratch"), YES_TL, (0.85 + 1) / 2 + 1),
        (full("top left", "stain"), YES_TL, (0.3 + 1) / 2 + 1),
        (full("bottom right", "hole"), YES_TL, 1.0),
        (full("top left", "scratch", answer="No"), YES_TL, 1.0),  # published flaw: credit with a wrong answer
        (full("top left", "scratch", answer="Yes."), YES_TL, 1.0),  # "yes." is not "yes"
        (full("top left", "scratch", answer=" YES "), YES_TL, 2.0),
        ("<answer>Yes</answer>", YES_TL, 1.0),  # no type (0), no location = center ≠ top left (0)
        # a missing tag earns nothing; an empty one is read (an empty location is the center)
        ("<answer>Yes</answer><type>hole</type>", YES_CENTER, 1.5),  # no location tag: location part 0
        ("<location></location><type>hole</type><answer>Yes</answer>", YES_CENTER, 2.0),
        ("<location>center</location><answer>Yes</answer>", YES_CENTER, 1.5),  # no type tag: type part 0
        ("<location>top left</location><type>\nscratch</type><answer>Yes</answer>", YES_TL, 1.5),
        ("<location>top\nleft</location><type>scratch</type><answer>Yes</answer>", YES_TL, 1.5),
        ("<think>a\nb</think>" + full("top left", "scratch")[len("<think>A dark line.</think>") :], YES_TL, 2.0),
        # the solution's tags count too: a solution without <location> pays no location, even for "center"
        (
            "<location>center</location><type>hole</type><answer>Yes</answer>",
            "<type>hole</type><answer>Yes</answer>",
            1.5,
        ),
        (
            "<location>center</location><type>hole</type><answer>Yes</answer>",
            "<location>center</location><answer>Yes</answer>",
            1.5,
        ),
        ("<answer>Yes</answer>", "<answer>Yes</answer>", 1.0),
        # two group terms are equal texts (rule 3 of docs/rewards.md)
        (
            full("left", "surface anomaly"),
            "<location>left</location><type>surface anomaly</type><answer>Yes</answer>",
            2.0,
        ),
        (full("top left", "scratch")[::-1], YES_TL, 0.0),
        ("", YES_TL, 0.0),
        # a solution without a usable label scores 0 (validate_solution rejects it up front)
        (full("top left", "scratch"), "<answer>maybe</answer>", 0.0),
        ("<answer>No</answer>", "no tags", 0.0),
        ("<answer>No</answer>", "<Answer>No</Answer>", 0.0),
        ("<answer>No</answer>", None, 0.0),
    ],
)
def test_accuracy_reward(completion, solution, expected):
    assert accuracy_reward([completion], [solution]) == [pytest.approx(expected)]


# --- accuracy_strict ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, solution, expected",
    [
        ("<think>x</think><answer>No</answer>", NO, 1.0),
        ("<answer>No.</answer>", NO, 1.0),
        ("<answer>\nno\n</answer>", NO, 1.0),
        ("<ANSWER>No</ANSWER>", NO, 1.0),
        ("No", NO, 0.0),  # an answer must be tagged
        ("<answer>Yes</answer>", NO, 0.0),
        (full("top left", "scratch"), YES_TL, 2.0),
        (full("upper-left", "surface scratch"), YES_TL, 1 + (0.85 + 1) / 2),
        (full("top left", "scratch", answer="No"), YES_TL, 0.0),  # no partial credit for a wrong answer
        (full("top left", "scratch", answer="Yes."), YES_TL, 2.0),
        ("<answer>Yes</answer>", YES_TL, 1.0),
        ("<answer>Yes</answer><type>hole</type>", YES_CENTER, 1.5),  # a missing location is not the center
        (full("scattered", "hole"), YES_CENTER, 1.5),  # nor is a vague one
        (full("middle", "hole"), YES_CENTER, 2.0),
        ("<location>upper\nleft</location><type>Scratch</type><answer>yes</answer>", YES_TL, 2.0),
        (full("top left", "scratch"), "<answer>maybe</answer>", 0.0),
    ],
)
def test_accuracy_strict(completion, solution, expected):
    assert accuracy_strict([completion], [solution]) == [pytest.approx(expected)]


# --- consistency (published) --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, solution, expected",
    [
        (full("b", "c", answer="d"), YES_TL, 1.0),
        ("Sure. " + full("b", "c") + " Done.", YES_TL, 1.0),  # a search: text around the match is fine
        ("\n" + full("b", "c") + "\n", YES_TL, 1.0),
        (full("b", "c", answer="No"), YES_TL, 1.0),  # the answer is not judged
        ("<think>a</think> <location>b</location><type>c</type><answer>d</answer>", YES_TL, 0.0),
        # DOTALL full match: line breaks anywhere, text around and between the pieces
        ("<think>a\nb</think><location>b</location><type>c</type><answer>d</answer>", YES_TL, 1.0),
        ("<think>a</think><location>\nb\n</location><type>c\n</type><answer>\nd</answer>", YES_TL, 1.0),
        ("Let me look.\n" + full("b", "c") + "\nThat is all.\n", YES_TL, 1.0),
        ("<think>a</think>\n<location>b</location><type>c</type><answer>d</answer>", YES_TL, 0.0),  # junction
        ("<think>a</think><location>b</location>\n<type>c</type><answer>d</answer>", YES_TL, 0.0),
        ("<think>a</think><location>b</location><type>c</type>\n<answer>d</answer>", YES_TL, 0.0),
        ("<think>a\n</think><location>b</location><type>c</type><answer>d", YES_TL, 0.0),  # unclosed answer
        ("<think>a</think><location>b</location><type>c</type><answer>d\n</answer>", YES_TL, 1.0),
        ("<think>x\n</think><answer>No</answer>", YES_TL, 0.0),
        ("<think>a</think><type>c</type><location>b</location><answer>d</answer>", YES_TL, 0.0),
        ("<THINK>a</THINK><location>b</location><type>c</type><answer>d</answer>", YES_TL, 0.0),
        ("<think>a</think><answer>Yes</answer>", YES_TL, 0.0),
        ("<think>x</think><answer>No</answer>", NO, 1.0),
        ("<think>x</think><answer>Yes</answer>", NO, 1.0),
        ("<think><think>x</think><answer>No</answer>", NO, 1.0),  # nested opening tags: still found
        ("<think>x</think>\n<answer>No</answer>", NO, 0.0),  # the junction must be adjacent
        ("<think>first line\nsecond line</think><answer>No</answer>", NO, 1.0),
        ("Looking.\n<think>x\ny</think><answer>\nNo\n</answer>\nDone.", NO, 1.0),
        ("<think>x\n</think><answer>No</answer>\n<type>\n", NO, 0.0),  # a type tag on another line
        ("<think>\nx<location>\n</think><answer>No</answer>", NO, 0.0),  # a location tag inside think
        ("<think>x</think> <answer>No</answer>", NO, 0.0),
        ("<think>x</think><answer>No</answer><type>stain</type>", NO, 0.0),  # a type tag anywhere
        ("<think>x</think><location>l</location><answer>No</answer>", NO, 0.0),
        ("<think>x</think><answer>No</answer></type>", NO, 1.0),  # only opening tags are looked for
        ("<answer>No</answer>", NO, 0.0),
        ("", NO, 0.0),
        ("<think>x</think><answer>No</answer>", "<answer>maybe</answer>", 0.0),
    ],
)
def test_consistency_reward(completion, solution, expected):
    assert consistency_reward([completion], [solution]) == [expected]


@pytest.mark.parametrize(
    "completion, solution, expected",
    [
        (full("b", "c"), YES_TL, 1.0),
        ("<think>a</think> <location>b</location>\n<type>c</type> <answer>Yes</answer>\n", YES_TL, 1.0),
        ("<think>a\nb</think><location>b</location><type>c</type><answer>d</answer>", YES_TL, 1.0),
        ("Sure. " + full("b", "c"), YES_TL, 0.0),  # the whole reply must be the grammar
        ("<think>a</think><answer>Yes</answer>", YES_TL, 0.0),
        ("<think>x\ny</think>\n<answer>No</answer>\n", NO, 1.0),
        ("<Think>x</Think> <Answer>no</Answer>", NO, 1.0),
        ("<think>x</think><answer>No</answer> ok", NO, 0.0),
        ("<think>x</think><answer>No</answer><answer>No</answer>", NO, 0.0),
        ("<think><think>x</think><answer>No</answer>", NO, 0.0),
        ("<think>x</think><answer>No</answer></type>", NO, 0.0),
        ("<think>x</think><answer>No</answer>", "<answer>maybe</answer>", 0.0),
    ],
)
def test_consistency_strict(completion, solution, expected):
    assert consistency_strict([completion], [solution]) == [expected]


@pytest.mark.parametrize(
    "completion, solution, expected",
    [
        ("<think>x</think><answer>No</answer>", NO, 1.0),
        ("<answer>No</answer>", NO, 4 / 6),
        ("<think>x</think><type>t</type><answer>No</answer>", NO, 5 / 6),
        ("<think>x</think><answer>No</answer></location>", NO, 5 / 6),
        ("", NO, 2 / 6),
        (full("b", "c"), YES_TL, 1.0),
        ("<think>a</think><answer>Yes</answer>", YES_TL, 4 / 8),
        ("<think>" + full("b", "c"), YES_TL, 7 / 8),
        ("<THINK>a</Think><location>b</location><type>c</type><answer>d</answer>", YES_TL, 1.0),
        ("", YES_TL, 0.0),
        (full("b", "c"), "<answer>maybe</answer>", 0.0),
    ],
)
def test_tag_count_reward(completion, solution, expected):
    assert tag_count_reward([completion], [solution]) == [pytest.approx(expected)]


# --- completion shapes and batches --------------------------------------------------------------------------
ALL = [accuracy_reward, consistency_reward, accuracy_strict, consistency_strict, tag_count_reward]


@pytest.mark.parametrize("reward", ALL)
def test_conversational_completions_equal_strings(reward):
    texts = [full("top left", "scratch"), "<think>x</think><answer>No</answer>", "junk", ""]
    sols = [YES_TL, NO, YES_TL, NO]
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    assert reward(conversational, sols) == reward(texts, sols)
    # Keyword call as TRL makes it, extra columns included.
    assert reward(prompts=["p"] * 4, completions=conversational, completion_ids=[[1]] * 4, solution=sols,
                  image=["x"] * 4, trainer_state=None) == reward(texts, sols)  # fmt: skip


@pytest.mark.parametrize("reward", ALL)
def test_odd_completions_score_zero_without_raising(reward):
    odd = [None, 3, [], [{}], [{"role": "assistant", "content": None}], {"content": None}, [None]]
    odd.append(b"<answer>")
    assert reward(odd, [NO] * len(odd)) == [0.0 if reward is not tag_count_reward else 2 / 6] * len(odd)


@pytest.mark.parametrize("reward", ALL)
def test_short_solution_column_pads_with_zero(reward):
    out = reward(["<think>x</think><answer>No</answer>"] * 3, [NO])
    assert len(out) == 3 and out[1:] == [0.0, 0.0]


def test_content_parts_are_read():
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "<think>x</think>"}, {"type": "text",
             "text": "<answer>No</answer>"}]}]  # fmt: skip
    assert consistency_reward([parts], [NO]) == [1.0]


# --- solutions ----------------------------------------------------------------------------------------------
def test_parse_solution():
    gt = parse_solution("<location>top left</location><type>scratch</type><answer> Yes </answer>")
    assert (gt.label, gt.location, gt.type, gt.defect) == ("yes", "top left", "scratch", True)
    assert parse_solution("<answer>NO</answer>").label == "no"
    # absent tag → None, present but empty → "" (the published accuracy pays a part only when both have it)
    assert (parse_solution("<answer>Yes</answer>").type, parse_solution("<answer>Yes</answer>").location) == (
        None,
        None,
    )
    assert parse_solution("<location></location><type></type><answer>Yes</answer>").location == ""
    assert parse_solution("<type>\nhole</type><answer>Yes</answer>").type is None  # split over lines
    for bad in ["", "no", "<answer>maybe</answer>", "<answer>\nYes</answer>", None, 1]:
        assert parse_solution(bad) is None


@pytest.mark.parametrize(
    "solution, message",
    [
        ("Yes", r"solution 'Yes': no <answer>…</answer> tag"),
        ("<Answer>No</Answer>", r"no <answer>…</answer> tag \(tags are case-sensitive\)"),
        ("<answer>\nNo\n</answer>", r"must open and close on one line"),
        ("<answer>Yes.</answer>", r"must contain Yes or No, got 'Yes.'"),
        ("<answer></answer>", r"must contain Yes or No, got ''"),
        (None, r"expected a string, got NoneType"),
    ],
)
def test_validate_solution_rejects(solution, message):
    with pytest.raises(ValueError, match=message):
        validate_solution(solution)


def test_validate_solution_accepts_what_rewards_read():
    for sol in [NO, YES_TL, "<answer>yes</answer>", " <answer> No </answer>\n"]:
        validate_solution(sol)
        assert accuracy_reward([sol], [sol])[0] > 0


def test_long_solution_is_not_cached_but_read():
    sol = "<answer>No</answer>" + "x" * 10_000
    assert parse_solution(sol).label == "no"


# --- docstring examples -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [
        iadr1.rewards.accuracy,
        iadr1.rewards.consistency,
        iadr1.rewards.defect_types,
        iadr1.rewards.location,
        iadr1.rewards.registry,
        iadr1.rewards.solution,
        iadr1.rewards.tags,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0
