import time

import pytest

from iadr1.answers import first_tag, follows_grammar, parse, read_yes_no

YES = "<think>A thin dark line.</think><location>top left</location><type>scratch</type><answer>Yes</answer>"
NO = "<think>Uniform texture.</think><answer>No</answer>"


@pytest.mark.parametrize(
    "text, answer, well_formed",
    [
        (YES, "yes", True),
        (NO, "no", True),
        ("<think>x</think>\n<answer> no. </answer>\n", "no", True),
        (
            "<think>multi\nline</think> <location>a\nb</location> <type>t</type> <answer>YES.</answer>",
            "yes",
            True,
        ),
        ("<think>x</think><answer>No</answer><type>stain</type>", "no", False),  # type tag with a "no" answer
        ("<think>x</think><answer>Yes</answer>", "yes", False),  # yes without location/type
        ("<answer>No</answer>", "no", False),  # no reasoning
        ("<think>x</think><answer></answer>", None, False),  # empty answer is unanswered, not A
        ("<think>x</think><answer>maybe</answer>", None, False),
        ("<answer>B</answer>", "no", False),  # Anomaly-R1 letter style
        ("<answer>A. Yes</answer>", "yes", False),
        ("Yes, there is a scratch.", "yes", False),
        ("No.", "no", False),
        ("There is an anomaly on the surface.", None, False),  # "no" inside "anomaly" is not an answer
        ("The part shows no defect.", "no", False),
        ("", None, False),
    ],
)
def test_parse(text, answer, well_formed):
    a = parse(text)
    assert a.answer == answer
    assert a.well_formed is well_formed
    assert a.letter == {"yes": "A", "no": "B", None: "E"}[answer]


def test_fields_and_first_answer_wins():
    a = parse(YES + "<answer>No</answer>")
    assert (a.answer, a.location, a.type, a.reasoning) == ("yes", "top left", "scratch", "A thin dark line.")
    assert parse(None).answer is None


def test_read_yes_no_both_words_is_none():
    assert read_yes_no("yes or no?") == "yes"  # leading word wins
    assert read_yes_no("I cannot say yes or no") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "yes"),
        ("(B)", "no"),
        ("B.", "no"),
        ("A: Yes", "yes"),
        ("B) No", "no"),
        ("**A**", "yes"),
        ("A careful look shows no defect.", "no"),  # the article "A" is not option A
        ("a scratch is visible", None),
        ("Yesterday's part", None),  # "yes" only as a whole word
        ("Nothing abnormal", None),
        ("NO.", "no"),
        ("  yes  ", "yes"),
        ("The anomaly is clear", None),  # "no" inside "anomaly"
        ("not sure", None),
    ],
)
def test_read_yes_no_table(text, expected):
    assert read_yes_no(text) == expected


def test_letters_can_be_switched_off():
    assert read_yes_no("B", letters=False) is None


@pytest.mark.parametrize(
    "text, defect, expected",
    [
        (YES, True, True),
        (NO, False, True),
        (YES, False, False),
        (NO, True, False),
        ("  <THINK>a\nb</THINK>\n<Answer>No</Answer>\n", False, True),
        ("<think>x</think><answer>No</answer> trailing", False, False),
        ("lead <think>x</think><answer>No</answer>", False, False),
        ("<think>x</think><answer>No</answer><answer>No</answer>", False, False),
        ("<think><think>x</think></think><answer>No</answer>", False, False),
        ("<think>x<answer>No</answer>", False, False),
        ("<think>x</think><answer>No", False, False),
        ("<think>x</think><answer>No</answer></type>", False, False),
        ("<think>x</think><type>t</type><location>l</location><answer>Yes</answer>", True, False),
        ("", False, False),
    ],
)
def test_follows_grammar(text, defect, expected):
    assert follows_grammar(text, defect=defect) is expected


def test_well_formed_rejects_repeated_tags_hidden_in_contents():
    # A lazy DOTALL fullmatch would accept this by letting the second <answer> sit inside the first one.
    assert not parse("<think>a</think><answer>No</answer><think>b</think><answer>No</answer>").well_formed


def test_first_tag():
    assert first_tag("answer", "<ANSWER>\n Yes.\n</answer>") == "Yes."
    assert first_tag("answer", "<answer>no close") is None
    assert first_tag("type", "</type><type>a</type>") == "a"


def test_linear_time_on_huge_replies():
    start = time.perf_counter()
    for text in ["<answer>" * 125_000, "<think>" * 140_000 + "</think>", "<" * 1_000_000, "no " * 300_000]:
        parse(text)
    assert time.perf_counter() - start < 5  # a backtracking regex takes minutes on the first one
