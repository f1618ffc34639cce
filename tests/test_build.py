"""`iadr1 build-data`: PA-SFT / SC-GRPO records from meta.json + annotations, problems, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iadr1.answers import parse
from iadr1.cli import main
from iadr1.data.annotations import load_annotations
from iadr1.data.build import (
    REPORT_NAME,
    BuildConfig,
    build_data,
    generic_reasoning,
    validate_images,
)
from iadr1.data.schemas import QUESTION, GRPORecord, SFTRecord, load_records
from iadr1.errors import DataError
from iadr1.prompts import FEW_SHOT_PREAMBLE, SFT_USER, grpo_problem


# ------------------------------------------------------------------------------------------------------------
# A small hand-made dataset: 2 classes x (4 normal + 3 defective) images, annotations for the defects
# ------------------------------------------------------------------------------------------------------------
def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def make_tree(root: Path) -> tuple[Path, Path, Path]:
    """(image root, meta.json, annotations.jsonl) for classes `a` and `b`."""
    images = root / "img"
    meta: dict[str, list[dict]] = {}
    anns: list[dict] = []
    for ci, cls in enumerate(("a", "b")):
        entries = meta.setdefault(cls, [])
        for i in range(7):
            anomalous = i >= 4
            specie = "scratch" if anomalous else "good"
            rel = f"D/{cls}/train/{specie}/{i:03d}.png"
            _png(images / rel, 100 * ci + i)
            entries.append(
                {"img_path": rel, "mask_path": "", "cls_name": cls, "specie_name": specie,
                 "anomaly": int(anomalous), "split": "train"}
            )  # fmt: skip
            if anomalous:
                anns.append(
                    {"image": rel, "reasoning": f"A dark line crosses image {i}.", "location": "top left",
                     "type": "Scratch"}
                )  # fmt: skip
            elif i == 0:
                anns.append({"image": rel, "reasoning": "Clean   surface,\n no defect."})
    meta_path = root / "meta.json"
    meta_path.write_text(json.dumps(meta))
    ann_path = root / "ann.jsonl"
    ann_path.write_text("".join(json.dumps(a) + "\n" for a in anns))
    return images, meta_path, ann_path


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_tree(tmp_path / "data")


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------------------
def test_zero_and_one_shot_records(tree, tmp_path):
    images, meta, anns = tree
    res = build_data(meta, anns, images, tmp_path / "out", BuildConfig(shots=[0, 1]))
    assert set(res.files) == {"sft_0shot", "grpo_0shot", "sft_1shot", "grpo_1shot"}
    assert all(f.records == 14 for f in res.files.values()) and res.problems == []

    sft0 = _load(res.files["sft_0shot"].path)
    assert len(load_records(res.files["sft_0shot"].path, SFTRecord)) == 14
    by_path = {r["images"]: r for r in sft0}
    assert set(by_path) == {f"D/{c}/train/{s}/{i:03d}.png" for c in "ab" for i, s in
                            [(i, "scratch" if i >= 4 else "good") for i in range(7)]}  # fmt: skip
    defect = by_path["D/a/train/scratch/004.png"]["messages"]
    assert defect[0] == {"role": "user", "content": SFT_USER}
    assert defect[1]["content"] == (
        "<think>A dark line crosses image 4.</think><location>top left</location><type>Scratch</type>"
        "<answer>Yes</answer>"
    )
    # Annotated normal image: whitespace collapsed; unannotated normal image: the generic template.
    assert by_path["D/a/train/good/000.png"]["messages"][1]["content"] == (
        "<think>Clean surface, no defect.</think><answer>No</answer>"
    )
    generic = by_path["D/b/train/good/002.png"]["messages"][1]["content"]
    assert generic == f"<think>{generic_reasoning('b', 'D/b/train/good/002.png')}</think><answer>No</answer>"
    for r in sft0:
        a = parse(r["messages"][1]["content"])
        assert a.well_formed and a.answer == ("yes" if "scratch" in r["images"] else "no")

    grpo0 = {r["id"]: r for r in _load(res.files["grpo_0shot"].path)}
    assert len(load_records(res.files["grpo_0shot"].path, GRPORecord)) == 14
    g = grpo0["D/a/train/scratch/005.png"]
    assert g["image"] == "D/a/train/scratch/005.png" and g["problem"] == grpo_problem(0)
    assert g["problem"].endswith(" " + QUESTION)
    assert g["solution"] == "<location>top left</location><type>Scratch</type><answer>Yes</answer>"
    assert grpo0["D/b/train/good/001.png"]["solution"] == "<answer>No</answer>"

    # One-shot: [reference, query]; the reference is another normal image of the same class.
    for r in _load(res.files["sft_1shot"].path):
        ref, query = r["images"]
        assert ref != query and "/good/" in ref and ref.split("/")[1] == query.split("/")[1]
        user = r["messages"][0]["content"]
        assert user.count("<image>") == 2 and user.startswith(FEW_SHOT_PREAMBLE) and user.endswith(QUESTION)
    g1 = _load(res.files["grpo_1shot"].path)
    assert all(r["problem"] == grpo_problem(1) and len(r["image"]) == 2 for r in g1)
    # The same query gets the same reference in both stages.
    sft_refs = {r["images"][1]: r["images"][0] for r in _load(res.files["sft_1shot"].path)}
    assert sft_refs == {r["image"][1]: r["image"][0] for r in g1}


def test_compat_problem_text(tree, tmp_path):
    images, meta, anns = tree
    res = build_data(meta, anns, images, tmp_path / "o", BuildConfig(compat=True))
    assert all(r["problem"] == grpo_problem(0, compat=True) for r in _load(res.files["grpo_0shot"].path))
    assert grpo_problem(0, compat=True).endswith("image." + QUESTION)


def test_deterministic_for_a_seed(tree, tmp_path):
    images, meta, anns = tree
    cfg = BuildConfig(shots=[0, 1], seed=7, val_fraction=0.3)
    a = build_data(meta, anns, images, tmp_path / "a", cfg)
    b = build_data(meta, anns, images, tmp_path / "b", cfg)
    for name, f in a.files.items():
        assert f.path.read_bytes() == b.files[name].path.read_bytes(), name
    assert a.report_path.read_bytes() == b.report_path.read_bytes()  # paths in it are relative
    c = build_data(meta, anns, images, tmp_path / "c", cfg.model_copy(update={"seed": 8}))
    assert a.files["sft_0shot"].path.read_bytes() != c.files["sft_0shot"].path.read_bytes()


def test_validation_split_is_stratified_and_disjoint(tree, tmp_path):
    images, meta, anns = tree
    res = build_data(meta, anns, images, tmp_path / "o", BuildConfig(shots=[0, 1], val_fraction=0.5))
    train = {r["images"] for r in _load(res.files["sft_0shot"].path)}
    val = {r["images"] for r in _load(res.files["sft_0shot_val"].path)}
    assert not train & val and len(train | val) == 14
    # Per class: round(4 * 0.5) = 2 normal and round(3 * 0.5) = 2 defective images held out.
    for cls in "ab":
        assert sum(f"/{cls}/train/good/" in p for p in val) == 2
        assert sum(f"/{cls}/train/scratch/" in p for p in val) == 2
    assert {r["id"] for r in _load(res.files["grpo_0shot_val"].path)} == val
    # Every one-shot reference, for train and val queries alike, is a training image.
    for name in ("sft_1shot", "sft_1shot_val"):
        assert all(r["images"][0] in train for r in _load(res.files[name].path))
    assert res.counts["train"] == 6 and res.counts["val"] == 8
    # Rebuilding without a split into the same folder removes the stale validation files.
    again = build_data(meta, anns, images, tmp_path / "o", BuildConfig(shots=[0]))
    assert not (tmp_path / "o" / "sft_0shot_val.json").exists() and again.files["sft_0shot"].records == 14
    assert not (tmp_path / "o" / "sft_1shot.json").exists()


def test_split_filter_uses_meta_split(tree, tmp_path):
    images, meta, anns = tree
    obj = json.loads(meta.read_text())
    obj["a"][0]["split"] = "test"
    meta.write_text(json.dumps(obj))
    res = build_data(meta, anns, images, tmp_path / "o", BuildConfig(splits=["train"]))
    assert res.counts["images"] == 13
    assert "D/a/train/good/000.png" not in {r["images"] for r in _load(res.files["sft_0shot"].path)}
    with pytest.raises(DataError, match="lists no images in split template"):
        build_data(meta, anns, images, tmp_path / "p", BuildConfig(splits=["template"]))


# ------------------------------------------------------------------------------------------------------------
# Bad input: skipped and recorded by default, one-line failure with strict
# ------------------------------------------------------------------------------------------------------------
def _break_images(images: Path) -> dict[str, str]:
    """Damage four images in the four ways the builder must catch; returns path -> expected problem kind."""
    (images / "D/a/train/good/001.png").write_bytes(b"")
    good = (images / "D/a/train/good/002.png").read_bytes()
    (images / "D/a/train/good/002.png").write_bytes(good[: len(good) // 2])
    (images / "D/b/train/scratch/004.png").write_text("this is not an image\n")
    (images / "D/b/train/good/003.png").unlink()
    return {
        "D/a/train/good/001.png": "empty_image",
        "D/a/train/good/002.png": "corrupt_image",
        "D/b/train/scratch/004.png": "not_an_image",
        "D/b/train/good/003.png": "missing_image",
    }


def test_bad_images_are_skipped_and_reported(tree, tmp_path):
    images, meta, anns = tree
    expected = _break_images(images)
    res = build_data(meta, anns, images, tmp_path / "o", BuildConfig(shots=[0, 1]))
    assert {p.item: p.kind for p in res.problems} == expected
    for p in res.problems:
        assert str(images / p.item) in p.detail
    details = {p.kind: p.detail for p in res.problems}
    assert "0 bytes" in details["empty_image"]
    assert "truncated" in details["corrupt_image"] or "corrupt" in details["corrupt_image"]
    assert "missing file" in details["missing_image"]
    written = {r["images"] for r in _load(res.files["sft_0shot"].path)}
    assert len(written) == 10 and not written & set(expected)
    # A skipped image is never used as a one-shot reference either.
    assert not {r["images"][0] for r in _load(res.files["sft_1shot"].path)} & set(expected)

    report = json.loads(res.report_path.read_text())
    assert report["problem_counts"] == {k: 1 for k in expected.values()}
    assert {p["item"]: p["kind"] for p in report["problems"]} == expected
    assert report["counts"]["images"] == 14 and report["counts"]["skipped"] == 4
    assert report["counts"]["usable"] == 10
    assert report["per_class"]["a"] == {"normal": 2, "anomalous": 3, "skipped": 2}
    assert report["per_class"]["b"] == {"normal": 3, "anomalous": 2, "skipped": 2}
    assert report["files"]["sft_0shot"] == {"path": "sft_0shot.json", "records": 10}
    assert report["image_root"] == "../data/img" and report["meta"] == "../data/meta.json"
    assert report["options"]["shots"] == [0, 1]


def test_strict_fails_with_one_line_error(tree, tmp_path):
    images, meta, anns = tree
    _break_images(images)
    out = tmp_path / "o"
    with pytest.raises(DataError) as err:
        build_data(meta, anns, images, out, BuildConfig(strict=True))
    msg = str(err.value)
    assert "\n" not in msg and "empty image" in msg and "001.png" in msg and "(+3 more)" in msg
    assert not (out / "sft_0shot.json").exists()  # nothing half-written
    assert json.loads((out / REPORT_NAME).read_text())["counts"]["problems"] == 4


def test_cli_strict_prints_one_red_line(tree, tmp_path, capsys):
    images, meta, anns = tree
    _break_images(images)
    args = ["build-data", "--meta", str(meta), "--annotations", str(anns), "--image-root", str(images)]
    with pytest.raises(SystemExit) as ex:
        main([*args, "--out", str(tmp_path / "o"), "--strict"])
    assert ex.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "empty image" in err

    main([*args, "--out", str(tmp_path / "p"), "--shots", "0", "--shots", "1", "--workers", "1"])
    out = capsys.readouterr().out
    assert "empty_image" in out and "missing_image" in out and "files written" in out
    assert (tmp_path / "p" / "sft_1shot.json").exists()


def test_cli_option_errors(tree, tmp_path, capsys):
    images, meta, anns = tree
    for args, needle in (
        (["--meta", str(meta), "--out", str(tmp_path), "--shots", "2"], "--shots"),
        (["--meta", str(meta), "--out", str(tmp_path), "--val-fraction", "1.5"], "--val-fraction"),
        (["--out", str(tmp_path)], "--meta"),
        (["--synthetic", str(tmp_path / "s"), "--meta", str(meta)], "--synthetic"),
    ):
        with pytest.raises(SystemExit) as ex:
            main(["build-data", *args])
        assert ex.value.code == 1
        assert needle in capsys.readouterr().err


def test_malformed_annotations_file_is_a_data_error(tree, tmp_path):
    images, meta, _ = tree
    bad = tmp_path / "ann.json"
    bad.write_text('[{"image": "D/a/train/good/000.png", "reasoning": "x"},')
    with pytest.raises(DataError, match=r"ann\.json: malformed JSON at line 1"):
        build_data(meta, bad, images, tmp_path / "o")
    with pytest.raises(DataError, match="file not found"):
        build_data(meta, tmp_path / "nope.jsonl", images, tmp_path / "o")
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(DataError, match="annotations must be a JSON list"):
        load_annotations(scalar)


def test_bad_annotation_records(tree, tmp_path):
    images, meta, _ = tree
    anns = tmp_path / "ann.jsonl"
    lines = [
        json.dumps({"image": "D/a/train/scratch/004.png", "reasoning": 5, "location": "top", "type": "Hole"}),
        "{not json",
        json.dumps({"image": "D/a/train/scratch/005.png", "reasoning": "ok", "location": ["top"], "type": "Hole"}),
        json.dumps({"image": "D/a/train/scratch/006.png", "reasoning": "a </think> b", "location": "x", "type": "y"}),
        json.dumps({"image": "D/b/train/scratch/004.png", "reasoning": "fine", "type": "Hole"}),  # no location
        json.dumps({"image": "/abs/x.png", "reasoning": "r"}),
        json.dumps({"image": "D/b/train/scratch/005.png", "reasoning": "fine", "location": "top", "type": "Hole"}),
        json.dumps({"image": "D/b/train/scratch/005.png", "reasoning": "again", "location": "top", "type": "Hole"}),
    ]
    anns.write_text("\n".join(lines) + "\n")
    loaded, problems = load_annotations(anns)
    assert set(loaded) == {"D/b/train/scratch/004.png", "D/b/train/scratch/005.png"}
    assert loaded["D/b/train/scratch/005.png"].reasoning == "fine"  # the first of two is kept
    kinds = [(p.kind, p.detail) for p in problems]
    assert len(kinds) == 6
    assert "line 1" in kinds[0][1] and "'reasoning'" in kinds[0][1] and "valid string" in kinds[0][1]
    assert "line 2" in kinds[1][1] and "malformed JSON" in kinds[1][1]
    assert "'location'" in kinds[2][1]
    assert "'reasoning'" in kinds[3][1] and "'<' or '>'" in kinds[3][1]
    assert "'image'" in kinds[4][1] and "absolute" in kinds[4][1]
    assert kinds[5][0] == "duplicate_annotation" and "line 8" in kinds[5][1]
    assert all(k == "malformed_annotation" for k, _ in kinds[:5])

    res = build_data(meta, anns, images, tmp_path / "o")
    missing = {p.item: p.detail for p in res.problems if p.kind == "missing_annotation"}
    # Defects 004-006 of a lost their (bad) annotations; b/004 has no location; b/006 has none at all.
    assert set(missing) == {f"D/a/train/scratch/00{i}.png" for i in (4, 5, 6)} | {
        "D/b/train/scratch/004.png", "D/b/train/scratch/006.png"}  # fmt: skip
    assert "annotation has no location" in missing["D/b/train/scratch/004.png"]
    assert "no annotation" in missing["D/b/train/scratch/006.png"]
    written = [r["image"] for r in _load(res.files["grpo_0shot"].path) if "scratch" in r["image"]]
    assert written == ["D/b/train/scratch/005.png"]
    assert res.report["problem_counts"] == {
        "duplicate_annotation": 1, "malformed_annotation": 5, "missing_annotation": 5}  # fmt: skip

    with pytest.raises(DataError, match="malformed annotation: .*line 1.*'reasoning'"):
        build_data(meta, anns, images, tmp_path / "s", BuildConfig(strict=True))


def test_json_annotations_keyed_by_image(tree, tmp_path):
    images, meta, _ = tree
    anns = tmp_path / "ann.json"
    data = {f"D/{c}/train/scratch/{i:03d}.png": {"reasoning": "r", "location": "center", "type": "Hole"}
            for c in "ab" for i in (4, 5, 6)}  # fmt: skip
    anns.write_text(json.dumps(data))
    res = build_data(meta, anns, images, tmp_path / "o")
    assert res.problems == [] and res.counts["anomalous"] == 6


def test_no_reference_for_one_shot(tmp_path):
    images, meta, anns = make_tree(tmp_path / "d")
    obj = json.loads(meta.read_text())
    obj["b"] = [e for e in obj["b"] if e["anomaly"] == 1] + [e for e in obj["b"] if e["anomaly"] == 0][:1]
    meta.write_text(json.dumps(obj))
    res = build_data(meta, anns, images, tmp_path / "o", BuildConfig(shots=[0, 1]))
    no_ref = [p for p in res.problems if p.kind == "no_reference"]
    # Class b has one normal image: it cannot be its own reference; the defects use it.
    assert [p.item for p in no_ref] == ["D/b/train/good/000.png"]
    assert res.files["sft_0shot"].records == 11 and res.files["sft_1shot"].records == 10


def test_validate_images_pool_matches_serial(tmp_path):
    paths = []
    for i in range(40):
        p = tmp_path / f"{i}.png"
        _png(p, i)
        paths.append(p)
    paths[3].write_bytes(b"")
    paths[17].write_bytes(paths[17].read_bytes()[:60])
    paths.append(tmp_path / "gone.png")
    seen = []
    pooled = validate_images(paths, workers=2, min_parallel=0, chunk=8, on_progress=lambda s, d, t: seen.append(d))
    assert pooled == validate_images(paths, workers=1)
    assert set(pooled) == {str(paths[3]), str(paths[17]), str(tmp_path / "gone.png")}
    assert seen[0] == 0 and seen[-1] == 41 and seen == sorted(seen)


def test_config_validation():
    with pytest.raises(ValueError, match="shots must be 0 and/or 1"):
        BuildConfig(shots=[3])
    assert BuildConfig(shots=[1, 0, 1]).shots == [0, 1]
    with pytest.raises(ValueError):
        BuildConfig(val_fraction=1.0)


def test_duplicate_keys_in_annotations(tree, tmp_path):
    images, meta, _ = tree
    keyed = tmp_path / "ann.json"
    rec = '{"reasoning": "r", "location": "top", "type": "Hole"}'
    keyed.write_text('{"D/a/train/scratch/004.png": ' + rec + ', "D/a/train/scratch/004.png": ' + rec + "}")
    with pytest.raises(DataError, match=r"ann.json: key 'D/a/train/scratch/004.png' appears twice"):
        build_data(meta, keyed, images, tmp_path / "o")
    # A JSON Lines record with a repeated field is a malformed annotation: skipped and reported (an error with
    # --strict), like a line that is not JSON.
    lines = tmp_path / "ann.jsonl"
    lines.write_text('{"image": "D/a/train/scratch/004.png", "reasoning": "r", "type": "Hole", "type": "Stain"}\n')
    anns, problems = load_annotations(lines)
    assert anns == {} and [p.kind for p in problems] == ["malformed_annotation"]
    assert "line 1" in problems[0].detail and "'type' appears twice" in problems[0].detail
