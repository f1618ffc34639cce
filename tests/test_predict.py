"""`iadr1 predict`: images and folders -> predictions.jsonl (resumable) and gallery.html, zero- and one-shot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import STUB_KEY
from helpers_trees import texture, write_image

from iadr1.cli import main
from iadr1.errors import ConfigError, DataError
from iadr1.infer.predict import find_images, run_predict
from iadr1.infer.runner import InferConfig

SECRET = STUB_KEY


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for name in ("a/bad_1.png", "a/good_1.png", "b/c/bad_2.jpg", "b/good_2.png", "good_3.bmp"):
        write_image(root / name, texture(name, 32))
    (root / "a" / "notes.txt").write_text("not an image")
    write_image(root / ".hidden" / "bad_9.png", 10)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return root


def test_find_images_walks_folders_in_order(folder):
    found = find_images([folder, folder / "a" / "bad_1.png"])  # a file also inside a folder: once
    rel = [p.relative_to(folder).as_posix() for p in found]
    assert rel == ["a/bad_1.png", "a/good_1.png", "b/broken.png", "b/c/bad_2.jpg", "b/good_2.png", "good_3.bmp"]
    with pytest.raises(DataError, match="no such file or folder"):
        find_images([folder / "nope"])
    (folder.parent / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        find_images([folder.parent / "empty"])


@pytest.fixture
def stub(openai_server):
    return openai_server


def cfg(stub, out: Path) -> InferConfig:
    return InferConfig(model="stub-vlm", test_file=out / "x", image_root=out, out=out, backend="openai",
                       base_url=stub.base_url, api_key_env="IADR1_TEST_KEY", concurrency=1, retries=0)  # fmt: skip


def test_predictions_gallery_and_resume(stub, folder, tmp_path):
    # The stub answers in request order (concurrency 1, images sorted): defects for the two `bad_` images.
    order = [p.name for p in find_images([folder]) if p.name != "broken.png"]
    defect = "<think>A thin <dark> line.</think><location>top left</location><type>Scratch</type><answer>Yes</answer>"
    normal = "<think>The surface is uniform.</think><answer>No</answer>"
    for name in order:
        stub.script.append({"reply": defect if name.startswith("bad") else normal})
    out = tmp_path / "out"
    s = run_predict(cfg(stub, out), [folder])
    recs = {Path(r["image"]).name: r for r in lines(out / "predictions.jsonl")}
    assert len(recs) == 6 and (s.defective, s.normal, s.errors) == (2, 3, 1)
    assert recs["bad_1.png"]["answer"] == "yes" and recs["bad_1.png"]["location"] == "top left"
    assert recs["bad_1.png"]["type"] == "Scratch" and recs["good_3.bmp"]["answer"] == "no"
    assert recs["broken.png"]["error"] and "broken.png" in recs["broken.png"]["error"]
    assert all(r["shots"] == 0 and r["reference"] is None for r in recs.values())
    page = (out / "gallery.html").read_text()
    assert page.count('<div class="card') == 6 and page.count("data:image/jpeg;base64,") == 5
    assert page.index("bad_1.png") < page.index("good_1.png") < page.index("broken.png")  # defects first
    assert page.count('class="cell" style="left:0.000%;top:0.000%"') == 2  # the top-left cell, on the defects
    assert "&lt;dark&gt;" in page and "<dark>" not in page  # the model's text is shown, never run as HTML
    # Resume: only the failed image is asked again (it fails again); nothing else is written twice.
    s2 = run_predict(cfg(stub, out), [folder])
    assert (s2.skipped, s2.written) == (5, 1)
    assert sorted(Path(r["image"]).name for r in lines(out / "predictions.jsonl")) == sorted(recs)
    assert len(stub.requests) == 5  # the broken image never reached the model


def test_one_shot_with_a_reference_and_settings_refused(stub, folder, tmp_path):
    ref = write_image(tmp_path / "ref.png", texture("ref", 32))
    out = tmp_path / "out"
    s = run_predict(cfg(stub, out), [folder / "a"], reference=ref, gallery=False)
    assert s.written == 2 and s.gallery is None
    bodies = [r["body"] for r in stub.requests]
    assert all(json.dumps(b).count('"type": "image_url"') == 2 for b in bodies)  # the reference, then the query
    assert all(r["shots"] == 1 and r["reference"] == str(ref) for r in lines(out / "predictions.jsonl"))
    with pytest.raises(ConfigError, match="other settings"):
        run_predict(cfg(stub, out), [folder / "a"])  # zero-shot into a one-shot folder
    s = run_predict(cfg(stub, out), [folder / "a"], overwrite=True, gallery=False)
    assert s.written == 2 and all(r["shots"] == 0 for r in lines(out / "predictions.jsonl"))
    assert SECRET not in (out / "predictions.run.json").read_text()
    with pytest.raises(DataError, match="--reference"):
        run_predict(cfg(stub, out), [folder], reference=folder / "b" / "broken.png")


def test_cli_predict_with_a_tiny_model(tiny_model, folder, tmp_path, capsys):
    out = tmp_path / "cli"
    main(["predict", str(folder / "a"), str(folder / "good_3.bmp"), "--model", str(tiny_model("qwen2_vl")),
          "--out", str(out), "--max-new-tokens", "4", "--device", "cpu", "--threshold", "0.5"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "iadr1 predict: 3 images" in printed and "gallery:" in printed
    assert "at 0.5" in printed and "P(defect)" in printed
    recs = lines(out / "predictions.jsonl")
    assert len(recs) == 3 and all(r["error"] is None and r["raw"] is not None for r in recs)
    # A random tiny model writes no tags: no decision position, so no score and no call at T.
    assert all(r["threshold"] == 0.5 and r["p_defect"] is None and r["decision"] is None for r in recs)
    assert "no score" in printed
    assert (out / "gallery.html").is_file()
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "nope"), "--model", str(tiny_model("qwen2_vl")), "--out", str(out)])
    assert "no such file or folder" in capsys.readouterr().err


def test_a_rerun_replaces_failed_lines_even_when_all_failed(stub, folder, tmp_path):
    out = tmp_path / "out"
    broken = folder / "b" / "broken.png"
    for _ in range(2):
        s = run_predict(cfg(stub, out), [broken], gallery=False)
        assert s.errors == 1
        assert len(lines(out / "predictions.jsonl")) == 1, "the failed line is replaced, not repeated"


def test_threshold_calls_each_image_on_the_decision_score(stub, folder, tmp_path, capsys):
    """`--threshold`: the call at T on P(defect) (read at the fork after </think>) beside the bare answer."""
    import math

    def reply(p_defect: float) -> dict:
        text = "<think>faint</think><answer>No</answer>"
        steps = [("<think>", [("<think>", -0.01)]), ("faint", [("faint", -0.01)]), ("</think>", [("</think>", -0.01)]),
                 ("<answer>", [("<answer>", math.log(1 - p_defect)), ("<location>", math.log(p_defect))]),
                 ("No", [("No", -0.01)]), ("</answer>", [("</answer>", -0.01)])]  # fmt: skip
        return {"reply": text, "logprobs": steps}

    stub.script.extend([reply(0.7), reply(0.2)])
    out = tmp_path / "t"
    icfg = cfg(stub, out).model_copy(update={"threshold": 0.5, "logprobs": True})
    run_predict(icfg, [folder / "a"])
    recs = {Path(r["image"]).name: r for r in lines(out / "predictions.jsonl")}
    first, second = recs["bad_1.png"], recs["good_1.png"]
    assert first["answer"] == "no" and first["p_defect"] == pytest.approx(0.7) and first["decision"] == "yes"
    assert second["p_defect"] == pytest.approx(0.2) and second["decision"] == "no" and second["threshold"] == 0.5
    page = (out / "gallery.html").read_text()
    assert "P(defect) 0.700" in page and "at 0.5: defective" in page and "at 0.5: normal" in page
    with pytest.raises(ConfigError, match="threshold"):
        run_predict(cfg(stub, out).model_copy(update={"logprobs": True}), [folder / "a"])  # a run without T
