"""iadr1.eval: reading both prediction formats, matching, bad input, per-dataset/class numbers by hand."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import missing
from hypothesis import given, settings
from hypothesis import strategies as st

from iadr1.data.schemas import TestEntry
from iadr1.errors import DataError
from iadr1.eval import decoders, load
from iadr1.eval.load import dataset_and_class, load_ground_truth, positions
from iadr1.eval.pipeline import evaluate, per_specie

YES = "<think>a dark line</think><location>top left</location><type>scratch</type><answer>Yes</answer>"
NO = "<think>uniform surface</think><answer>No</answer>"


def entry(path: str, anomalous: bool, **extra) -> dict:
    return {
        "image_path": path,
        "conversation": [
            {
                "Question": "Are there any defects in the query image?",
                "Answer": "A" if anomalous else "B",
                "Options": {"A": "Yes.", "B": "No."},
                "type": "Anomaly Detection",
            }
        ],
        "similar_templates": [],
        "random_templates": [],
        **extra,
    }


def write_test_file(path: Path, labels: dict[str, bool], **extra_by_image) -> Path:
    path.write_text(json.dumps({k: entry(k, a, **extra_by_image.get(k, {})) for k, a in labels.items()}))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ours(image: str, letter: str, raw: str | None = None, **kw) -> dict:
    answer = {"A": "yes", "B": "no"}.get(letter)
    raw = raw if raw is not None else {"A": YES, "B": NO}.get(letter, "<think>unsure</think>")
    return {
        "image": image,
        "prompt_style": "iadr1",
        "shots": 0,
        "raw": raw,
        "answer": answer,
        "letter": letter,
        **kw,
    }


def original(image: str, letter: str, correct: str) -> dict:
    return {
        "image": image,
        "question": {
            "type": "Anomaly Detection",
            "text": "Are there any defects in the query image?",
            "options": {"A": "Yes.", "B": "No."},
        },
        "question_type": "Anomaly Detection",
        "correct_answer": correct,
        "gpt_answer": letter,
    }


# DS: class c1 (anomalous: yes, yes, no, E; normal: no, no, no, yes, E(no prediction), no) and class c2 (all right)
LABELS = {
    "DS/c1/test/bad/0.png": True,
    "DS/c1/test/bad/1.png": True,
    "DS/c1/test/bad/2.png": True,
    "DS/c1/test/bad/3.png": True,
    "DS/c1/test/good/0.png": False,
    "DS/c1/test/good/1.png": False,
    "DS/c1/test/good/2.png": False,
    "DS/c1/test/good/3.png": False,
    "DS/c1/test/good/4.png": False,
    "DS/c1/test/good/5.png": False,
    "DS/c2/test/bad/0.png": True,
    "DS/c2/test/good/0.png": False,
}
ANSWERS = {  # image -> letter; good/4 has no prediction at all
    "DS/c1/test/bad/0.png": "A",
    "DS/c1/test/bad/1.png": "A",
    "DS/c1/test/bad/2.png": "B",
    "DS/c1/test/bad/3.png": "E",
    "DS/c1/test/good/0.png": "B",
    "DS/c1/test/good/1.png": "B",
    "DS/c1/test/good/2.png": "B",
    "DS/c1/test/good/3.png": "A",
    "DS/c1/test/good/5.png": "B",
    "DS/c2/test/bad/0.png": "A",
    "DS/c2/test/good/0.png": "B",
}


@pytest.fixture
def bench(tmp_path: Path) -> dict[str, Path]:
    test = write_test_file(tmp_path / "test_DS_format.json", LABELS)
    p_yes = {k: (0.9 if v == "A" else 0.2) for k, v in ANSWERS.items()}
    p_yes["DS/c1/test/bad/2.png"] = 0.3
    rows = [ours(k, v, p_yes=p_yes[k]) for k, v in ANSWERS.items()]
    random.Random(0).shuffle(rows)  # order must not matter
    pred = write_jsonl(tmp_path / "pred.jsonl", rows)
    orig = tmp_path / "answers_0_shot_model.json"
    orig.write_text(json.dumps([original(k, v, "A" if LABELS[k] else "B") for k, v in ANSWERS.items()]))
    return {"test": test, "pred": pred, "orig": orig, "dir": tmp_path}


def test_hand_computed_per_dataset_and_class(bench):
    r = evaluate([bench["test"]], [bench["pred"]], n_boot=200)
    ds = r.datasets["DS"]
    # DS: anomalous 5 (yes 3, no 1, E 1); normal 7 (no 5, yes 1, E 1: the image without prediction)
    assert ds["confusion"] == {
        "anomalous": {"yes": 3, "no": 1, "unanswered": 1},
        "normal": {"yes": 1, "no": 5, "unanswered": 1},
    }
    assert ds["balanced_accuracy"] == (5 / 7 + 3 / 5) / 2 * 100
    assert ds["overkill"] == pytest.approx((1 - 5 / 7) * 100)
    assert ds["miss"] == pytest.approx(40.0)
    assert ds["accuracy"] == pytest.approx(8 / 12 * 100)
    assert ds["precision"] == pytest.approx(75.0)
    assert ds["recall"] == pytest.approx(60.0)
    assert ds["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2) * 100)
    assert ds["unanswered_rate"] == pytest.approx(2 / 12 * 100)
    # 11 replies: the unanswered one ("<think>unsure</think>") and the yes on a normal image... is canonical
    # (YES is well formed whatever the truth): only the unanswered reply is inconsistent.
    assert ds["consistency_rate"] == pytest.approx(10 / 11 * 100)
    # p_yes: positives .9 .9 .3 .2 .9; negatives .2 .2 .2 .9 .2 .2 (good/4 has none); 5 x 6 pairs, ties 1/2:
    # each .9 beats five .2 and ties one .9; .3 beats five; .2 ties five.
    assert ds["auroc"] == pytest.approx((3 * 5.5 + 5 + 2.5) / 30 * 100)
    lo, hi = ds["ci95"]["balanced_accuracy"]
    assert lo <= ds["balanced_accuracy"] <= hi
    c1, c2 = ds["classes"]["c1"], ds["classes"]["c2"]
    assert c1["balanced_accuracy"] == (4 / 6 + 2 / 4) / 2 * 100
    assert c2["balanced_accuracy"] == 100.0 and c2["n"] == 2
    assert r.average["balanced_accuracy"] == ds["balanced_accuracy"]
    assert r.run["missing"] == {"count": 1, "first": ["DS/c1/test/good/4.png"]}
    assert any("without a prediction" in n for n in r.notes)


def test_original_answers_json_gives_identical_metrics(bench):
    a = evaluate([bench["test"]], [bench["pred"]], n_boot=100, seed=3)
    b = evaluate([bench["test"]], [bench["orig"]], n_boot=100, seed=3)
    keys = [
        "balanced_accuracy",
        "overkill",
        "miss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "unanswered_rate",
        "confusion",
        "ci95",
    ]
    for ds in a.datasets:
        for k in keys:
            assert a.datasets[ds][k] == b.datasets[ds][k], k
        for cls in a.datasets[ds]["classes"]:
            assert (
                a.datasets[ds]["classes"][cls]["balanced_accuracy"]
                == b.datasets[ds]["classes"][cls]["balanced_accuracy"]
            )
    assert b.datasets["DS"]["consistency_rate"] is None  # letters only: no reply text to judge


def test_shards_and_order_do_not_matter(bench, tmp_path):
    rows = [json.loads(x) for x in bench["pred"].read_text().splitlines()]
    s1 = write_jsonl(tmp_path / "s1.jsonl", rows[:4])
    s2 = write_jsonl(tmp_path / "s2.jsonl", rows[4:])
    a = evaluate([bench["test"]], [bench["pred"]], n_boot=0)
    b = evaluate([bench["test"]], [s2, s1], n_boot=0)
    assert a.datasets == b.datasets


def test_duplicate_across_shards_names_the_image(bench, tmp_path):
    s1 = write_jsonl(tmp_path / "s1.jsonl", [ours("DS/c1/test/good/0.png", "B")])
    s2 = write_jsonl(tmp_path / "s2.jsonl", [ours("DS/c2/test/good/0.png", "B"), ours("DS/c1/test/good/0.png", "A")])
    with pytest.raises(
        DataError,
        match=r"two predictions for image 'DS/c1/test/good/0.png'.*s1.jsonl record 1.*"
        r"s2.jsonl record 2",
    ):
        evaluate([bench["test"]], [s1, s2], n_boot=0)


def test_unknown_images_are_reported_and_ignored(bench, tmp_path):
    rows = [json.loads(x) for x in bench["pred"].read_text().splitlines()]
    p = write_jsonl(tmp_path / "p.jsonl", [*rows, ours("OTHER/x.png", "A"), ours("DS/c9/test/good/9.png", "A")])
    a = evaluate([bench["test"]], [bench["pred"]], n_boot=0)
    b = evaluate([bench["test"]], [p], n_boot=0)
    assert a.datasets == b.datasets
    assert b.run["unknown"]["count"] == 2 and "OTHER/x.png" in b.run["unknown"]["first"]


def test_error_lines_are_unanswered(bench, tmp_path):
    rows = [ours(k, v) for k, v in ANSWERS.items() if k != "DS/c2/test/good/0.png"]
    rows.append({"image": "DS/c2/test/good/0.png", "letter": "E", "raw": None, "error": "corrupt image (truncated)"})
    r = evaluate([bench["test"]], [write_jsonl(tmp_path / "p.jsonl", rows)], n_boot=0)
    assert r.datasets["DS"]["classes"]["c2"]["confusion"]["normal"] == {"yes": 0, "no": 0, "unanswered": 1}
    assert r.run["errors"] == 1


def test_letter_from_answer_or_raw_when_absent(bench, tmp_path):
    rows = []
    for k, v in ANSWERS.items():
        row = ours(k, v)
        del row["letter"]
        if k.endswith("0.png"):
            del row["answer"]  # then the raw reply decides
        rows.append(row)
    a = evaluate([bench["test"]], [bench["pred"]], n_boot=0)
    b = evaluate([bench["test"]], [write_jsonl(tmp_path / "p.jsonl", rows)], n_boot=0)
    assert a.datasets["DS"]["confusion"] == b.datasets["DS"]["confusion"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"image": "DS/c2/test/good/0.png", "letter": "C"},
            r"p.jsonl: record 'record 2': field 'letter'.*'C'",
        ),
        ({"image": "DS/c2/test/good/0.png", "answer": "maybe"}, r"field 'answer'.*'maybe'"),
        ({"image": "DS/c2/test/good/0.png", "letter": "A", "p_yes": 1.5}, r"record 2: field 'p_yes': 1.5"),
        ({"letter": "A"}, r"p.jsonl: record 'line 2': field 'image'"),
        # A reply that is not text, a p_yes that is NaN (Python's json writes and reads it): refused, not dropped.
        ({"image": "DS/c2/test/good/0.png", "letter": "A", "raw": 3}, r"record 'record 2': field 'raw': .*3"),
        ({"image": "DS/c2/test/good/0.png", "raw": ["x"]}, r"record 'record 2': field 'raw'"),
        ({"image": "DS/c2/test/good/0.png", "letter": "A", "p_yes": float("nan")}, r"'line 2': field 'p_yes'.*nan"),
    ],
)
def test_bad_prediction_records_are_named(bench, tmp_path, row, message):
    p = write_jsonl(tmp_path / "p.jsonl", [ours("DS/c1/test/good/0.png", "B"), row])
    with pytest.raises(DataError, match=message):
        evaluate([bench["test"]], [p], n_boot=0)


def test_bad_original_records_are_named(bench, tmp_path):
    p = tmp_path / "answers.json"
    p.write_text(json.dumps([original("DS/c1/test/good/0.png", "B", "B"), original("DS/c2/test/good/0.png", "C", "B")]))
    with pytest.raises(DataError, match=r"answers.json: record '1': field 'gpt_answer': unknown label 'C'"):
        evaluate([bench["test"]], [p], n_boot=0)
    p.write_text(json.dumps([original("DS/c1/test/good/0.png", "B", "Z")]))
    with pytest.raises(DataError, match=r"record '0': field 'correct_answer': unknown label 'Z'"):
        evaluate([bench["test"]], [p], n_boot=0)


def test_unknown_label_in_test_file_names_the_record(tmp_path):
    t = tmp_path / "test_X_format.json"
    data = {"X/a/test/good/0.png": entry("X/a/test/good/0.png", False)}
    data["X/a/test/good/0.png"]["conversation"][0]["Answer"] = "C"
    t.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"record 'X/a/test/good/0.png': .*conversation.0.Answer.* A or B, got 'C'"):
        load_ground_truth([t])


def test_duplicate_image_key_in_a_test_file_is_an_error(tmp_path):
    # JSON keeps the last of two values for one key: one record would vanish without a word.
    t = tmp_path / "test_X_format.json"
    rec = json.dumps(entry("X/a/test/good/0.png", False))
    t.write_text(
        '{"X/a/test/good/0.png": ' + rec + ', "X/a/test/bad/0.png": ' + json.dumps(entry("X/a/test/bad/0.png", True))
        + ', "X/a/test/good/0.png": ' + rec + "}"
    )  # fmt: skip
    for general_only in (False, True):
        forced = mock.patch.object(decoders, "Entry", decoders.AnyEntry) if general_only else contextlib.nullcontext()
        with forced, pytest.raises(DataError) as e:
            load_ground_truth([t])
        assert str(e.value) == f"{t}: key 'X/a/test/good/0.png' appears twice (JSON keeps the last value only)"


def test_duplicate_keys_in_eval_annotations_are_errors(tmp_path):
    t = write_test_file(tmp_path / "t.json", {"S/a/test/bad/0.png": True})
    ann = tmp_path / "annotations.jsonl"
    ann.write_text(
        '{"image": "S/a/test/bad/0.png", "location": "top", "type": "Hole"}\n'
        '{"image": "S/a/test/bad/0.png", "location": "center", "type": "Hole"}\n'
    )
    with pytest.raises(DataError, match=r"annotations.jsonl: record 'line 2': a second annotation for image"):
        load_ground_truth([t], annotations=[ann])
    ann.write_text('{"image": "S/a/test/bad/0.png", "location": "top", "location": "center"}\n')
    with pytest.raises(DataError, match=r"annotations.jsonl: line 1: key 'location' appears twice"):
        load_ground_truth([t], annotations=[ann])


def test_image_in_two_test_files_is_an_error(tmp_path):
    a = write_test_file(tmp_path / "a.json", {"X/a/test/good/0.png": False})
    b = write_test_file(tmp_path / "b.json", {"X/a/test/good/0.png": False})
    with pytest.raises(DataError, match=r"image 'X/a/test/good/0.png' is in two test files"):
        load_ground_truth([a, b])


def test_torn_last_line_is_skipped(bench, tmp_path):
    text = bench["pred"].read_text()
    p = tmp_path / "p.jsonl"
    p.write_text(text + '{"image": "DS/c1/test/good/4.png", "let')  # a writer killed mid-line
    assert (
        evaluate([bench["test"]], [p], n_boot=0).datasets
        == evaluate([bench["test"]], [bench["pred"]], n_boot=0).datasets
    )


def test_compat_labels_by_path(tmp_path):
    # The test file calls a 'good' image anomalous: the default trusts the file, --compat the path.
    t = write_test_file(tmp_path / "t.json", {"X/a/test/good/0.png": True, "X/a/test/bad/0.png": True})
    p = write_jsonl(tmp_path / "p.jsonl", [ours("X/a/test/good/0.png", "B"), ours("X/a/test/bad/0.png", "A")])
    assert evaluate([t], [p], n_boot=0).datasets["X"]["balanced_accuracy"] == 50.0
    assert evaluate([t], [p], n_boot=0, compat=True).datasets["X"]["balanced_accuracy"] == 100.0


def test_type_and_location_accuracy_from_annotations(tmp_path):
    labels = {f"S/a/test/bad/{i}.png": True for i in range(4)} | {"S/a/test/good/0.png": False}
    t = write_test_file(tmp_path / "t.json", labels, **{"S/a/test/bad/3.png": {"location": "center", "type": "hole"}})
    ann = write_jsonl(
        tmp_path / "annotations.jsonl",
        [
            {"image": "S/a/test/bad/0.png", "reasoning": "r", "location": "top left", "type": "Scratch"},
            {"image": "S/a/test/bad/1.png", "location": "bottom right", "type": "Stain"},
            {"image": "S/a/test/bad/2.png", "location": "top left", "type": "Hole"},
        ],
    )
    reply = "<think>t</think><location>{}</location><type>{}</type><answer>Yes</answer>"
    p = write_jsonl(
        tmp_path / "p.jsonl",
        [
            ours("S/a/test/bad/0.png", "A", reply.format("upper left corner", "linear scratch")),  # both right
            ours("S/a/test/bad/1.png", "A", reply.format("top left", "dirt")),  # wrong cell, same category
            ours("S/a/test/bad/2.png", "B"),  # missed: not judged
            ours("S/a/test/bad/3.png", "A", reply.format("middle", "scratch")),  # test file's truth: right cell only
            ours("S/a/test/good/0.png", "B"),
        ],
    )
    d = evaluate([t], [p], annotations=[ann], n_boot=0).datasets["S"]
    assert (d["n_location_judged"], d["n_type_judged"]) == (3, 3)
    assert d["location_accuracy"] == pytest.approx(200 / 3)  # bad/0 and bad/3 ("middle" is the center cell)
    assert d["type_accuracy"] == pytest.approx(200 / 3)  # bad/0 and bad/1


def test_positions_equal_a_dict_lookup():
    keys = [f"D/c{i % 7}/test/good/{i}.png" for i in range(2000)]
    items = random.Random(1).sample(keys, 1500) + ["nope.png", "D/c0/test/good/99999.png"]
    pos = positions(keys, items)
    index = {k: i for i, k in enumerate(keys)}
    assert pos.tolist() == [index.get(x, -1) for x in items]
    assert positions(keys, keys).tolist() == list(range(2000))
    assert positions(keys, []).size == 0


GROUPING_PATHS = [
    "DAGM/Class1/good/x.PNG",
    "SDD/test/good/kos01_Part1_2.png",
    "MPDD/tubes/test/good/0.png",
    "DTD/Woven_001/test/bad/1.png",
    "VisA/candle/test/bad/1.png",
]


def test_grouping_follows_the_schema(tmp_path):
    for path in GROUPING_PATHS:
        e = TestEntry.model_validate(entry(path, False))
        assert dataset_and_class(path) == (e.dataset, e.cls_name)
    gt = load_ground_truth([write_test_file(tmp_path / "t.json", dict.fromkeys(GROUPING_PATHS, False))])
    got = [(gt.datasets[d], gt.classes[c]) for d, c in zip(gt.dataset_idx, gt.class_idx, strict=True)]
    assert got == [(dataset_and_class(p)[0], dataset_and_class(p)) for p in GROUPING_PATHS]
    assert np.array_equal(gt.anomalous, np.zeros(len(GROUPING_PATHS), bool))


# --- the fast path for plain prediction files -----------------------------------------------------------------------
# `load_predictions` first decodes a file as `_PlainPrediction` (strict types, no per-record decision); any other
# file goes through the general path. Both must give the same result on every input, errors included.
_plain_record = st.fixed_dictionaries(
    {"image": st.sampled_from(list(LABELS)), "letter": st.sampled_from(["A", "B", "E"])},
    optional={
        "raw": st.one_of(st.none(), st.sampled_from([YES, NO, "Yes.", "<think>x</think>", ""])),
        "p_yes": st.one_of(st.none(), st.floats(0, 1), st.integers(0, 1)),
        "error": st.one_of(st.none(), st.just("unreadable image")),
        "answer": st.sampled_from(["yes", "no", "maybe", None]),  # not read when the letter is there
        "latency_s": st.just(0.1),
    },
)
_any_record = st.fixed_dictionaries(  # anything, valid or not
    {"image": st.one_of(st.sampled_from([*LABELS, "OTHER/x.png"]), st.integers(0, 3))},
    optional={
        "letter": st.sampled_from(["A", "B", "E", "C", None]),
        "answer": st.sampled_from(["yes", "no", "maybe", None]),
        "raw": st.one_of(st.none(), st.sampled_from([YES, NO, "No, clean.", ""]), st.integers(0, 3)),
        "p_yes": st.one_of(
            st.none(), st.floats(-1, 2), st.integers(-1, 2), st.just("0.5"), st.booleans(), st.just(float("nan"))
        ),
        "error": st.one_of(st.none(), st.just("unreadable image"), st.just(3)),
        "question_type": st.sampled_from(["Anomaly Detection", "Defect Classification", None]),
        "gpt_answer": st.sampled_from(["A", "B", "E", "X", YES, None]),
        "correct_answer": st.sampled_from(["A", "B", "Z", None]),
    },
)
_odd_field = st.one_of(  # one field that a plain record may not have, or not with this value
    *(st.tuples(st.just(k), st.just(v)) for k, v in [("question_type", "Anomaly Detection"), ("gpt_answer", "A")]),
    st.tuples(st.just("question_type"), st.sampled_from(["Defect Classification", "Anomaly Detection"])),
    st.tuples(st.just("correct_answer"), st.sampled_from(["A", "B", "Z"])),
    st.tuples(st.just("gpt_answer"), st.sampled_from(["A", "B", "E", "X", YES])),
    st.tuples(st.just("letter"), st.sampled_from(["C", None, "a"])),
    st.tuples(st.just("p_yes"), st.sampled_from(["0.5", True, 1.5, -1, 2, float("nan")])),
    st.tuples(st.just("raw"), st.sampled_from([3, ["x"]])),
    st.tuples(st.just("error"), st.sampled_from([3, {"kind": "io"}])),
    st.tuples(st.just("image"), st.sampled_from([None, 3, "OTHER/x.png"])),
)
_odd_record = st.builds(lambda r, kv: {**r, kv[0]: kv[1]}, _plain_record, _odd_field)
_file = st.tuples(
    st.lists(_plain_record, max_size=6),
    st.lists(st.one_of(_odd_record, _any_record), max_size=1),
    st.integers(0, 6),
    st.sampled_from([".jsonl", ".json"]),
)


def _write_predictions(folder: Path, i: int, plain: list, other: list, at: int, suffix: str) -> Path:
    rows = plain[:at] + other + plain[at:]
    path = folder / f"p{i}{suffix}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if suffix == ".jsonl" else json.dumps(rows))
    return path


def _load(files: list[Path], general_only: bool) -> object:
    forced = mock.patch.object(load, "_decode_plain", return_value=None) if general_only else contextlib.nullcontext()
    with forced:
        try:
            p = load.load_predictions(files)
        except DataError as e:
            return str(e)
    return [
        p.images,
        p.letters,
        p.raws,
        p.p_yes.tobytes(),
        p.file_idx.tolist(),
        p.n_error,
        p.n_skipped,
        p.correct_answers,
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(_file, min_size=1, max_size=3))
def test_fast_path_equals_the_general_path(files):
    with tempfile.TemporaryDirectory() as tmp:
        paths = [_write_predictions(Path(tmp), i, *f) for i, f in enumerate(files)]
        assert _load(paths, general_only=False) == _load(paths, general_only=True)


def test_fast_path_takes_plain_files_only(tmp_path):
    def plain(rows: list[dict]) -> bool:
        return load._decode_plain(write_jsonl(tmp_path / "p.jsonl", rows)) is not None

    assert plain([ours(k, v, p_yes=0.5) for k, v in ANSWERS.items()])
    assert plain([ours("DS/c1/test/bad/0.png", "E", raw=None, error="unreadable image", p_yes=1)])
    assert not plain([ours("DS/c1/test/bad/0.png", "C")])  # unknown label: the general path names it
    assert not plain([{"image": "DS/c1/test/bad/0.png", "answer": "yes"}])  # no letter
    assert not plain([ours("DS/c1/test/bad/0.png", "A", p_yes="0.5")])
    assert not plain([ours("DS/c1/test/bad/0.png", "A", question_type="Anomaly Detection")])
    assert not plain([original("DS/c1/test/bad/0.png", "A", "A")])


def _second_question(answer: object) -> dict:
    return {"Question": "Which defect?", "Answer": answer, "Options": {"A": "x", "C": "y"}, "type": "Defect Type"}


_G2 = "DS/c1/test/good/2.png"
_B0 = "DS/c1/test/bad/0.png"


@pytest.mark.parametrize(
    ("change", "expected"),  # expected: the ground-truth defects read, or the error
    [
        (None, {}),  # every answer A or B, no location or type: the fast decoder
        (lambda d: d[_G2]["conversation"].append(_second_question("C")), {}),  # later answers are not read
        (lambda d: d[_G2]["conversation"].append(_second_question({"text": "C"})), {}),
        (lambda d: d[_B0].update(location=" top left ", type=""), {0: ("top left", None)}),  # from the test file
        (lambda d: d[_G2].update(location="center"), {}),  # kept for anomalous images only
        # An MMAD question may be answered C, D or E; the anomaly-detection question only A or B.
        (lambda d: d[_G2]["conversation"][0].update(Answer="C"), r"answer is A or B, got 'C'"),
        (lambda d: d[_G2]["conversation"][0].update(Answer=["A"]), r"'A', 'B', 'C', 'D' or 'E' \(got \['A'\]\)"),
        (lambda d: d[_G2]["conversation"][0].pop("Answer"), "Field required"),
        (lambda d: d[_G2]["conversation"].clear(), "expected 'A' or 'B'"),
    ],
)
def test_test_file_fast_decoder_equals_the_general_one(tmp_path, change, expected):
    data = {k: entry(k, a) for k, a in LABELS.items()}
    if change is not None:
        change(data)
    path = tmp_path / "test_DS_format.json"
    path.write_text(json.dumps(data))

    def read(general_only: bool) -> object:
        forced = mock.patch.object(decoders, "Entry", decoders.AnyEntry) if general_only else contextlib.nullcontext()
        with forced:
            try:
                gt = load_ground_truth([path])
            except DataError as e:
                return str(e)
        return [
            gt.images,
            gt.anomalous.tolist(),
            gt.dataset_idx.tolist(),
            gt.class_idx.tolist(),
            gt.classes,
            gt.defects,
        ]

    fast = read(general_only=False)
    assert fast == read(general_only=True)
    if isinstance(expected, dict):
        classes = [("DS", "c1"), ("DS", "c2")]
        assert fast == [list(LABELS), list(LABELS.values()), [0] * 12, [0] * 10 + [1] * 2, classes, expected]
    else:
        assert re.search(rf"record '{_G2}': .*conversation.0.Answer.*{expected}", str(fast))


# --- big test files are read on the other core (TestFileReader) -------------------------------------------------
def test_background_reader_returns_what_the_serial_read_does(tmp_path):
    from iadr1.eval.load import TestFileReader

    labels = {f"S/a/test/bad/{i}.png": True for i in range(3)} | {f"S/b/test/good/{i}.png": False for i in range(4)}
    t1 = write_test_file(tmp_path / "t1.json", labels, **{"S/a/test/bad/1.png": {"location": "center", "type": "hole"}})
    t2 = write_test_file(tmp_path / "t2.json", {"T/x/test/good/0.png": False, "T/x/test/bad/0.png": True})
    reader = TestFileReader.start([t1, t2], force=True)
    if reader is None:
        missing("no fork here (not Linux, or other threads run)")
    got = reader.result()
    assert got == [load._read_test_file(t1), load._read_test_file(t2)]
    assert got[0][2] == {"S/a/test/bad/1.png": ("center", "hole")}
    a = load_ground_truth([t1, t2], reader=TestFileReader.start([t1, t2], force=True))
    b = load_ground_truth([t1, t2])
    assert a.images == b.images and a.defects == b.defects and a.classes == b.classes
    assert (a.anomalous == b.anomalous).all() and (a.class_idx == b.class_idx).all()


def test_background_reader_errors_are_the_serial_ones(tmp_path):
    from iadr1.eval.load import TestFileReader

    t = tmp_path / "test_X_format.json"
    data = {"X/a/test/good/0.png": entry("X/a/test/good/0.png", False)}
    data["X/a/test/good/0.png"]["conversation"][0]["Answer"] = "C"
    t.write_text(json.dumps(data))
    reader = TestFileReader.start([t], force=True)
    if reader is None:
        missing("no fork here (not Linux, or other threads run)")
    with pytest.raises(DataError, match=r"record 'X/a/test/good/0.png': .*conversation.0.Answer.* A or B, got 'C'"):
        load_ground_truth([t], reader=reader)
    reader = TestFileReader.start([t], force=True)
    reader.cancel()  # stops and reaps the child
    with pytest.raises(ChildProcessError):
        os.waitpid(reader.pid, os.WNOHANG)


def test_evaluate_in_the_background_equals_in_place(bench, monkeypatch):
    in_place = evaluate([bench["test"]], [bench["pred"]], n_boot=100, seed=1)
    monkeypatch.setattr(load, "BACKGROUND_MIN_BYTES", 0)
    started = []
    real_start = load.TestFileReader.start.__func__

    def spy(cls, files, force=False):
        r = real_start(cls, files, force)
        started.append(r)
        return r

    monkeypatch.setattr(load.TestFileReader, "start", classmethod(spy))
    background = evaluate([bench["test"]], [bench["pred"]], n_boot=100, seed=1)
    if started[0] is None:
        missing("no fork here (not Linux, or other threads run)")
    assert background.datasets == in_place.datasets and background.average == in_place.average
    # A bad predictions file: its error, and the child is stopped (no zombie left).
    bad = bench["dir"] / "bad.jsonl"
    bad.write_text('{"image": 3}\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        evaluate([bench["test"]], [bad], n_boot=0)
    with pytest.raises(ChildProcessError):
        os.waitpid(started[-1].pid, os.WNOHANG)


# --- keys: annotations in either form (docs/convert.md "Keys") -----------------------------------------------------
def test_annotations_keyed_by_meta_path_are_read(tmp_path):
    # build-data keys annotations by meta path (relative to the dataset folder); test-file keys carry the dataset
    # name. Eval maps one form onto the other instead of ignoring every annotation without a word.
    labels = {"S/a/test/bad/0.png": True, "S/a/test/bad/1.png": True, "S/a/test/good/0.png": False}
    t = write_test_file(tmp_path / "t.json", labels)
    reply = "<think>t</think><location>{}</location><type>{}</type><answer>Yes</answer>"
    p = write_jsonl(
        tmp_path / "p.jsonl",
        [
            ours("S/a/test/bad/0.png", "A", reply.format("top left", "scratch")),
            ours("S/a/test/bad/1.png", "A", reply.format("center", "hole")),
            ours("S/a/test/good/0.png", "B"),
        ],
    )
    ann = write_jsonl(
        tmp_path / "ann.jsonl",
        [
            {"image": "a/test/bad/0.png", "reasoning": "r", "location": "top left", "type": "Scratch"},
            {"image": "S/a/test/bad/1.png", "reasoning": "r", "location": "bottom", "type": "Hole"},  # test-file form
        ],
    )
    r = evaluate([t], [p], annotations=[ann], n_boot=0)
    d = r.datasets["S"]
    assert (d["n_location_judged"], d["n_type_judged"]) == (2, 2)
    assert (d["location_accuracy"], d["type_accuracy"]) == (50.0, 100.0)
    assert r.warnings == [] and r.run["warnings"] == []


def test_annotations_or_predictions_matching_no_test_key_are_warned(tmp_path):
    t = write_test_file(tmp_path / "t.json", {"S/a/test/bad/0.png": True, "S/a/test/good/0.png": False})
    p = write_jsonl(tmp_path / "p.jsonl", [ours("S/a/test/bad/0.png", "A"), ours("S/a/test/good/0.png", "B")])
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"image": "Other/x/0.png", "location": "top", "type": "Hole"}])
    r = evaluate([t], [p], annotations=[ann], n_boot=0)
    assert len(r.warnings) == 1 and r.run["warnings"] == r.warnings
    assert f"none of the 1 annotations in {ann} match a test image" in r.warnings[0]
    assert "'Other/x/0.png'" in r.warnings[0] and "'S/a/test/bad/0.png'" in r.warnings[0]
    elsewhere = write_jsonl(tmp_path / "q.jsonl", [ours("T/a/test/bad/0.png", "A")])
    r = evaluate([t], [elsewhere], n_boot=0)
    assert len(r.warnings) == 1 and "none of the 1 predictions match a test image" in r.warnings[0]


# --- per defect type (specie) ----------------------------------------------------------------------------------------
def test_per_specie_accuracy_by_hand(bench):
    r = evaluate([bench["test"]], [bench["pred"]], n_boot=0)
    sp = per_specie(r)
    assert list(sp) == ["DS"] and list(sp["DS"]) == ["good", "bad"]  # `good` first, then by name
    assert sp["DS"]["good"] == {"n": 7, "n_right": 5, "accuracy": 5 / 7 * 100, "location_accuracy": None,
                                "type_accuracy": None, "n_location_judged": 0, "n_type_judged": 0}  # fmt: skip
    assert (sp["DS"]["bad"]["n"], sp["DS"]["bad"]["n_right"], sp["DS"]["bad"]["accuracy"]) == (5, 3, 60.0)
    assert r.datasets["DS"]["species"] == sp["DS"] and "species" not in r.average


def test_per_specie_location_and_type(tmp_path):
    labels = {"S/a/test/scratch/0.png": True, "S/a/test/scratch/1.png": True, "S/b/test/hole/0.png": True,
              "S/b/test/good/0.png": False, "T/test/good/0.png": False}  # fmt: skip
    t = write_test_file(tmp_path / "t.json", labels)
    reply = "<think>t</think><location>{}</location><type>{}</type><answer>Yes</answer>"
    p = write_jsonl(
        tmp_path / "p.jsonl",
        [
            ours("S/a/test/scratch/0.png", "A", reply.format("top", "scratch")),  # both right
            ours("S/a/test/scratch/1.png", "B"),  # missed: wrong, not judged
            ours("S/b/test/hole/0.png", "A", reply.format("top", "stain")),  # right cell, wrong type
            ours("S/b/test/good/0.png", "A"),  # overkill
            ours("T/test/good/0.png", "B"),
        ],
    )
    ann = write_jsonl(
        tmp_path / "a.jsonl",
        [{"image": k, "location": "top", "type": "scratch" if "scratch" in k else "hole"} for k in labels],
    )
    sp = per_specie(evaluate([t], [p], annotations=[ann], n_boot=0))
    assert {k: {s: (d["n"], d["accuracy"]) for s, d in v.items()} for k, v in sp.items()} == {
        "S": {"good": (1, 0.0), "hole": (1, 100.0), "scratch": (2, 50.0)},
        "T": {"good": (1, 100.0)},
    }
    assert (sp["S"]["scratch"]["location_accuracy"], sp["S"]["scratch"]["type_accuracy"]) == (100.0, 100.0)
    assert (sp["S"]["hole"]["location_accuracy"], sp["S"]["hole"]["type_accuracy"]) == (100.0, 0.0)
    assert sp["S"]["scratch"]["n_type_judged"] == 1 and sp["S"]["good"]["n_type_judged"] == 0
