import pytest

from iadr1.answers import parse, read_yes_no

YES = "<think>A thin dark line.</think><location>top left</location><type>scratch</type><answer>Yes</answer>"
NO = "<think>Uniform texture.</think><answer>No</answer>"


@pytest.mark.parametrize(
    "text, answer, well_formed",
    [
        (YES, "yes", True),
        (NO, "no", True),
        ("<think>x</think>\n<answer> no. </answer>\n", "no", True),
        ("<think>multi\nline</think> <location>a\nb</location> <type>t</type> <answer>YES.</answer>", "yes", True),
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
