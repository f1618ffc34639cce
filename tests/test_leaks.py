"""Nothing leaked (issue 12): test images stay out of training data, a leak-free train share, the overlap report."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_trees import make_mvtec, texture, write_annotations, write_image
from PIL import Image

from iadr1.cli import main
from iadr1.data.build import NEAR_DISTANCE, BuildConfig, build_data
from iadr1.data.convert import move_to_train, read_meta, scan_layout, split_of, write_meta
from iadr1.data.io import inspect_image
from iadr1.data.schemas import load_test_file
from iadr1.errors import ConfigError, DataError

# An MVTec-style tree: normal training images only, every defect in test/ (as MVTec-AD, MPDD, VisA ship).
CLASSES = {
    "bottle": {"train": {"good": 4}, "test": {"good": 4, "broken": 4, "crack": 2}},
    "screw": {"train": {"good": 4}, "test": {"good": 3, "scratch": 3}},
}
N_TEST = 4 + 4 + 2 + 3 + 3


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """Run `iadr1 ...` in-process; return (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def mvtec(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(dataset root, meta.json, annotations.jsonl) of the MVTec-style tree, as `iadr1 convert` writes the meta."""
    root = make_mvtec(tmp_path / "MVTec", CLASSES, textured=True)
    meta = scan_layout("mvtec", root)
    return root, write_meta(meta, tmp_path / "meta.json"), write_annotations(meta, tmp_path / "ann.jsonl")


def _images(path: Path) -> set[str]:
    return {r["images"] for r in json.loads(path.read_text())}


# ------------------------------------------------------------------------------------------------------------
# build-data: the meta's test split (and a given test file) stays out unless asked for
# ------------------------------------------------------------------------------------------------------------
def test_mvtec_tree_without_train_defects_is_a_one_line_error(mvtec, tmp_path, capsys):
    root, meta, anns = mvtec
    out = tmp_path / "out"
    code, _, err = run_cli(["build-data", "-m", meta, "-a", anns, "--image-root", root, "--out", out], capsys)
    assert code == 1 and err.startswith("error:") and err.count("\n") == 1, err
    assert "no defective image" in err and "--train-share" in err and f"{N_TEST} test images" in err
    assert not (out / "sft_0shot.json").exists()  # nothing that can learn nothing
    report = json.loads((out / "build_report.json").read_text())
    assert report["counts"]["test_left_out"] == N_TEST and report["counts"]["anomalous"] == 0
    # --split train gives the same answer (no defect outside test/), not a silently useless set.
    code, _, err = run_cli(
        ["build-data", "-m", meta, "-a", anns, "--image-root", root, "--out", out, "--split", "train"], capsys
    )
    assert code == 1 and "no defective image" in err


def test_test_images_are_used_only_when_asked_and_then_counted(mvtec, tmp_path, capsys):
    root, meta, anns = mvtec
    for flag in (["--allow-test"], ["--split", "train", "--split", "test"]):
        out = tmp_path / flag[-1]
        code, stdout, err = run_cli(
            ["build-data", "-m", meta, "-a", anns, "--image-root", root, "--out", out, *flag], capsys
        )
        assert code == 0, err
        assert f"{N_TEST} test images" in stdout and "warning" in stdout
        assert len(_images(out / "sft_0shot.json")) == 8 + N_TEST
        report = json.loads((out / "build_report.json").read_text())
        assert report["counts"]["test_used"] == N_TEST and report["counts"]["test_left_out"] == 0
        assert any(f"{N_TEST} test images" in w for w in report["warnings"])


def test_images_of_a_given_test_file_stay_out(tmp_path):
    # Every entry says split train (or has no split), but a test file names some: they are test images.
    root = make_mvtec(tmp_path / "D", {"c": {"train": {"good": 5, "dent": 4}}}, textured=True)
    meta_d = scan_layout("mvtec", root)
    meta, anns = write_meta(meta_d, tmp_path / "meta.json"), write_annotations(meta_d, tmp_path / "ann.jsonl")
    test_file = tmp_path / "test_D_format.json"
    keys = ["D/c/train/good/004.png", "D/c/train/dent/003.png"]  # convert's keys: dataset name first
    conv = [{"Question": "q", "Answer": "B", "Options": {"A": "Yes.", "B": "No."}, "type": "Anomaly Detection"}]
    test_file.write_text(json.dumps({k: {"image_path": k, "conversation": conv} for k in keys}))
    res = build_data(meta, anns, root, tmp_path / "o", BuildConfig(), test_files=[test_file])
    assert _images(res.files["sft_0shot"].path) == {e.img_path for e in meta_d["c"]} - {k[2:] for k in keys}
    assert res.counts["test_left_out"] == 2 and res.report["warnings"] == []
    allowed = build_data(meta, anns, root, tmp_path / "p", BuildConfig(allow_test=True), test_files=[test_file])
    assert allowed.files["sft_0shot"].records == 9 and allowed.counts["test_used"] == 2


def test_build_data_reads_test_keys_and_annotations_in_either_form(tmp_path):
    # docs/convert.md "Keys": meta paths may lack the dataset name, test keys carry it; build-data maps both ways.
    root = make_mvtec(tmp_path / "D", {"c": {"train": {"good": 5, "dent": 4}}}, textured=True)
    meta_d = scan_layout("mvtec", root)  # paths start at the class: c/train/...
    anns = tmp_path / "ann.jsonl"
    rows = [{"image": f"D/{e.img_path}", "reasoning": "A dent.", "location": "center", "type": "Deformation"}
            for e in meta_d["c"] if e.anomaly]  # fmt: skip
    anns.write_text("".join(json.dumps(r) + "\n" for r in rows))  # keyed like test files: D/c/train/dent/...
    test_file = tmp_path / "test_D_format.json"
    conv = [{"Question": "q", "Answer": "B", "Options": {"A": "Yes.", "B": "No."}, "type": "Anomaly Detection"}]
    keys = ["c/train/good/004.png", "D/c/train/good/003.png"]  # one key of each form
    test_file.write_text(json.dumps({k: {"image_path": k, "conversation": conv} for k in keys}))
    res = build_data(meta_d, anns, root, tmp_path / "o", BuildConfig(), test_files=[test_file])
    assert res.counts["test_left_out"] == 2 and res.counts["anomalous"] == 4 and res.counts["unused_annotations"] == 0
    assert _images(res.files["sft_0shot"].path) == {e.img_path for e in meta_d["c"]} - {
        "c/train/good/004.png", "c/train/good/003.png"}  # fmt: skip


def test_default_still_uses_train_and_template_images(tmp_path):
    root = make_mvtec(tmp_path / "D", {"c": {"train": {"good": 3, "dent": 2}, "test": {"good": 2}}}, textured=True)
    write_image(root / "c" / "template" / "000.png", texture("template"))
    meta_d = scan_layout("mvtec", root)
    res = build_data(meta_d, write_annotations(meta_d, tmp_path / "a.jsonl"), root, tmp_path / "o")
    assert _images(res.files["sft_0shot"].path) == {e.img_path for e in meta_d["c"] if split_of(e) != "test"}


# ------------------------------------------------------------------------------------------------------------
# convert --train-share: a leak-free split of the test folder
# ------------------------------------------------------------------------------------------------------------
def test_move_to_train_takes_a_seeded_share_of_each_class_and_specie(tmp_path):
    root = make_mvtec(tmp_path / "MVTec", CLASSES, textured=True)
    meta = scan_layout("mvtec", root)
    moved = move_to_train(meta, 0.5, seed=0)
    assert [e.img_path for es in moved.values() for e in es] == [e.img_path for es in meta.values() for e in es]
    was_test = {e.img_path for es in meta.values() for e in es if split_of(e) == "test"}
    now_train = {e.img_path for es in moved.values() for e in es if split_of(e) == "train"} & was_test
    groups: dict[tuple[str, str], list[int]] = {}
    for es in meta.values():
        for e in es:
            if e.img_path in was_test:
                groups.setdefault((e.cls_name, e.specie_name), []).append(e.img_path in now_train)
    # Half of each (class, specie), half rounded up, defective and normal alike: 4 -> 2, 2 -> 1, 3 -> 2.
    assert {k: sum(v) for k, v in groups.items()} == {
        ("bottle", "good"): 2, ("bottle", "broken"): 2, ("bottle", "crack"): 1,
        ("screw", "good"): 2, ("screw", "scratch"): 2}  # fmt: skip
    assert all(split_of(e) == "test" for es in meta.values() for e in es if e.img_path in was_test)  # a copy
    assert move_to_train(meta, 0.5, seed=0) == moved  # seeded
    again = move_to_train(meta, 0.5, seed=1)
    assert {e.img_path for es in again.values() for e in es if split_of(e) == "train"} != {
        e.img_path for es in moved.values() for e in es if split_of(e) == "train"
    }
    # At least one image of each group stays a test image, whatever the share.
    nearly_all = move_to_train(meta, 0.99, seed=0)
    left = {(e.cls_name, e.specie_name) for es in nearly_all.values() for e in es if split_of(e) == "test"}
    assert left == set(groups)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        move_to_train(meta, 1.0, seed=0)


def test_cli_train_share_gives_a_leak_free_training_set(mvtec, tmp_path, capsys):
    root, _, anns = mvtec
    meta, test_file = tmp_path / "split_meta.json", tmp_path / "test_MVTec_format.json"
    args = ["convert", "--layout", "mvtec", "--root", root, "--meta", meta, "--test-file", test_file]
    code, out, err = run_cli([*args, "--train-share", "0.5", "--seed", "3"], capsys)
    assert code == 0, err
    assert "moved 9 test images (5 anomalous, 4 normal) to the train split" in out + err
    test_keys = set(load_test_file(test_file))
    assert len(test_keys) == N_TEST - 9
    moved = {e.img_path for es in read_meta(meta).values() for e in es if split_of(e) == "train"} - {
        e.img_path for es in scan_layout("mvtec", root).values() for e in es if split_of(e) == "train"
    }
    assert len(moved) == 9 and not {"MVTec/" + p for p in moved} & test_keys
    # build-data on that meta: defects to learn from, no test image, and a clean overlap report.
    out_dir = tmp_path / "built"
    code, stdout, err = run_cli(
        ["build-data", "-m", meta, "-a", anns, "--image-root", root, "--out", out_dir, "--test-file", test_file],
        capsys,
    )
    assert code == 0, err
    trained = _images(out_dir / "sft_0shot.json")
    assert not {"MVTec/" + p for p in trained} & test_keys and moved <= trained
    report = json.loads((out_dir / "build_report.json").read_text())
    assert report["counts"]["anomalous"] == 5 and report["warnings"] == []
    assert report["overlap"]["exact"]["count"] == 0 and report["overlap"]["near"]["count"] == 0
    assert report["overlap"]["test_images"] == N_TEST - 9


def test_cli_train_share_needs_layout_and_meta(mvtec, tmp_path, capsys):
    root, meta, _ = mvtec
    for args in (
        ["--meta", meta, "--test-file", tmp_path / "t.json", "--dataset", "MVTec"],
        ["--layout", "mvtec", "--test-file", tmp_path / "t.json"],
    ):
        code, _, err = run_cli(["convert", "--root", root, *args, "--train-share", "0.3"], capsys)
        assert code == 1 and "--train-share" in err and err.count("\n") == 1, err
    code, _, err = run_cli(
        ["convert", "--root", root, "--layout", "mvtec", "--meta", meta, "--train-share", "1"], capsys
    )
    assert code == 1 and "between 0 and 1" in err


def test_without_train_share_convert_is_unchanged(mvtec, tmp_path, capsys):
    root, _, _ = mvtec
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    base = ["convert", "--layout", "mvtec", "--root", root]
    assert run_cli([*base, "--meta", a], capsys)[0] == 0
    write_meta(scan_layout("mvtec", root), b)
    assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------------------------------------------------
# The overlap report: exact copies by bytes, re-encoded copies by a perceptual hash
# ------------------------------------------------------------------------------------------------------------
def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_overlap_report_finds_copies_of_test_images_in_training_data(tmp_path, capsys):
    root = make_mvtec(tmp_path / "D", {"c": {"train": {"good": 6, "dent": 3}, "test": {"good": 3, "dent": 3}}},
                      textured=True)  # fmt: skip
    exact, reencoded = "c/test/good/001.png", "c/test/dent/002.png"
    shutil.copy(root / exact, root / "c/train/good/copy.png")
    (root / "c/train/dent/copy.jpg").write_bytes(_jpeg(texture(reencoded), 90))
    meta_d = scan_layout("mvtec", root)
    meta = write_meta(meta_d, tmp_path / "meta.json")
    anns = write_annotations(meta_d, tmp_path / "ann.jsonl")
    out = tmp_path / "o"
    code, stdout, err = run_cli(["build-data", "-m", meta, "-a", anns, "--image-root", root, "--out", out], capsys)
    assert code == 0, err
    ov = json.loads((out / "build_report.json").read_text())["overlap"]
    assert ov["max_distance"] == NEAR_DISTANCE and ov["training_images"] == 11 and ov["test_images"] == 6
    assert ov["exact"] == {"count": 1, "pairs": [{"train": "c/train/good/copy.png", "test": exact}]}
    assert ov["near"]["count"] == 1
    (pair,) = ov["near"]["pairs"]
    assert (pair["train"], pair["test"]) == ("c/train/dent/copy.jpg", reencoded)
    assert 0 <= pair["distance"] <= NEAR_DISTANCE
    # The summary says so, and nothing was blocked.
    assert "overlap" in stdout and "c/train/good/copy.png" in stdout and "c/train/dent/copy.jpg" in stdout
    assert (out / "sft_0shot.json").exists()


def test_distinct_images_are_far_apart_and_reencoded_ones_close(tmp_path):
    def fp(data: bytes, name: str):
        p = tmp_path / name
        p.write_bytes(data)
        problem, f = inspect_image(p)
        assert problem is None
        return f

    png = io.BytesIO()
    Image.fromarray(texture("a", 64)).save(png, format="PNG")
    a = fp(png.getvalue(), "a.png")
    for q in (95, 75):
        b = fp(_jpeg(texture("a", 64), q), f"a{q}.jpg")
        assert b.sha != a.sha and a.distance(b) <= NEAR_DISTANCE and a.is_near(b), (q, a.thumbnail_rms(b))
    others = [fp(_jpeg(texture(f"o{i}", 64), 90), f"o{i}.jpg") for i in range(30)]
    assert min(a.distance(o) for o in others) > NEAR_DISTANCE and not any(a.is_near(o) for o in others)
    # A flat image has no structure to hash: only byte copies of it are found.
    flat = tmp_path / "flat.png"
    write_image(flat, 128)
    assert inspect_image(flat)[1].phash is None


def test_synthetic_dataset_reports_no_overlap(tmp_path):
    from iadr1.data.synthetic import make_dataset

    ds = make_dataset(tmp_path / "s", n_train=40, n_test=20, size=64, seed=1)
    ov = json.loads(ds.report.read_text())["overlap"]
    assert ov["test_images"] == 20 and ov["exact"]["count"] == 0 and ov["near"]["count"] == 0


def test_library_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        build_data({}, None, tmp_path, tmp_path / "o", test_files=[tmp_path / "nope.json"])


def test_overlap_with_a_test_file_image_the_meta_does_not_list(tmp_path):
    # The test file's key starts with the dataset name (convert's keys for non-folder layouts); the file is found
    # under the image root without it.
    root = make_mvtec(tmp_path / "D", {"c": {"train": {"good": 3, "dent": 2}}}, textured=True)
    meta_d = scan_layout("mvtec", root)
    (root / "elsewhere").mkdir()
    shutil.copy(root / "c/train/good/002.png", root / "elsewhere" / "same.png")
    test_file = tmp_path / "test_D_format.json"
    conv = [{"Question": "q", "Answer": "B", "Options": {"A": "Yes.", "B": "No."}, "type": "Anomaly Detection"}]
    keys = ["D/elsewhere/same.png", "D/elsewhere/missing.png"]
    test_file.write_text(json.dumps({k: {"image_path": k, "conversation": conv} for k in keys}))
    res = build_data(meta_d, write_annotations(meta_d, tmp_path / "a.jsonl"), root, tmp_path / "o",
                     test_files=[test_file])  # fmt: skip
    ov = res.report["overlap"]
    assert ov["exact"]["pairs"] == [{"train": "c/train/good/002.png", "test": "D/elsewhere/same.png"}]
    assert ov["test_images"] == 1 and ov["unreadable_test_images"] == 1
    assert res.files["sft_0shot"].records == 5  # reported, never blocked


def test_popcount_without_numpy_2(monkeypatch):
    from iadr1.data import build

    x = np.array([[0, 2**64 - 1, 5, 2**63]], np.uint64)
    expected = [[0, 64, 2, 1]]
    assert build._popcount(x).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert build._popcount(x).tolist() == expected
