"""The embedded synthetic dataset: files, schemas, masks vs annotations, determinism, rate, visibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iadr1.cli import main
from iadr1.data.annotations import load_annotations
from iadr1.data.convert import read_meta, split_of
from iadr1.data.schemas import GRPORecord, SFTRecord, load_records, load_test_file
from iadr1.data.synthetic import (
    CLASSES,
    DEFECT_TYPES,
    GRID_WORDS,
    SPECIES,
    assemble_dataset,
    draw_images,
    grid_location,
    make_dataset,
    make_sample,
    plan_split,
)
from iadr1.errors import ConfigError
from iadr1.rewards.defect_types import type_category
from iadr1.rewards.location import location_cell

N_TRAIN, N_TEST, SIZE, SEED = 32, 16, 64, 3


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn") / "out", n_train=N_TRAIN, n_test=N_TEST, size=SIZE,
                        seed=SEED, val_fraction=0.25)  # fmt: skip


def _cell(mask: np.ndarray) -> int:
    """1..9, computed here independently of the package: row-major 3x3 cell of the mask's centroid."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return 3 * min(int(3 * ys.mean() / h), 2) + min(int(3 * xs.mean() / w), 2) + 1


def test_files_exist_and_load_through_schemas(ds):
    for p in (ds.meta, ds.test_file, ds.annotations, ds.sft_file, ds.grpo_file, ds.sft_1shot_file,
              ds.grpo_1shot_file, ds.report, ds.info, ds.sft_val_file, ds.grpo_val_file):  # fmt: skip
        assert p is not None and p.is_file() and p.stat().st_size > 0, p
    meta = read_meta(ds.meta)
    assert sorted(meta) == sorted(CLASSES)
    entries = [e for es in meta.values() for e in es]
    splits = [split_of(e) for e in entries]
    assert splits.count("train") == N_TRAIN and splits.count("test") == N_TEST and splits.count("template") == 16
    for e in entries:
        assert (ds.image_root / e.img_path).is_file() and e.img_path.startswith(f"{ds.dataset}/{e.cls_name}/")
        with Image.open(ds.image_root / e.img_path) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"

    test = load_test_file(ds.test_file)
    test_meta = {e.img_path: e for e in entries if split_of(e) == "test"}
    assert set(test) == set(test_meta)
    for key, t in test.items():
        assert t.is_anomalous == (test_meta[key].anomaly == 1) and t.dataset == ds.dataset
        assert t.cls_name == test_meta[key].cls_name
        assert len(t.random_templates) == 4 and all("/template/" in r for r in t.random_templates)
        assert all(r.split("/")[1] == t.cls_name for r in t.similar_templates)

    sft = load_records(ds.sft_file, SFTRecord) + load_records(ds.sft_val_file, SFTRecord)
    grpo = load_records(ds.grpo_file, GRPORecord)
    assert len(sft) == N_TRAIN and len(grpo) + len(load_records(ds.grpo_val_file, GRPORecord)) == N_TRAIN
    assert all("/train/" in r.images for r in sft)  # training files come from the train split only
    assert len(load_records(ds.sft_1shot_file, SFTRecord)) == len(grpo)
    assert all(len(r.image) == 2 for r in load_records(ds.grpo_1shot_file, GRPORecord))
    report = json.loads(ds.report.read_text())
    assert report["problems"] == [] and report["counts"]["anomalous"] == ds.counts["train_anomalous"]


def test_masks_and_annotations_match_what_was_drawn(ds):
    anns, problems = load_annotations(ds.annotations)
    assert problems == []
    meta = read_meta(ds.meta)
    checked = 0
    for e in (e for es in meta.values() for e in es):
        if split_of(e) == "template":
            assert e.anomaly == 0 and e.img_path not in anns
            continue
        ann = anns[e.img_path]
        if e.anomaly == 0:
            assert e.mask_path == "" and e.specie_name == "good" and ann.location is None and ann.type is None
            continue
        mask = np.asarray(Image.open(ds.image_root / e.mask_path)) > 127
        assert mask.shape == (SIZE, SIZE) and mask.any(), e.mask_path
        assert e.mask_path == f"{ds.dataset}/{e.cls_name}/ground_truth/{e.specie_name}/{Path(e.img_path).stem}_mask.png"
        # Location word = the 3x3 cell of the mask centroid, read back with the reward's own rule.
        assert location_cell(ann.location, strict=True) == _cell(mask), (e.img_path, ann.location)
        assert ann.type == DEFECT_TYPES[e.specie_name]
        assert type_category(ann.type).category == ann.type.lower()  # the type reward knows every type name
        assert ann.location in ann.reasoning
        checked += 1
    assert checked == ds.counts["train_anomalous"] + ds.counts["test_anomalous"] > 0


