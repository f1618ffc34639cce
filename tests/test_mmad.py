"""MMAD's multiple-choice questions: the test format, `infer --task mmad`, the choice parser, eval per question type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import STUB_KEY_ENV
from helpers_trees import texture, write_image

from iadr1.answers import parse_choice
from iadr1.cli import main
from iadr1.data.schemas import load_test_file
from iadr1.errors import ConfigError, DataError
from iadr1.eval.mmad import mmad_metrics
from iadr1.eval.pipeline import evaluate
from iadr1.infer.runner import InferConfig, run_inference

TYPES = {  # MMAD's question types as its files name them, with a question and options of each
    "Anomaly Detection": ("Is there any defect in the object?", {"A": "Yes.", "B": "No."}),
    "Defect Classification": ("What kind of defect is it?", {"A": "Scratch", "B": "Crack", "C": "Dent", "D": "Stain"}),
    "Defect Localization": ("Where is the defect?", {"A": "Top left", "B": "Center", "C": "Bottom right"}),
    "Defect Description": ("What does the defect look like?", {"A": "A thin line", "B": "A round spot"}),
    "Defect Analysis": ("What is its effect?", {"A": "Leak", "B": "None", "C": "Weak seal", "D": "Noise", "E": "Rust"}),
    "Object Classification": ("What is the object?", {"A": "Bottle", "B": "Cable", "C": "Screw"}),
    "Object Structure": ("How many parts does it have?", {"A": "One", "B": "Two", "C": "Three"}),
    "Object Details": ("What colour is its cap?", {"A": "Red", "B": "Blue"}),
}
DEFECT_ONLY = ("Defect Classification", "Defect Localization", "Defect Description", "Defect Analysis")


def _question(qtype: str, answer: str) -> dict:
    text, options = TYPES[qtype]
    return {"Question": text, "Answer": answer, "Options": options, "type": qtype, "annotation": True}


def make_mmad(root: Path) -> tuple[Path, dict[str, list[dict]]]:
    """An MMAD-format test file over two datasets: defective images ask all eight types, normal ones the detection
    and object questions (as MMAD's do); one normal reference each."""
    entries = {}
    for ds, cls in (("MVTec-AD", "bottle"), ("VisA", "candle")):
        write_image(root / ds / cls / "train" / "good" / "ref.png", texture(f"{ds}ref", 32), size=32)
        for kind, n in (("broken", 3), ("good", 2)):
            for i in range(n):
                key = f"{ds}/{cls}/test/{kind}/{i:03d}.png"
                write_image(root / key, texture(key, 32), size=32)
                conv = [_question("Anomaly Detection", "A" if kind != "good" else "B")]
                if kind != "good":
                    conv += [_question(t, "BCAE"[j] if t != "Defect Description" else "A") for j, t in
                             enumerate(DEFECT_ONLY)]  # fmt: skip
                conv += [_question("Object Classification", "A"), _question("Object Structure", "B"),
                         _question("Object Details", "A")]  # fmt: skip
                entries[key] = {
                    "image_path": key,
                    "conversation": conv,
                    "random_templates": [f"{ds}/{cls}/train/good/ref.png"],
                    "similar_templates": [f"{ds}/{cls}/train/good/ref.png"],
                }
    test = root / "mmad.json"
    test.write_text(json.dumps(entries))
    return test, {k: v["conversation"] for k, v in entries.items()}


# --- the choice parser -----------------------------------------------------------------------------------------------
OPTS = {"A": "Scratch", "B": "Crack", "C": "Dent", "D": "Stain", "E": "No defect"}


@pytest.mark.parametrize(
    "reply, expected",
    [("B", "B"), ("(C)", "C"), ("D. Stain", "D"), ("**A**", "A"), ("e", "E"), ("Answer: C", "C"),
     ("The answer is (B).", "B"), ("Dent.", "C"), ("I see a crack near the top.", "B"),
     ("<think>a long line</think><answer>A</answer>", "A"), ("<think>hm</think><answer>Stain</answer>", "D"),
     ("A careful look shows a dent.", "C"),  # the article is no answer; the one option named is
     ("A or B", None), ("a scratch and a dent", None), ("I cannot tell.", None), ("", None), (None, None),
     ("F", None)],
)  # fmt: skip
def test_parse_choice(reply, expected):
    assert parse_choice(reply, OPTS) == expected


def test_detection_answers_read_as_yes_no_letters():
    opts = TYPES["Anomaly Detection"][1]
    assert parse_choice("No.", opts) == "B" and parse_choice("<think>x</think><answer>Yes</answer>", opts) == "A"
    assert parse_choice("There is a defect? Yes", opts) == "A"


# --- the test format -------------------------------------------------------------------------------------------------
def test_mmad_files_load_and_label_by_the_detection_question(tmp_path):
    test, conv = make_mmad(tmp_path)
    entries = load_test_file(test)
    bad = entries["MVTec-AD/bottle/test/broken/000.png"]
    assert len(bad.conversation) == 8 and bad.is_anomalous and bad.conversation[4].Answer == "E"
    assert not entries["VisA/candle/test/good/000.png"].is_anomalous
    # The detection question decides the label wherever it stands.
    moved = {"image_path": "x.png", "conversation": [_question("Object Classification", "C"),
                                                     _question("Anomaly Detection", "A")]}  # fmt: skip
    (tmp_path / "moved.json").write_text(json.dumps({"x.png": moved}))
    e = load_test_file(tmp_path / "moved.json")["x.png"]
    assert e.detection_index == 1 and e.is_anomalous
    wrong = {"image_path": "x.png", "conversation": [_question("Anomaly Detection", "C")]}
    (tmp_path / "wrong.json").write_text(json.dumps({"x.png": wrong}))
    with pytest.raises(DataError, match=r"wrong.json: record 'x.png'.*anomaly-detection answer is A or B, got 'C'"):
        load_test_file(tmp_path / "wrong.json")


# --- infer --task mmad -----------------------------------------------------------------------------------------------
def _answer_by_question(root: Path, conv: dict[str, list[dict]], wrong_types: tuple[str, ...] = ()):
    """A stub responder answering each question right (a letter, or the option's text), except `wrong_types`. The
    query image is known by its bytes (small PNGs are sent as they are on disk), the question by its text."""
    import base64

    by_bytes = {base64.b64encode((root / key).read_bytes()).decode(): key for key in conv}

    def respond(body: dict) -> dict:
        parts = [p for m in body["messages"] for p in m["content"]]
        text = " ".join(p["text"] for p in parts if p.get("type") == "text")
        image = by_bytes[[p for p in parts if p["type"] == "image_url"][-1]["image_url"]["url"].split(",", 1)[1]]
        asked = re.search(r"Question: (.*?)\n", text).group(1)
        q = next(q for q in conv[image] if q["Question"] == asked)
        if q["type"] in wrong_types:
            return {"reply": "I am not sure."}
        right = q["Answer"]
        if q["type"] == "Object Classification":
            return {"reply": q["Options"][right]}  # the option's text, not its letter
        return {"reply": f"<think>looked</think><answer>{right}</answer>"}

    return respond


def _cfg(stub, test: Path, root: Path, out: Path, **kw) -> InferConfig:
    return InferConfig(model="stub-vlm", test_file=test, image_root=root, out=out, backend="openai", task="mmad",
                       base_url=stub.base_url, api_key_env=STUB_KEY_ENV, concurrency=2, retries=0, **kw)  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_infer_mmad_asks_every_question_and_resumes(openai_server, tmp_path):
    test, conv = make_mmad(tmp_path / "data")
    openai_server.responder = _answer_by_question(tmp_path / "data", conv, wrong_types=("Defect Analysis",))
    out = tmp_path / "run"
    s = run_inference(_cfg(openai_server, test, tmp_path / "data", out, shots=1))
    n_questions = sum(len(q) for q in conv.values())
    lines = _lines(out / "predictions.jsonl")
    assert s.written == n_questions == len(lines) == 6 * 8 + 4 * 4 and len(openai_server.requests) == n_questions
    by = {(r["image"], r["question_index"]): r for r in lines}
    ad = by[("MVTec-AD/bottle/test/broken/000.png", 0)]
    assert (ad["question_type"], ad["choice"], ad["answer"], ad["letter"]) == ("Anomaly Detection", "A", "yes", "A")
    other = by[("MVTec-AD/bottle/test/broken/000.png", 1)]
    assert (other["choice"], other["answer"], other["letter"]) == ("B", None, None)
    assert by[("VisA/candle/test/good/001.png", 1)]["choice"] == "A"  # the option's text, read as its letter
    assert by[("VisA/candle/test/broken/002.png", 4)]["choice"] is None  # no option named: unparsable
    # One-shot, one question per request: the reference first, the question and its options as MMAD writes them.
    asked = [[p for p in r["body"]["messages"][-1]["content"]] for r in openai_server.requests]
    assert all(sum(p["type"] == "image_url" for p in parts) == 2 for parts in asked)
    texts = [" ".join(p["text"] for p in parts if p["type"] == "text") for parts in asked]
    detection = [t for t in texts if "Question: Is there any defect in the object?\nA. Yes.\nB. No.\n" in t]
    assert len(detection) == 10 and all("final option letter in <answer></answer>" in t for t in detection)
    assert sum("Question: What is its effect?\nA. Leak\nB. None\nC. Weak seal\nD. Noise\nE. Rust" in t
               for t in texts) == 6  # fmt: skip
    # Resume: drop three lines; only those three questions are asked again.
    kept = lines[:10] + lines[13:]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    before = len(openai_server.requests)
    s2 = run_inference(_cfg(openai_server, test, tmp_path / "data", out, shots=1))
    assert (s2.skipped, s2.written, len(openai_server.requests) - before) == (n_questions - 3, 3, 3)
    assert sorted((r["image"], r["question_index"]) for r in _lines(out / "predictions.jsonl")) == sorted(by)
    # A detection run never mixes into an MMAD folder.
    with pytest.raises(ConfigError, match="task"):
        run_inference(_cfg(openai_server, test, tmp_path / "data", out, shots=1).model_copy(update={"task": "detect"}))


def test_detection_lines_stay_as_they_were(openai_server, tmp_path):
    test, conv = make_mmad(tmp_path / "data")
    openai_server.responder = lambda body: {"reply": "<think>x</think><answer>No</answer>"}
    out = tmp_path / "det"
    s = run_inference(_cfg(openai_server, test, tmp_path / "data", out).model_copy(update={"task": "detect"}))
    lines = _lines(out / "predictions.jsonl")
    assert s.written == len(lines) == 10 and not any("question_index" in r or "choice" in r for r in lines)
    assert all(r["letter"] == "B" for r in lines)


# --- eval ------------------------------------------------------------------------------------------------------------
def test_eval_scores_each_question_type_both_ways(openai_server, tmp_path, capsys):
    test, conv = make_mmad(tmp_path / "data")
    openai_server.responder = _answer_by_question(tmp_path / "data", conv, wrong_types=("Defect Analysis",))
    out = tmp_path / "run"
    run_inference(_cfg(openai_server, test, tmp_path / "data", out))
    # One detection answer wrong (a normal VisA image called defective), one defect-classification answer wrong.
    lines = _lines(out / "predictions.jsonl")
    for r in lines:
        if (r["image"], r["question_index"]) == ("VisA/candle/test/good/000.png", 0):
            r.update(choice="A", answer="yes", letter="A")
        if (r["image"], r["question_index"]) == ("MVTec-AD/bottle/test/broken/001.png", 1):
            r.update(choice="D")
    pred = out / "edited.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = evaluate([test], [pred], n_boot=0)
    m = result.mmad
    assert m["types"] == ["Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
                          "Defect Analysis", "Object Classification", "Object Analysis"]  # fmt: skip
    mv, visa = m["datasets"]["MVTec-AD"], m["datasets"]["VisA"]
    assert mv["iadr1"]["Defect Classification"] == pytest.approx(200 / 3)
    assert visa["iadr1"]["Anomaly Detection"] == pytest.approx((1 + 0.5) / 2 * 100)  # balanced accuracy
    # Defect Analysis: no reply names an option. iadr1 counts them wrong; MMAD drops them (nothing left to score).
    assert mv["iadr1"]["Defect Analysis"] == 0.0 and mv["mmad"]["Defect Analysis"] is None
    assert mv["n"]["Defect Analysis"] == 3 and mv["n_answered"]["Defect Analysis"] == 0
    assert mv["n"]["Object Analysis"] == 10 and mv["iadr1"]["Object Analysis"] == 100.0  # structure + details
    iadr1_types = [100.0, 200 / 3, 100.0, 100.0, 0.0, 100.0, 100.0]
    assert mv["iadr1"]["average"] == pytest.approx(sum(iadr1_types) / 7)
    assert mv["mmad"]["average"] == pytest.approx((100 + 200 / 3 + 100 + 100 + 100 + 100) / 6)
    assert m["average"]["iadr1"]["average"] == pytest.approx((mv["iadr1"]["average"] + visa["iadr1"]["average"]) / 2)
    # The detection metrics are iadr1's, from the detection lines alone, as for a one-question file.
    assert result.datasets["VisA"]["balanced_accuracy"] == pytest.approx(75.0)
    assert result.datasets["MVTec-AD"]["n"] == 5 and result.run["n_predictions"] == 10
    assert any("scored by question type (MMAD)" in n for n in result.notes)
    # The CLI: the table, metrics.json, MMAD's CSV layout, the report.
    ev = tmp_path / "ev"
    main(["eval", "-t", str(test), "-p", str(pred), "-o", str(ev), "--bootstrap", "0", "--no-plots"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "MMAD questions" in printed and "DefCls" in printed and "its scorer's rule" in printed
    assert json.loads((ev / "metrics.json").read_text())["mmad"]["datasets"]["VisA"]["iadr1"] == visa["iadr1"]
    csv = (ev / "mmad_accuracy.csv").read_text().splitlines()
    assert csv[0] == ",Anomaly Detection,Defect Classification,Defect Localization,Defect Description,Defect Analysis,"\
                     "Object Classification,Object Analysis,Average"  # fmt: skip
    assert [r.split(",")[0] for r in csv[1:]] == ["MVTec-AD", "VisA", "Average"]
    assert csv[1].split(",")[5] == ""  # MMAD's rule: no answered Defect Analysis question
    assert (ev / "mmad_accuracy_iadr1.csv").read_text().splitlines()[1].split(",")[5] == "0.0"
    page = (ev / "report.html").read_text()
    assert '<table id="mmad">' in page and "dropped, as MMAD's scorer does" in page


def test_mmad_answers_json_of_the_original_scripts_is_read(tmp_path):
    """MMAD's own answers file: records with question_type and gpt_answer, in question order per image."""
    test, conv = make_mmad(tmp_path / "data")
    records = []
    for image, qs in conv.items():
        for q in qs:
            given = q["Answer"] if q["type"] != "Object Details" else ""  # MMAD leaves an unparsed answer empty
            asked = {"type": "text", "text": q["Question"]}
            records.append({"image": image, "question": asked, "question_type": q["type"],
                            "correct_answer": q["Answer"], "gpt_answer": given})  # fmt: skip
    path = tmp_path / "answers_1_shot_model.json"
    path.write_text(json.dumps(records))
    m = mmad_metrics([test], [path])
    mv = m["datasets"]["MVTec-AD"]
    assert mv["mmad"]["Object Analysis"] == 100.0 and mv["iadr1"]["Object Analysis"] == 50.0  # details unparsed
    assert m["n_questions"] == m["n_predictions"] == 64 and m["n_answered"] == 54
    result = evaluate([test], [path], n_boot=0)
    assert result.datasets["MVTec-AD"]["balanced_accuracy"] == 100.0 and result.mmad is not None
    records.append(dict(records[0]))  # the first image's detection answer twice
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="two predictions for image"):
        evaluate([test], [path], n_boot=0)


def test_two_answers_to_one_question_name_it(tmp_path):
    test, _ = make_mmad(tmp_path / "data")
    line = {"image": "VisA/candle/test/good/000.png", "question_index": 2, "question_type": "Object Structure",
            "choice": "B", "letter": None, "prompt_style": "iadr1", "shots": 0}  # fmt: skip
    path = tmp_path / "p.jsonl"
    path.write_text((json.dumps(line) + "\n") * 2)
    with pytest.raises(DataError, match=r"p.jsonl: two answers to question 2 of image 'VisA/candle/test/good/000.png'"):
        mmad_metrics([test], [path])


def test_eval_labels_an_image_by_its_detection_question_wherever_it_stands(tmp_path):
    from test_eval_load import ours, write_jsonl

    entries = {
        "DS/c/test/bad/0.png": [_question("Object Classification", "C"), _question("Anomaly Detection", "A")],
        "DS/c/test/good/0.png": [_question("Object Classification", "A"), _question("Anomaly Detection", "B")],
    }
    test = tmp_path / "t.json"
    test.write_text(json.dumps({k: {"image_path": k, "conversation": v} for k, v in entries.items()}))
    pred = write_jsonl(tmp_path / "p.jsonl", [ours("DS/c/test/bad/0.png", "A"), ours("DS/c/test/good/0.png", "B")])
    result = evaluate([test], [pred], n_boot=0)
    assert result.datasets["DS"]["balanced_accuracy"] == 100.0 and result.gt.anomalous.tolist() == [True, False]
