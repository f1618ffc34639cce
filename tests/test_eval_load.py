"""iadr1.eval: reading both prediction formats, matching, bad input, per-dataset/class numbers by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from iadr1.data.schemas import TestEntry
from iadr1.errors import DataError
from iadr1.eval.load import dataset_and_class, load_ground_truth, positions
from iadr1.eval.pipeline import evaluate

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
    with pytest.raises(DataError, match=r"record 'X/a/test/good/0.png': field 'conversation.0.Answer'"):
        load_ground_truth([t])


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