def test_grid_location_words():
    for cell, word in enumerate(GRID_WORDS):
        m = np.zeros((90, 90), bool)
        r, c = divmod(cell, 3)
        m[30 * r + 10 : 30 * r + 20, 30 * c + 10 : 30 * c + 20] = True
        assert grid_location(m) == word and location_cell(word, strict=True) == cell + 1
    with pytest.raises(ValueError):
        grid_location(np.zeros((9, 9), bool))


def test_every_class_and_defect_draws_a_visible_defect():
    inside, outside, normal = [], [], []
    for cls in CLASSES:
        for j, specie in enumerate(SPECIES):
            s = make_sample(cls, "train", j, specie, size=SIZE, seed=1)
            diff = np.abs(s.image - s.clean).mean(-1)
            assert s.mask.any() and s.anomalous and s.type == DEFECT_TYPES[specie]
            inside.append(diff[s.mask].mean())
            outside.append(diff[~s.mask].mean())
        n = make_sample(cls, "train", 99, "good", size=SIZE, seed=1)
        assert not n.mask.any() and n.location is None
        normal.append(np.abs(n.image - n.clean).max())
    inside_a, outside_a = np.array(inside), np.array(outside)
    # Every defect changes its masked pixels, clearly more than it changes the rest of the image.
    assert inside_a.min() > 0.025 and np.median(inside_a) > 0.08
    assert (inside_a > 3 * outside_a).all() and inside_a.mean() > 20 * outside_a.mean()
    assert max(normal) == 0.0


