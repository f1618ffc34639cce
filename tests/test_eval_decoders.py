"""iadr1.eval.decoders: each typed msgspec decoder accepts exactly what its pydantic twin accepts (on the fields eval
reads), so the fast path and the schemas cannot drift apart."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from iadr1.data.schemas import Prediction, TestEntry
from iadr1.eval import decoders

_ORIGINAL_FIELDS = ("gpt_answer", "correct_answer", "question_type")
_MISSING = object()  # the field is left out of the record

# Values of every JSON kind, valid for some fields and not for others.
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.0, 0.25, 1.0, 1.5, -0.5]),
    st.sampled_from(["A", "B", "E", "C", "a", "yes", "", "0.5", "<think>x</think><answer>No</answer>"]),
    st.just(["A"]),
    st.just({"k": "v"}),
)
_field = st.one_of(st.just(_MISSING), _value)


def _record(draw_fields: dict[str, object]) -> dict:
    return {k: v for k, v in draw_fields.items() if v is not _MISSING}


def _accepts_msgspec(kind: type, record: object) -> bool:
    try:
        msgspec.json.decode(json.dumps(record), type=kind)
    except msgspec.ValidationError:
        return False
    finally:
        decoders._DECODED.clear()  # `Entry` notes every record it decodes
    return True


def _accepts_pydantic(model: type, record: object) -> bool:
    try:
        model.model_validate(record)
    except ValidationError:
        return False
    return True


def _varied(valid: dict[str, st.SearchStrategy], odd: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A valid record with up to two fields changed to a near miss, anything, or nothing (left out)."""
    changes = st.lists(st.sampled_from(sorted(odd)), max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: odd[n] for n in names})
    )
    return st.builds(lambda base, ch: _record({**base, **ch}), st.fixed_dictionaries(valid), changes)


def _near(*values: object) -> st.SearchStrategy:
    """The near misses of a field, or anything at all (or nothing)."""
    return st.one_of(st.sampled_from(values), _field)


# --- PlainPrediction <-> Prediction ---------------------------------------------------------------------------------
_prediction = _varied(
    {
        "image": st.just("D/c/test/good/0.png"),
        "letter": st.sampled_from(["A", "B", "E"]),
        "raw": st.one_of(st.none(), st.just("<think>x</think><answer>No</answer>")),
        "p_yes": st.one_of(st.none(), st.floats(0, 1), st.integers(0, 1)),
        "error": st.one_of(st.none(), st.just("unreadable image")),
    },
    {
        "image": _near(3, None),
        "letter": _near("C", "a", None),
        "raw": _near(3, ["x"]),
        "p_yes": _near("0.5", True, False, 1.5, -1, [0.5]),
        "error": _near(3, {"kind": "io"}),
        **{k: _near(None, "A", "Anomaly Detection") for k in _ORIGINAL_FIELDS},
    },
)


@settings(max_examples=600, deadline=None)
@given(_prediction)
def test_plain_prediction_accepts_what_prediction_accepts(record):
    # No letter (an MMAD line of another question type, which the schema allows) is not plain: the general path.
    plain = record.get("letter") is not None and all(record.get(k) is None for k in _ORIGINAL_FIELDS)
    assert _accepts_msgspec(decoders.PlainPrediction, record) == (plain and _accepts_pydantic(Prediction, record))


def test_plain_prediction_cases():
    ok = {"image": "D/c/test/good/0.png", "letter": "A", "raw": "r", "p_yes": 1, "error": None}
    assert _accepts_msgspec(decoders.PlainPrediction, ok) and _accepts_pydantic(Prediction, ok)
    for change in ({"p_yes": "0.5"}, {"p_yes": True}, {"letter": "C"}, {"raw": 3}, {"image": 3}, {"error": 3}):
        bad = {**ok, **change}
        assert not _accepts_msgspec(decoders.PlainPrediction, bad) and not _accepts_pydantic(Prediction, bad)


# --- Entry <-> TestEntry --------------------------------------------------------------------------------------------
# Only the fields eval reads vary (`Answer`, `location`, `type`): eval does not check `Question`, `Options`, the
# templates, nor that `image_path` equals the key, and says so (docs/eval.md, "Inputs").
_question = _varied({"Answer": st.sampled_from(["A", "B"])}, {"Answer": _near("C", "E", "a", None, ["A"])})
_entry = _varied(
    {"image_path": st.just("D/c/test/good/0.png"), "conversation": st.lists(_question, max_size=3)},
    {
        "conversation": _near(None, "A", {"Answer": "A"}, [3], [None]),
        "location": _near(None, "top left", ""),
        "type": _near(None, "Scratch"),
    },
)


@settings(max_examples=600, deadline=None)
@given(_entry)
def test_entry_accepts_what_test_entry_accepts(record):
    no_truth = record.get("location") is None and record.get("type") is None
    valid = _accepts_pydantic(TestEntry, record)
    # MMAD's later questions may be answered C to E (the schema allows it): not the usual file, the general path.
    yes_no = valid and all(q["Answer"] in ("A", "B") for q in record["conversation"])
    assert _accepts_msgspec(decoders.Entry, record) == (no_truth and yes_no)


@pytest.mark.parametrize(
    ("record", "accepted"),
    [
        ({"image_path": "x", "conversation": [{"Answer": "A"}, {"Answer": "B"}]}, True),
        ({"image_path": "x", "conversation": []}, True),  # no question: refused later, by both paths
        ({"image_path": "x", "conversation": [{"Answer": "C"}]}, False),
        ({"image_path": "x", "conversation": [{"Question": "q"}]}, False),
        ({"image_path": "x", "conversation": "A"}, False),
    ],
)
def test_entry_cases(record, accepted):
    assert _accepts_msgspec(decoders.Entry, record) == _accepts_pydantic(TestEntry, record) == accepted
