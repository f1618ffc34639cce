"""`iadr1 convert`: layout importers on fake trees, meta <-> test file, template rules, CLI forms and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_trees import make_dagm, make_folder, make_mvtec, make_sdd, make_visa, write_image

from iadr1.cli import main
from iadr1.data import convert as cv
from iadr1.data.convert import (
    build_test_file,
    build_test_records,
    image_descriptor,
    image_descriptors,
    key_prefix,
    most_similar,
    random_choices,
    read_meta,
    scan_layout,
    split_of,
    write_meta,
    write_test_file,
)
from iadr1.data.keys import KeyIndex, dataset_and_class, key_scheme, specie_of
from iadr1.data.schemas import MetaEntry, TestEntry, load_test_file
from iadr1.errors import ConfigError, DataError


def rows(meta):
    """meta -> {class: [(img, mask, specie, anomaly, split)]} for compact assertions."""
    return {c: [(e.img_path, e.mask_path, e.specie_name, e.anomaly, split_of(e)) for e in es] for c, es in meta.items()}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Run `iadr1 ...` in-process; return (exit code, stdout + stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


# ---------------------------------------------------------------------------------------------------------------
# Importers, one fake tree per layout
# ---------------------------------------------------------------------------------------------------------------
def test_mvtec_layout_splits_species_and_masks(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", template={"screw": 2})
    meta = scan_layout("mvtec", root)
    assert rows(meta)["bottle"] == [
        ("bottle/train/good/000.png", "", "good", 0, "train"),
        ("bottle/train/good/001.png", "", "good", 0, "train"),
        ("bottle/train/good/002.png", "", "good", 0, "train"),
        ("bottle/test/good/000.png", "", "good", 0, "test"),
        ("bottle/test/good/001.png", "", "good", 0, "test"),
        ("bottle/test/broken/000.png", "bottle/ground_truth/broken/000_mask.png", "broken", 1, "test"),
        ("bottle/test/broken/001.png", "bottle/ground_truth/broken/001_mask.png", "broken", 1, "test"),
    ]
    screw = rows(meta)["screw"]
    assert [r for r in screw if r[4] == "template"] == [
        ("screw/template/000.png", "", "good", 0, "template"),
        ("screw/template/001.png", "", "good", 0, "template"),
    ]
    assert [r[2] for r in screw if r[4] == "test"] == ["good", "hole", "scratch"]
    assert all(e.cls_name == c for c, es in meta.items() for e in es)
    # MPDD and DTD-Synthetic share the layout.
    assert rows(scan_layout("mpdd", root)) == rows(scan_layout("dtd", root)) == rows(meta)


def test_mvtec_mask_without_suffix_and_missing_mask(tmp_path):
    root = make_mvtec(tmp_path / "d", {"c": {"train": {"good": 1}, "test": {"ko": 2}}}, masks=False)
    write_image(root / "c" / "ground_truth" / "ko" / "000.png", 255)  # BTAD names masks like the image
    got = rows(scan_layout("mvtec", root))["c"]
    assert got[1:] == [
        ("c/test/ko/000.png", "c/ground_truth/ko/000.png", "ko", 1, "test"),
        ("c/test/ko/001.png", "", "ko", 1, "test"),
    ]


def test_visa_layout_reads_split_csv(tmp_path):
    meta = scan_layout("visa", make_visa(tmp_path / "visa"))
    assert list(meta) == ["candle", "pcb1"]
    assert rows(meta)["candle"] == [
        ("candle/Data/Images/Normal/0000.JPG", "", "good", 0, "train"),
        ("candle/Data/Images/Normal/0001.JPG", "", "good", 0, "train"),
        ("candle/Data/Images/Normal/0002.JPG", "", "good", 0, "test"),
        ("candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png", "anomaly", 1, "test"),
        ("candle/Data/Images/Anomaly/001.JPG", "candle/Data/Masks/Anomaly/001.png", "anomaly", 1, "test"),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("candle,test,anomaly,../escape.JPG,", "escapes the data root"),
        ("candle,test,anomaly,/abs.JPG,", "is absolute"),
        ("candle,test,anomaly,candle/missing.JPG,", "image not found"),
        ("candle,val,normal,candle/Data/Images/Normal/0000.JPG,", "split must be train or test"),
    ],
)
def test_visa_bad_rows_name_csv_line(tmp_path, row, message):
    root = make_visa(tmp_path / "visa")
    csv = root / "split_csv" / "1cls.csv"
    csv.write_text(csv.read_text() + row + "\n")
    with pytest.raises(DataError, match=message) as e:
        scan_layout("visa", root)
    assert "1cls.csv: line 12" in str(e.value)


def test_visa_without_csv_names_expected_file(tmp_path):
    (tmp_path / "visa").mkdir()
    with pytest.raises(DataError, match=r"split_csv/1cls.csv: file not found"):
        scan_layout("visa", tmp_path / "visa")


def test_sdd_layout_defect_from_nonzero_label(tmp_path):
    meta = scan_layout("sdd", make_sdd(tmp_path / "KolektorSDD"), dataset="SDD")
    assert list(meta) == ["SDD"]
    assert rows(meta)["SDD"] == [
        ("kos01/Part0.jpg", "", "good", 0, "test"),
        ("kos01/Part1.jpg", "kos01/Part1_label.bmp", "defect", 1, "test"),
        ("kos01/Part2.jpg", "", "good", 0, "test"),
        ("kos02/Part0.jpg", "", "good", 0, "test"),
        ("kos02/Part1.jpg", "kos02/Part1_label.bmp", "defect", 1, "test"),
        ("kos02/Part2.jpg", "", "good", 0, "test"),
    ]


def test_sdd_image_without_label_is_an_error(tmp_path):
    root = make_sdd(tmp_path / "sdd")
    (root / "kos02" / "Part2_label.bmp").unlink()
    with pytest.raises(DataError, match=r"kos02/Part2.jpg: no label image Part2_label.bmp"):
        scan_layout("sdd", root)


def test_sdd_unreadable_labels_are_all_skipped_and_reported(tmp_path, capsys):
    root = make_sdd(tmp_path / "SDD")
    (root / "kos01" / "Part1_label.bmp").write_bytes(b"")
    (root / "kos02" / "Part0_label.bmp").write_text("not a bitmap")
    with pytest.raises(DataError, match=r"^2 unreadable images: .*kos01/Part1_label.bmp.*kos02/Part0_label.bmp"):
        scan_layout("sdd", root)
    bad: dict[str, str] = {}
    meta = scan_layout("sdd", root, bad_images=bad)
    assert sorted(bad) == ["kos01/Part1.jpg", "kos02/Part0.jpg"] and len(meta["SDD"]) == 4
    code, out = run_cli(["convert", "--layout", "sdd", "--root", root, "--meta", tmp_path / "m.json"], capsys)
    assert code == 0 and "skipped 2 unreadable images" in out and "Part1_label.bmp: unreadable label image" in out


def test_dagm_layout_labels_and_splits(tmp_path):
    meta = scan_layout("dagm", make_dagm(tmp_path / "DAGM"))
    assert rows(meta)["Class1"] == [
        ("Class1/Test/0000.PNG", "Class1/Test/Label/0000_label.PNG", "defect", 1, "test"),
        ("Class1/Test/0001.PNG", "", "good", 0, "test"),
        ("Class1/Test/0002.PNG", "", "good", 0, "test"),
        ("Class1/Train/0000.PNG", "", "good", 0, "train"),
        ("Class1/Train/0001.PNG", "Class1/Train/Label/0001_label.PNG", "defect", 1, "train"),
        ("Class1/Train/0002.PNG", "", "good", 0, "train"),
        ("Class1/Train/0003.PNG", "", "good", 0, "train"),
    ]
    # A defective training image is never a reference.
    refs = build_test_file(meta, tmp_path / "DAGM", templates=10, dataset="DAGM")["DAGM/Class1/Test/0001.PNG"]
    assert sorted(refs.random_templates) == [f"DAGM/Class1/Train/{i:04d}.PNG" for i in (0, 2, 3)]


def test_folder_layout_with_and_without_test_level(tmp_path):
    a = scan_layout("folder", make_folder(tmp_path / "a", "MPDD", with_test_level=True, template=1), "MPDD")
    b = scan_layout("folder", make_folder(tmp_path / "b", "MPDD", with_test_level=False, template=1), "MPDD")
    assert list(a) == list(b) == ["bracket_black", "tubes"]
    ra = rows(a)["tubes"]
    assert ra[0] == ("MPDD/tubes/template/000.png", "", "good", 0, "template")
    assert ("MPDD/tubes/train/good/004.png", "", "good", 0, "train") in ra
    assert [r[0] for r in ra if r[4] == "test"] == [
        "MPDD/tubes/test/good/000.png",
        "MPDD/tubes/test/good/001.png",
        "MPDD/tubes/test/good/002.png",
        "MPDD/tubes/test/hole/000.png",
        "MPDD/tubes/test/hole/001.png",
    ]
    rb = rows(b)["tubes"]
    assert [r[0] for r in rb if r[4] == "test"] == [p.replace("/test/", "/") for p, *_ in ra if _[3] == "test"]
    assert [r[2:] for r in rb] == [r[2:] for r in ra]


def test_folder_layout_without_class_level(tmp_path):
    for specie, n in (("good", 2), ("defect", 1)):
        for i in range(n):
            write_image(tmp_path / "SDD" / "test" / specie / f"kos0{i}_Part1_0.png")
    meta = scan_layout("folder", tmp_path, "SDD")
    assert rows(meta) == {
        "SDD": [
            ("SDD/test/good/kos00_Part1_0.png", "", "good", 0, "test"),
            ("SDD/test/good/kos01_Part1_0.png", "", "good", 0, "test"),
            ("SDD/test/defect/kos00_Part1_0.png", "", "defect", 1, "test"),
        ]
    }
    entries = build_test_file(meta, tmp_path, dataset="SDD")
    assert {(e.dataset, e.cls_name) for e in entries.values()} == {("SDD", "SDD")}


def test_folder_layout_species_directly_under_dataset(tmp_path):
    write_image(tmp_path / "X" / "good" / "a.png")
    write_image(tmp_path / "X" / "bad" / "b.png")
    assert rows(scan_layout("folder", tmp_path, "X")) == {
        "X": [("X/good/a.png", "", "good", 0, "test"), ("X/bad/b.png", "", "bad", 1, "test")]
    }


@pytest.mark.parametrize("layout", ["mvtec", "visa", "sdd", "dagm"])
def test_empty_dataset_names_the_searched_folder(tmp_path, layout):
    root = tmp_path / "empty"
    root.mkdir()
    if layout == "visa":
        (root / "split_csv").mkdir()
        (root / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    (root / "cls" / "test" / "good").mkdir(parents=True)  # folders but no images
    with pytest.raises(DataError, match=f"no images found for layout '{layout}' in {root}"):
        scan_layout(layout, root)


def test_folder_layout_errors_name_the_folder(tmp_path):
    (tmp_path / "MPDD" / "bracket" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no images found for layout 'folder' in {tmp_path / 'MPDD'}"):
        scan_layout("folder", tmp_path, "MPDD")
    with pytest.raises(DataError, match=f"{tmp_path / 'VisA'}: folder not found"):
        scan_layout("folder", tmp_path, "VisA")
    with pytest.raises(DataError, match="escapes the data root"):
        scan_layout("folder", tmp_path, "../MPDD")
    with pytest.raises(ConfigError, match="unknown layout 'btad'"):
        scan_layout("btad", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# meta.json and test file round trips
# ---------------------------------------------------------------------------------------------------------------
def test_meta_round_trip_keeps_split(tmp_path):
    meta = scan_layout("mvtec", make_mvtec(tmp_path / "d", template={"bottle": 1}))
    path = write_meta(meta, tmp_path / "meta.json")
    back = read_meta(path)
    assert rows(back) == rows(meta)
    as_json = {c: [e.to_json() for e in es] for c, es in meta.items()}
    assert {c: [e.to_json() for e in es] for c, es in back.items()} == as_json == json.loads(path.read_text())
    write_meta({}, tmp_path / "empty.json")
    assert read_meta(tmp_path / "empty.json") == {}


def test_anomalyclip_split_meta_and_split_guessing(tmp_path):
    item = {"mask_path": "", "cls_name": "c", "specie_name": "good", "anomaly": 0}
    split_form = {
        "train": {"c": [{**item, "img_path": "c/Data/n/0.JPG"}]},
        "test": {"c": [{**item, "img_path": "c/Data/n/1.JPG"}]},
    }
    p = tmp_path / "m.json"
    p.write_text(json.dumps(split_form))
    assert [split_of(e) for e in read_meta(p)["c"]] == ["train", "test"]
    # No split field anywhere: the path says it.
    guess = [MetaEntry(img_path=x, **item) for x in ("c/train/good/0.png", "c/template/0.png", "c/test/good/0.png")]
    assert [split_of(e) for e in guess] == ["train", "template", "test"]


def test_test_file_round_trip_and_writer_equals_json_dumps(tmp_path):
    root = make_mvtec(tmp_path / "MVTec")
    entries = build_test_file(scan_layout("mvtec", root), root, dataset="MVTec")
    path = write_test_file(entries, tmp_path / "test.json")
    back = load_test_file(path)
    assert {k: e.to_json() for k, e in back.items()} == {k: e.to_json() for k, e in entries.items()}
    # The one writer (`schemas.dump_test_file` is it too) writes exactly what json.dumps(indent=4) writes.
    as_json = {k: e.to_json() for k, e in entries.items()}
    assert path.read_text() == json.dumps(as_json, indent=4, ensure_ascii=False) + "\n"
    assert write_test_file(as_json, tmp_path / "plain.json").read_text() == path.read_text()
    odd = {
        'é/ü "q".png': {**entries["MVTec/bottle/test/good/000.png"].to_json(), "image_path": 'é/ü "q".png'},
        "x/extra.png": {**entries["MVTec/bottle/test/good/000.png"].to_json(), "note": [1, {"a": None}]},
    }
    assert (
        write_test_file(odd, tmp_path / "odd.json").read_text() == json.dumps(odd, indent=4, ensure_ascii=False) + "\n"
    )


def test_matches_the_released_sdd_test_file(shared_data, tmp_path):
    real = json.loads((shared_data / "test_SDD_format.json").read_text())
    for key in real:
        write_image(tmp_path / key, 0 if "/good/" in key else 255)
    entries = build_test_records(scan_layout("folder", tmp_path, "SDD"), tmp_path, dataset="SDD")
    assert list(entries) == list(real)  # same keys, same order (normal images first)
    assert entries == real


# ---------------------------------------------------------------------------------------------------------------
# Keys, templates
# ---------------------------------------------------------------------------------------------------------------
def test_keys_start_with_the_dataset_name(tmp_path):
    root = make_mvtec(tmp_path / "mpdd_v2")
    meta = scan_layout("mpdd", root)
    entries = build_test_file(meta, root, dataset="MPDD")
    assert "MPDD/bottle/test/broken/000.png" in entries
    e = entries["MPDD/bottle/test/broken/000.png"]
    assert (e.image_path, e.dataset, e.cls_name, e.is_anomalous) == (e.image_path, "MPDD", "bottle", True)
    assert all(t.startswith("MPDD/bottle/train/good/") for t in e.random_templates + e.similar_templates)
    assert sum(x.is_anomalous for x in entries.values()) == 4 and len(entries) == 7
    assert entries["MPDD/bottle/test/good/000.png"].conversation[0].Answer == "B"
    # Prefix rules: folder metas already carry the name; a root named like the dataset is the dataset folder.
    folder = scan_layout("folder", make_folder(tmp_path / "f", "MPDD"), "MPDD")
    assert key_prefix(folder, tmp_path / "f", "MPDD") == ""
    assert key_prefix(folder, tmp_path / "f", None) == ""
    assert key_prefix(folder, tmp_path / "MPDD", "MPDD") == "MPDD/"
    assert key_prefix(meta, root, "MPDD") == "MPDD/"
    with pytest.raises(ConfigError, match="one folder name"):
        key_prefix(meta, root, "a/b")


@pytest.mark.parametrize(
    ("key", "dataset", "cls", "specie"),
    [
        ("MPDD/bracket/test/scratch/0.png", "MPDD", "bracket", "scratch"),
        ("MPDD/bracket/test/good/0.png", "MPDD", "bracket", "good"),
        ("SDD/test/defect/kos01_Part1_0.png", "SDD", "SDD", "defect"),
        ("DAGM/Class1/Test/0000.PNG", "DAGM", "Class1", "defect"),  # no folder under Test/: `defect`
        ("VisA/candle/Data/Images/Anomaly/000.JPG", "VisA", "candle", "defect"),
        ("X/a.png", "X", "X", "defect"),
        ("a.png", "default", "default", "defect"),
    ],
)
def test_one_rule_for_dataset_class_and_specie(key, dataset, cls, specie):
    assert dataset_and_class(key) == (dataset, cls)
    e = TestEntry.model_validate({"image_path": key, "conversation": [{"Answer": "A"}]})
    assert (e.dataset, e.cls_name) == (dataset, cls)
    assert specie_of(key, anomalous=True) == specie and specie_of(key, anomalous=False) == "good"


def test_key_index_finds_either_form():
    meta_paths = KeyIndex(["a/test/bad/0.png", "MPDD/b/test/good/0.png"])
    assert meta_paths.find("MPDD/a/test/bad/0.png") == "a/test/bad/0.png"  # a test key among meta paths
    assert meta_paths.find("MPDD/b/test/good/0.png") == "MPDD/b/test/good/0.png"  # folder layout: the same
    assert meta_paths.find("MPDD/c/test/bad/0.png") is None
    test_keys = KeyIndex({"D1/a/test/bad/0.png": 0, "D1/b/0.png": 1, "D2/b/0.png": 2})
    assert test_keys.find("a/test/bad/0.png") == "D1/a/test/bad/0.png"  # a meta path among test keys
    assert test_keys.find("b/0.png") is None  # in two datasets: neither is guessed
    assert test_keys.find("D2/b/0.png") == "D2/b/0.png"


def test_key_scheme_of_each_form(tmp_path):
    folder_root = make_folder(tmp_path / "f", "MPDD")
    folder = scan_layout("folder", folder_root, "MPDD")
    s = key_scheme(folder, folder_root, "MPDD", layout="folder")
    assert (s.prefix, s.name, s.image_root, s.resolvable) == ("", "MPDD", folder_root, True)
    assert key_scheme(folder, folder_root) == s  # a folder-layout meta read from a file: the same keys
    root = make_mvtec(tmp_path / "MVTec")
    meta = scan_layout("mvtec", root)
    s = key_scheme(meta, root, layout="mvtec")  # the dataset name defaults to ROOT's
    assert (s.prefix, s.name, s.image_root, s.dataset, s.resolvable) == ("MVTec/", "MVTec", tmp_path, "MVTec", True)
    assert not key_scheme(meta, root, "DS", layout="mvtec").resolvable  # no folder DS beside MVTec
    with pytest.raises(ConfigError, match=r"^m.json: the paths start with several names \(bottle, screw\)"):
        key_scheme(meta, root, source="m.json")


def test_template_folder_first_else_train_good(tmp_path):
    root = make_folder(tmp_path, "MPDD", template=2)
    shutil.rmtree(root / "MPDD" / "tubes" / "template")
    entries = build_test_file(scan_layout("folder", root, "MPDD"), root, templates=4, dataset="MPDD")
    bracket = entries["MPDD/bracket_black/test/hole/000.png"]
    assert sorted(bracket.random_templates) == sorted(bracket.similar_templates)
    assert sorted(bracket.random_templates) == [
        "MPDD/bracket_black/template/000.png",
        "MPDD/bracket_black/template/001.png",
    ]
    tubes = entries["MPDD/tubes/test/hole/000.png"]
    assert len(tubes.random_templates) == len(set(tubes.random_templates)) == 4  # K cap over 5 train/good images
    assert set(tubes.random_templates) <= {f"MPDD/tubes/train/good/{i:03d}.png" for i in range(5)}
    assert len(tubes.similar_templates) == 4
    none = build_test_file(scan_layout("folder", root, "MPDD"), root, templates=0, dataset="MPDD")
    assert all(not e.random_templates and not e.similar_templates for e in none.values())
    assert len(none) == len(entries) == 10


def test_random_templates_seeded_and_per_class(tmp_path):
    root = make_folder(tmp_path, "MPDD")
    meta = scan_layout("folder", root, "MPDD")

    def draws(m, seed):
        return {k: e.random_templates for k, e in build_test_file(m, root, 2, seed=seed, similar=False).items()}

    a, b, c = draws(meta, 0), draws(meta, 0), draws(meta, 1)
    assert a == b and a != c
    # One class's draws do not depend on the other classes present.
    only_tubes = draws({"tubes": meta["tubes"]}, 0)
    assert only_tubes == {k: v for k, v in a.items() if "/tubes/" in k}
    # Draws vary between images (not one list for the whole class).
    assert len({tuple(v) for v in a.values()}) > 1


def test_similar_templates_are_the_nearest_references(tmp_path):
    for lv in (0, 50, 100, 150, 200, 250):
        write_image(tmp_path / "D" / "flat" / "train" / "good" / f"{lv:03d}.png", lv)
    write_image(tmp_path / "D" / "flat" / "test" / "good" / "q.png", 140)
    # Same mean brightness, different structure: the descriptor must tell them apart.
    ramp = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))
    refs = {"horizontal": ramp, "vertical": ramp.T.copy(), "flat": np.full((8, 8), 112, np.uint8)}
    for name, arr in refs.items():
        write_image(tmp_path / "D" / "shape" / "train" / "good" / f"{name}.png", arr)
    write_image(tmp_path / "D" / "shape" / "test" / "bad" / "v.png", np.clip(ramp.T.astype(int) + 9, 0, 255))
    write_image(tmp_path / "D" / "shape" / "test" / "bad" / "h.png", np.clip(ramp.astype(int) - 9, 0, 255))
    entries = build_test_file(scan_layout("folder", tmp_path, "D"), tmp_path, templates=4, dataset="D")
    assert [Path(p).stem for p in entries["D/flat/test/good/q.png"].similar_templates] == ["150", "100", "200", "050"]
    assert [Path(p).stem for p in entries["D/shape/test/bad/v.png"].similar_templates] == [
        "vertical",
        "flat",
        "horizontal",
    ]
    assert Path(entries["D/shape/test/bad/h.png"].similar_templates[0]).stem == "horizontal"


def test_most_similar_matches_brute_force():
    rng = np.random.default_rng(0)
    q, r = rng.random((50, 16)).astype(np.float32), rng.random((30, 16)).astype(np.float32)
    brute = np.argsort(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1), axis=1, kind="stable")
    assert (most_similar(q, r, 5, chunk=7) == brute[:, :5]).all()
    assert (most_similar(q, r, 99) == brute).all()
    assert most_similar(q, r[:0], 4).shape == (50, 0)


@pytest.mark.parametrize(("n", "k"), [(1, 4), (4, 4), (5, 4), (60, 10), (10_000, 4), (100, 50)])
def test_random_choices_distinct_and_in_range(n, k):
    rng = np.random.default_rng(3)
    got = random_choices(rng, 500, n, k)
    assert got.shape == (500, min(n, k))
    assert ((got >= 0) & (got < n)).all()
    assert all(len(set(row)) == len(row) for row in got.tolist())
    if n > k:  # every reference gets picked sometimes (not a fixed subset)
        assert len(np.unique(got)) > min(n, 500 * k) // 2


def test_descriptors_of_any_image_mode(tmp_path):
    from PIL import Image

    paths = []
    for mode, suffix in (
        ("L", ".png"),
        ("RGB", ".jpg"),
        ("P", ".png"),
        ("RGBA", ".png"),
        ("1", ".bmp"),
        ("I;16", ".png"),
    ):
        p = tmp_path / f"{mode.replace(';', '')}{suffix}"
        Image.new(mode, (40, 30), 1).save(p)
        paths.append(p)
    d = image_descriptors(paths, workers=1)
    assert d.shape == (6, 256) and d.dtype == np.float32 and (d >= 0).all() and (d <= 1).all()
    assert np.allclose(image_descriptor(tmp_path / "L.png"), 1 / 255)


def test_threaded_descriptors_equal_sequential(tmp_path, monkeypatch):
    paths = [write_image(tmp_path / f"{i}.png", np.full((8, 8), i * 7, np.uint8)) for i in range(30)]
    monkeypatch.setattr(cv, "PARALLEL_MIN_IMAGES", 1)
    seen: list[int] = []
    threaded = image_descriptors(paths, workers=3, progress=seen.append)
    assert sum(seen) == 30
    assert np.array_equal(threaded, image_descriptors(paths, workers=1))
    assert np.allclose(threaded[:, 0], [i * 7 / 255 for i in range(30)])


def test_unreadable_image_names_the_file(tmp_path):
    root = make_folder(tmp_path, "MPDD")
    bad = root / "MPDD" / "tubes" / "train" / "good" / "003.png"
    bad.write_bytes(b"not a png")
    meta = scan_layout("folder", root, "MPDD")
    with pytest.raises(DataError, match=rf"{bad}: not an image"):
        build_test_file(meta, root, dataset="MPDD")
    assert len(build_test_file(meta, root, dataset="MPDD", similar=False)) == 10  # no image is opened
    bad.unlink()
    with pytest.raises(DataError, match=rf"{bad}: missing file"):
        build_test_file(meta, root, dataset="MPDD")


def _break(root: Path, rels: list[str]) -> None:
    for i, rel in enumerate(rels):
        p = root / rel
        if i % 3 == 0:
            p.write_bytes(b"")
        elif i % 3 == 1:
            p.write_bytes(p.read_bytes()[:40])  # truncated
        else:
            p.unlink()


def test_every_bad_image_is_skipped_and_reported(tmp_path):
    root = make_folder(tmp_path, "MPDD", template=2)
    meta = scan_layout("folder", root, "MPDD")
    bad_tests = ["MPDD/tubes/test/good/001.png", "MPDD/tubes/test/hole/000.png", "MPDD/bracket_black/test/good/002.png"]
    bad_ref = "MPDD/tubes/template/001.png"
    _break(root, [*bad_tests, bad_ref])
    # Library default: one error that counts every bad image and names them, not only the first one met.
    with pytest.raises(DataError) as e:
        build_test_records(meta, root, dataset="MPDD")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("4 unreadable images")
    assert all(str(root / r) in msg for r in [*bad_tests, bad_ref])
    # Asked to skip: bad test images are left out, a bad reference is never a template; all are returned.
    bad: dict[str, str] = {}
    records = build_test_records(meta, root, dataset="MPDD", bad_images=bad)
    assert sorted(bad) == sorted([*bad_tests, bad_ref])
    assert all(detail.startswith(f"{root / rel}: ") for rel, detail in bad.items())
    assert bad[bad_tests[2]].endswith("missing file") and "not an image" in bad[bad_tests[0]]
    assert len(records) == 10 - 3 and not set(bad_tests) & set(records)
    assert all(bad_ref not in r["random_templates"] + r["similar_templates"] for r in records.values())
    tubes = records["MPDD/tubes/test/good/000.png"]
    assert tubes["random_templates"] == tubes["similar_templates"] == ["MPDD/tubes/template/000.png"]
    # Nothing bad: the same records as before, exactly.
    good = make_folder(tmp_path / "g", "MPDD", template=2)
    assert build_test_records(scan_layout("folder", good, "MPDD"), good, dataset="MPDD", bad_images={}) == (
        build_test_records(scan_layout("folder", good, "MPDD"), good, dataset="MPDD")
    )


def test_cli_skips_and_lists_bad_images(tmp_path, capsys):
    root = make_folder(tmp_path, "MPDD")
    for i in range(6):  # 12 more test images, all unreadable, with the 3 good + 2 hole ones per class
        for cls in ("bracket_black", "tubes"):
            (root / "MPDD" / cls / "test" / "hole" / f"9{i}.png").write_text("not an image")
    test = tmp_path / "t.json"
    code, out = run_cli(["convert", "--layout", "folder", "--root", root, "--dataset", "MPDD", "--test-file", test],
                        capsys)  # fmt: skip
    assert code == 0, out
    assert "skipped 12 unreadable images" in out and "and 2 more" in out
    assert out.count("not an image") == 10  # the first ten, one per line
    assert len(load_test_file(test)) == 10
    # Every test image unreadable: an error, not an empty test file.
    for p in (root / "MPDD").rglob("test/*/*.png"):
        p.write_bytes(b"")
    code, out = run_cli(["convert", "--layout", "folder", "--root", root, "--dataset", "MPDD", "--test-file", test],
                        capsys)  # fmt: skip
    assert code == 1 and "no readable test image" in out


def test_meta_errors(tmp_path):
    item = {"img_path": "c/test/good/0.png", "mask_path": "", "cls_name": "c", "specie_name": "good", "anomaly": 0}
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"c": [item, item]}))
    with pytest.raises(DataError, match="duplicate image 'D/c/test/good/0.png'"):
        build_test_file(read_meta(p), tmp_path, dataset="D")
    p.write_text(json.dumps({"c": [{**item, "img_path": "c/train/good/0.png"}]}))
    with pytest.raises(DataError, match="no test images"):
        build_test_file(read_meta(p), tmp_path)
    for bad, msg in (
        ("../x.png", "escapes the data root"),
        ("/etc/x.png", "is absolute"),
        ("c/../../x.png", "escapes"),
    ):
        p.write_text(json.dumps({"c": [{**item, "img_path": bad}]}))
        with pytest.raises(DataError, match=rf"{p}: record 'c\[0\]': img_path .*{msg}"):
            read_meta(p)
        with pytest.raises(DataError, match=msg):  # the library path checks too
            build_test_file({"c": [MetaEntry(**{**item, "img_path": bad})]}, tmp_path)
    p.write_text('{"c": [')
    with pytest.raises(DataError, match=rf"{p}: malformed JSON at line 1"):
        read_meta(p)
    p.write_text(json.dumps({"c": [{**item, "anomaly": 2}]}))
    with pytest.raises(DataError, match=r"record 'c\[0\]': field 'anomaly'"):
        read_meta(p)
    with pytest.raises(ConfigError, match="--templates must be >= 0"):
        build_test_file({"c": [MetaEntry(**item)]}, tmp_path, templates=-1)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def test_cli_one_call_equals_two_steps(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "MPDD", template=1)
    one, meta, two = tmp_path / "one.json", tmp_path / "meta.json", tmp_path / "two.json"
    code, out = run_cli(
        ["convert", "--layout", "folder", "--root", root, "--dataset", "MPDD", "--test-file", one], capsys
    )
    assert code == 0, out
    assert "10 test images (4 anomalous, 6 normal)" in out and f"image root for inference: {root}" in out
    assert (
        run_cli(["convert", "--layout", "folder", "--root", root, "--dataset", "MPDD", "--meta", meta], capsys)[0] == 0
    )
    code, out = run_cli(["convert", "--meta", meta, "--root", root, "--test-file", two, "--seed", "0"], capsys)
    assert code == 0, out
    assert one.read_bytes() == two.read_bytes()
    entries = load_test_file(one)
    assert "MPDD/tubes/test/hole/001.png" in entries


def test_cli_writes_through_the_one_fast_writer(tmp_path, capsys, monkeypatch):
    root = make_folder(tmp_path / "data", "MPDD")
    calls = []
    real = cv.write_test_file
    monkeypatch.setattr(cv, "write_test_file", lambda records, path: calls.append(path) or real(records, path))
    test = tmp_path / "t.json"
    code, out = run_cli(["convert", "--layout", "folder", "--root", root, "--dataset", "MPDD", "--test-file", test],
                        capsys)  # fmt: skip
    assert code == 0, out
    assert calls == [test]
    records = build_test_records(scan_layout("folder", root, "MPDD"), root, dataset="MPDD")
    assert test.read_text() == json.dumps(records, indent=4, ensure_ascii=False) + "\n"


def test_cli_standard_layout_prefixes_dataset_name(tmp_path, capsys):
    root = make_mvtec(tmp_path / "MVTec")
    one, meta, two = tmp_path / "one.json", tmp_path / "meta.json", tmp_path / "two.json"
    assert (
        run_cli(["convert", "--layout", "mvtec", "--root", root, "--test-file", one, "--num-templates", "2"], capsys)[0]
        == 0
    )
    assert run_cli(["convert", "--layout", "mvtec", "--root", root, "--meta", meta], capsys)[0] == 0
    # Paths in this meta start at the class: without --dataset the keys would not name a dataset.
    code, out = run_cli(["convert", "--meta", meta, "--root", root, "--test-file", two], capsys)
    assert code == 1 and "pass --dataset NAME" in out and "bottle, screw" in out
    code, out = run_cli(
        ["convert", "--meta", meta, "--root", root, "--test-file", two, "--dataset", "MVTec", "--templates", "2"],
        capsys,
    )
    assert code == 0 and f"image root for inference: {tmp_path}" in out
    assert "--templates is deprecated" in out and "--num-templates" in out  # the 0.1 spelling still works
    assert one.read_bytes() == two.read_bytes()
    assert all(k.startswith("MVTec/") for k in load_test_file(one))
    # A dataset name that differs from the folder's: the note says how inference will find the images.
    code, out = run_cli(
        ["convert", "--layout", "mvtec", "--root", root, "--dataset", "DS-MVTec", "--test-file", one], capsys
    )
    assert code == 0 and "note:" in out and "'DS-MVTec'" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "mvtec", "--root", "{root}"], "nothing to write"),
        (["--root", "{root}", "--test-file", "{tmp}/t.json"], "pass --meta META.json"),
        (["--layout", "btad", "--root", "{root}", "--meta", "{tmp}/m.json"], "--layout 'btad' is not one of"),
        (["--layout", "folder", "--root", "{root}", "--meta", "{tmp}/m.json"], "--layout folder needs --dataset"),
        (
            ["--layout", "folder", "--root", "{tmp}", "--dataset", "NOPE", "--meta", "{tmp}/m.json"],
            "NOPE: folder not found",
        ),
        (
            ["--meta", "{tmp}/missing.json", "--root", "{root}", "--test-file", "{tmp}/t.json"],
            "missing.json: file not found",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    root = make_mvtec(tmp_path / "MVTec")
    code, out = run_cli(["convert", *[a.format(root=root, tmp=tmp_path) for a in args]], capsys)
    assert code == 1
    assert message in out and out.startswith("error:") and out.count("\n") == 1


def test_cli_bad_meta_is_an_error(tmp_path, capsys):
    root = make_mvtec(tmp_path / "MVTec")
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps({"bottle": [{"img_path": "../../etc/passwd", "cls_name": "b", "specie_name": "good", "anomaly": 0}]})
    )
    code, out = run_cli(["convert", "--meta", meta, "--root", root, "--test-file", tmp_path / "t.json"], capsys)
    assert code == 1 and "escapes the data root" in out and str(meta) in out
    meta.write_text("{not json")
    code, out = run_cli(["convert", "--meta", meta, "--root", root, "--test-file", tmp_path / "t.json"], capsys)
    assert code == 1 and "malformed JSON" in out
    assert not (tmp_path / "t.json").exists()
    args = ["convert", "--layout", "mvtec", "--root", root, "--meta", meta, "--num-templates", "-1"]
    code, out = run_cli(args, capsys)
    assert code == 2 and "Invalid value for '--num-templates'" in out  # a usage error, exit 2