def test_sample_is_a_pure_function_of_its_arguments():
    a = make_sample("coins", "test", 5, "missing_part", size=SIZE, seed=2)
    b = make_sample("coins", "test", 5, "missing_part", size=SIZE, seed=2)
    c = make_sample("coins", "test", 5, "missing_part", size=SIZE, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.reasoning == b.reasoning
    assert not np.array_equal(a.image, c.image)


def test_train_and_test_tiles_come_from_different_sources():
    # A train tile and a test tile never match pixel for pixel (disjoint parts of the photographs, disjoint
    # coins).
    train = [make_sample(c, "train", i, "good", size=48, seed=0).clean for c in CLASSES for i in range(3)]
    test = [make_sample(c, "test", i, "good", size=48, seed=0).clean for c in CLASSES for i in range(3)]
    assert min(np.abs(a - b).mean() for a in train for b in test) > 0.02


def test_defect_rate_is_exact_per_class():
    for rate in (0.0, 0.25, 0.5):
        plan = plan_split("train", 40, rate, seed=0)
        for cls in CLASSES:
            species = [s for c, s in plan if c == cls]
            assert len(species) == 10 and sum(s != "good" for s in species) == int(10 * rate + 0.5)
    plan = plan_split("train", 64, 0.5, seed=0)
    for cls in CLASSES:  # eight defects per class: each kind once
        assert sorted(s for c, s in plan if c == cls and s != "good") == sorted(SPECIES)


def test_deterministic_files_and_defect_rate_option(ds, tmp_path):
    again = make_dataset(tmp_path / "again", n_train=N_TRAIN, n_test=N_TEST, size=SIZE, seed=SEED, val_fraction=0.25)
    files_a = sorted(p.relative_to(ds.root) for p in ds.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (ds.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel

    other = make_dataset(tmp_path / "rate", n_train=16, n_test=8, size=48, defect_rate=0.25, seed=SEED)
    assert other.counts == {
        "train": 16,
        "train_anomalous": 4,
        "test": 8,
        "test_anomalous": 4,
        "templates": 16,
    }
    test = load_test_file(other.test_file)
    assert sum(t.is_anomalous for t in test.values()) == 4


def test_option_errors(tmp_path, ds):
    with pytest.raises(ConfigError, match="size"):
        make_dataset(tmp_path / "a", size=32)
    with pytest.raises(ConfigError, match="defect_rate"):
        make_dataset(tmp_path / "b", defect_rate=1.5)
    with pytest.raises(ConfigError, match="classes"):
        make_dataset(tmp_path / "c", classes=["brick", "wood"])
    with pytest.raises(ConfigError, match="not empty"):
        make_dataset(ds.root)


def test_cli_synthetic(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:  # 2 images per class, one defective: no one-shot reference
        main(["build-data", "--synthetic", str(tmp_path / "x"), "--n-train", "8", "--n-test", "4"])
    assert ex.value.code == 1 and "fewer than 2 normal training images" in capsys.readouterr().err
    args = ["--n-train", "16", "--n-test", "4", "--size", "48", "--seed", "1"]
    main(["build-data", "--synthetic", str(tmp_path / "s"), *args])
    out = capsys.readouterr().out
    assert "synthetic dataset SYNTH" in out and "sft_1shot.json" in out
    info = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert info["options"]["seed"] == 1 and info["counts"]["train"] == 16
    assert len(json.loads((tmp_path / "s" / "grpo_0shot.json").read_text())) == 16


def test_defects_option_draws_only_the_chosen_kinds(tmp_path):
    from iadr1.data.synthetic import SPECIES, plan_split

    # The default plan is the one every earlier dataset was drawn with: all eight kinds, same order.
    assert plan_split("train", 64, 0.5, 3) == plan_split("train", 64, 0.5, 3, defects=SPECIES)
    two = make_dataset(tmp_path / "two", n_train=32, n_test=16, size=48, defects=("stain", "hole"))
    meta = json.loads(two.meta.read_text())
    kinds = {e["specie_name"] for entries in meta.values() for e in entries}
    assert kinds == {"good", "stain", "hole"}
    assert json.loads(two.info.read_text())["options"]["defects"] == ["stain", "hole"]
    for bad in ((), ("stain", "rust"), ("hole", "hole")):
        with pytest.raises(ConfigError, match="defects"):
            make_dataset(tmp_path / f"bad{len(bad)}", defects=bad)


def test_drawing_then_assembly_is_make_dataset(ds, tmp_path):
    # Drawing writes the image tree and returns the annotations; assembly writes every other file from them.
    plans = {
        "train": plan_split("train", N_TRAIN, 0.5, SEED),
        "test": plan_split("test", N_TEST, 0.5, SEED),
        "template": [(c, "good") for c in CLASSES for _ in range(4)],
    }
    anns = draw_images(tmp_path / "images", plans, size=SIZE, seed=SEED)
    assert [json.loads(line) for line in ds.annotations.read_text().splitlines()] == anns
    images = sorted(p.relative_to(tmp_path) for p in (tmp_path / "images").rglob("*") if p.is_file())
    assert images == sorted(p.relative_to(ds.root) for p in ds.image_root.rglob("*") if p.is_file())
    again = assemble_dataset(tmp_path, anns, templates=4, seed=SEED, val_fraction=0.25)
    for name in ("meta", "test_file", "annotations", "sft_file", "grpo_1shot_file", "sft_val_file", "report"):
        assert getattr(again, name).read_bytes() == getattr(ds, name).read_bytes(), name
    assert again.info is None  # synthetic.json (options, counts) is make_dataset's


def test_assembly_writes_what_the_cli_writes(ds, tmp_path):
    # meta.json and the test file as `iadr1 convert` writes them, the training files as `iadr1 build-data` does.
    meta, test_file = tmp_path / "meta.json", tmp_path / "test.json"
    main(["convert", "--layout", "folder", "--root", str(ds.image_root), "--dataset", ds.dataset,
          "--meta", str(meta), "--test-file", str(test_file), "--seed", str(SEED)])  # fmt: skip
    assert meta.read_bytes() == ds.meta.read_bytes() and test_file.read_bytes() == ds.test_file.read_bytes()
    built = tmp_path / "built"
    main(["build-data", "-m", str(ds.meta), "-a", str(ds.annotations), "--image-root", str(ds.image_root),
          "--split", "train", "--strict", "-k", "0", "-k", "1", "--seed", str(SEED), "--val-fraction", "0.25",
          "--out", str(built)])  # fmt: skip
    for path in (ds.sft_file, ds.grpo_file, ds.sft_1shot_file, ds.grpo_1shot_file, ds.sft_val_file, ds.grpo_val_file):
        assert (built / path.name).read_bytes() == path.read_bytes(), path.name


def test_synthetic_refuses_options_it_would_ignore(tmp_path, capsys):
    from iadr1.cli import main

    with pytest.raises(SystemExit) as e:
        main(["build-data", "--synthetic", str(tmp_path / "s"), "--strict", "--split", "train"])
    assert e.value.code == 1 and "--synthetic does not take --split, --strict" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
