"""`iadr1 annotate` (iadr1.data.annotate): masks -> location and facts, defect names -> types, template and teacher
reasoning, resume, the report and the contact sheet, and the path folder -> convert -> annotate -> build-data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import STUB_KEY
from helpers_trees import disc_mask, make_masked_mvtec, make_masked_sdd, write_image
from PIL import Image

from iadr1.answers import parse
from iadr1.data.annotate import GRID_WORDS, TypeChoice, TypeTable, mask_facts, read_mask
from iadr1.data.annotate.masks import extent_phrase
from iadr1.data.annotate.run import AnnotateConfig, annotate, report_path, sheet_path
from iadr1.data.annotate.teacher import check_reply
from iadr1.data.annotations import load_annotations
from iadr1.data.convert import scan_layout
from iadr1.data.meta import write_meta
from iadr1.errors import ConfigError
from iadr1.rewards.location import location_cell

SECRET = STUB_KEY


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def meta_of(root: Path, layout: str, out: Path, **kw) -> Path:
    return write_meta(scan_layout(layout, root, **kw), out)


# ---------------------------------------------------------------------------------------------------------------------
# The location rule and the mask's facts
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1024, 1024), (97, 131), (600, 1500)])
def test_a_disc_in_each_cell_is_located_in_that_cell(shape):
    h, w = shape
    for cell, word in enumerate(GRID_WORDS):
        facts = mask_facts(disc_mask(h, w, cell))
        assert facts.location == word, (shape, cell, facts)
        assert facts.regions == 1 and facts.cells == (word,)
        assert location_cell(facts.location, strict=True) == cell + 1  # the rewards read it as the same cell


def test_the_largest_region_decides_and_every_region_is_counted():
    big, small = disc_mask(300, 300, 2, radius=0.12), disc_mask(300, 300, 6, radius=0.05)
    facts = mask_facts(big | small)
    assert facts.location == "top right"  # the centroid of both together would be the center
    assert facts.regions == 2 and set(facts.cells) == {"top right", "bottom left"}
    assert facts.area_fraction == pytest.approx(np.count_nonzero(big | small) / 300**2)


def test_the_working_grid_never_changes_the_cell():
    """1024 x 1024 masks are labelled on a 256 x 256 grid; rectangles placed within a few pixels of a cell border
    get the cell of their exact full-resolution centroid."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = np.zeros((1024, 1024), bool)
        border = rng.choice([1024 / 3, 2048 / 3])
        cx = border + rng.uniform(-3, 3)
        cy = rng.uniform(50, 970)
        hw, hh = rng.integers(2, 30, 2)
        x0, x1 = int(round(cx - hw)), int(round(cx + hw)) + int(rng.integers(0, 2))
        y0, y1 = int(cy - hh), int(cy + hh)
        m[y0:y1, x0:x1] = True
        ys, xs = np.nonzero(m)
        row, col = min(int((ys.mean() + 0.5) * 3 // 1024), 2), min(int((xs.mean() + 0.5) * 3 // 1024), 2)
        assert mask_facts(m).location == GRID_WORDS[row * 3 + col]


@pytest.mark.parametrize("shape", [(200, 130), (1024, 1024), (1000, 700), (3000, 2100)])
def test_block_counts_are_exact(shape):
    """The working grid's per-block counts (Pillow's rounded box average) are the exact pixel counts."""
    from iadr1.data.annotate.masks import WORK_SIDE, block_counts

    h, w = shape
    m = np.random.default_rng(h).random((h, w)) < 0.3
    f = max(1, -(-max(h, w) // WORK_SIDE))
    counts, full = block_counts(Image.fromarray(m.astype(np.uint8) * 255), f)
    ph, pw = -(-h // f) * f, -(-w // f) * f
    expected = np.pad(m, ((0, ph - h), (0, pw - w))).reshape(ph // f, f, pw // f, f).sum(axis=(1, 3))
    assert np.array_equal(counts, expected) and np.array_equal(full(), m)


@pytest.mark.parametrize("values", [(0, 1), (0, 38), (0, 100, 200)])
def test_block_counts_threshold_at_half_the_maximum(values):
    """Label masks (0/1, one label value, several values): defective is above half the mask's maximum, as
    `binarize` says for arrays."""
    from iadr1.data.annotate.masks import binarize, block_counts

    a = np.random.default_rng(len(values)).choice(np.array(values, np.uint8), size=(1024, 1024))
    counts, full = block_counts(Image.fromarray(a), 4)
    expected = binarize(a)
    assert np.array_equal(full(), expected)
    assert np.array_equal(counts, expected.reshape(256, 4, 256, 4).sum(axis=(1, 3)))


def test_extent_phrases():
    assert extent_phrase(0.1, 0.05, 0.3, 0.95) == "spans the width of the image"
    assert extent_phrase(0.05, 0.1, 0.95, 0.9) == "spans most of the image"
    assert extent_phrase(0.05, 0.1, 0.45, 0.3) == "spans the top half"
    assert extent_phrase(0.55, 0.55, 0.95, 0.95) == "spans the bottom half and the right half"
    assert extent_phrase(0.4, 0.4, 0.5, 0.5) is None  # compact


def test_read_mask_reports_bad_masks(tmp_path):
    ok = write_image(tmp_path / "ok.png", disc_mask(20, 30, 4))
    mask, problem = read_mask(ok, (30, 20))
    assert problem is None and mask_facts(mask).location == "center"
    ones = write_image(tmp_path / "ones.png", disc_mask(20, 30, 0, value=1))  # 0/1 masks work too
    assert mask_facts(read_mask(ones)[0]).location == "top left"
    assert read_mask(ok, (20, 20))[1][0] == "mask_size"
    assert read_mask(tmp_path / "none.png")[1][0] == "missing_mask"
    assert read_mask(write_image(tmp_path / "empty.png", np.zeros((8, 8), np.uint8)))[1][0] == "empty_mask"
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    kind, detail = read_mask(tmp_path / "bad.png")[1]
    assert kind == "unreadable_mask" and "bad.png" in detail


# ---------------------------------------------------------------------------------------------------------------------
# Defect names -> categories
# ---------------------------------------------------------------------------------------------------------------------
def test_defect_names_map_by_what_the_defect_is():
    t = TypeTable()
    expected = {
        "crack": "Damage", "broken_small": "Damage", "missing_wire": "Missing parts", "bent_lead": "Deformation",
        "metal_contamination": "Contamination", "liquid": "Contamination", "poke": "Hole",
        "scratch_neck": "Scratch", "thread": "Presence of foreign objects", "scratches": "Scratch",
    }  # fmt: skip
    for name, category in expected.items():
        assert t.choose(name, "any").type == category, name
    for generic in ("combined", "flip", "misplaced", "defect", "bad", "anomaly", "ko"):
        assert t.choose(generic, "c") == TypeChoice(None, "generic"), generic
    assert t.choose("weird_thing", "c").source == "unknown"


# Every defect folder of MVTec-AD (15 classes) and MPDD (6 classes), as the datasets ship them.
MVTEC_AD_NAMES = {
    "bottle": ["broken_large", "broken_small", "contamination"],
    "cable": ["bent_wire", "cable_swap", "combined", "cut_inner_insulation", "cut_outer_insulation", "missing_cable",
              "missing_wire", "poke_insulation"],
    "capsule": ["crack", "faulty_imprint", "poke", "scratch", "squeeze"],
    "carpet": ["color", "cut", "hole", "metal_contamination", "thread"],
    "grid": ["bent", "broken", "glue", "metal_contamination", "thread"],
    "hazelnut": ["crack", "cut", "hole", "print"],
    "leather": ["color", "cut", "fold", "glue", "poke"],
    "metal_nut": ["bent", "color", "flip", "scratch"],
    "pill": ["color", "combined", "contamination", "crack", "faulty_imprint", "pill_type", "scratch"],
    "screw": ["manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"],
    "tile": ["crack", "glue_strip", "gray_stroke", "oil", "rough"],
    "toothbrush": ["defective"],
    "transistor": ["bent_lead", "cut_lead", "damaged_case", "misplaced"],
    "wood": ["color", "combined", "hole", "liquid", "scratch"],
    "zipper": ["broken_teeth", "combined", "fabric_border", "fabric_interior", "rough", "split_teeth",
               "squeezed_teeth"],
}  # fmt: skip
MPDD_NAMES = {
    "bracket_black": ["hole", "scratches"], "bracket_brown": ["bend_and_parts_mismatch", "parts_mismatch"],
    "bracket_white": ["defective_painting", "scratches"], "connector": ["parts_mismatch"],
    "metal_plate": ["major_rust", "scratches", "total_rust"], "tubes": ["anomalous"],
}  # fmt: skip


def test_every_mvtec_and_mpdd_defect_name_is_in_the_table():
    from iadr1.data.annotate import CATEGORY_NAMES, DEFECT_NAMES

    names = {n for table in (MVTEC_AD_NAMES, MPDD_NAMES) for ns in table.values() for n in ns}
    assert names - set(DEFECT_NAMES) == set()
    assert {v for v in DEFECT_NAMES.values() if v is not None} == set(CATEGORY_NAMES.values())  # all eight used
    assert TypeTable().choose("toothbrush", "defective").type is None  # generic, until a user says otherwise


def test_a_types_file_extends_and_overrides_the_table(tmp_path):
    f = tmp_path / "types.yaml"
    f.write_text(
        "names:\n  rust: stain\n  bottle/contamination: foreign object\n  crack: null\n"
        "classes:\n  candle: Contamination\n  VisA/pcb1: Damage\n  '*': Abrasion\n"
    )
    t = TypeTable.load(f)
    assert t.choose("rust", "plate").type == "Contamination"  # a keyword of the category is accepted
    assert t.choose("contamination", "bottle").type == "Presence of foreign objects"  # CLASS/NAME first
    assert t.choose("contamination", "pill").type == "Contamination"
    assert t.choose("anomaly", "candle").type == "Contamination"
    assert t.choose("anomaly", "pcb1", "VisA/pcb1/Data/Images/Anomaly/0.JPG").type == "Damage"
    assert t.choose("anomaly", "pcb1", "other/pcb1/0.png").type == "Abrasion"  # "*" for the rest
    assert t.choose("crack", "x") == TypeChoice("Abrasion", "class_default")  # made generic
    bad = tmp_path / "bad.yaml"
    bad.write_text("names:\n  rust: corrosion-ish\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: names.rust: 'corrosion-ish' is not one of the defect"):
        TypeTable.load(bad)


# ---------------------------------------------------------------------------------------------------------------------
# Template annotation of the benchmark layouts
# ---------------------------------------------------------------------------------------------------------------------
MVTEC = {
    "bottle": {"broken_small": [0, 4, 8], "contamination": [2], "combined": [6]},
    "transistor": {"bent_lead": [1, 3], "misplaced": [5]},
}


@pytest.fixture
def mvtec(tmp_path) -> tuple[Path, Path]:
    root = make_masked_mvtec(tmp_path / "MVTec", MVTEC)
    return root, meta_of(root, "mvtec", tmp_path / "meta.json")


def test_mvtec_tree_locations_types_and_generic_names(mvtec, tmp_path):
    root, meta = mvtec
    out = tmp_path / "ann" / "annotations.jsonl"
    result = annotate(meta=meta, image_root=root, out=out)
    recs = {r["image"]: r for r in lines(out)}
    assert len(recs) == 2 * 4 + 8  # 2 classes x 4 normal images + 8 defects
    for cls, species in MVTEC.items():
        for specie, cells in species.items():
            for i, cell in enumerate(cells):
                r = recs[f"{cls}/test/{specie}/{i:03d}.png"]
                assert r["location"] == GRID_WORDS[cell]
                assert GRID_WORDS[cell] in r["reasoning"]  # the text names the cell it was told
                assert parse(f"<think>{r['reasoning']}</think><answer>Yes</answer>").reasoning == r["reasoning"]
    assert recs["bottle/test/broken_small/000.png"]["type"] == "Damage"
    assert recs["bottle/test/contamination/000.png"]["type"] == "Contamination"
    assert recs["transistor/test/bent_lead/001.png"]["type"] == "Deformation"
    # Generic names are written without a type, and recorded.
    assert recs["bottle/test/combined/000.png"]["type"] is None
    rep = result.report
    assert rep["problem_counts"] == {"generic_type": 2}
    assert {p["item"] for p in rep["problems"]} == {"bottle/test/combined/000.png", "transistor/test/misplaced/000.png"}
    assert rep["without_type"] == 2 and rep["per_class"]["bottle"] == {"normal": 4, "defective": 5}
    # build-data reads the file: the typed defects and every normal image become records, the two without a type
    # are missing annotations.
    anns, problems = load_annotations(out)
    assert len(anns) == len(recs) and not problems


def test_bad_masks_are_recorded_never_a_crash(mvtec, tmp_path):
    root, meta = mvtec
    gt = root / "bottle" / "ground_truth" / "broken_small"
    (gt / "000_mask.png").unlink()  # missing
    write_image(gt / "001_mask.png", np.zeros((48, 48), np.uint8))  # empty
    write_image(gt / "002_mask.png", disc_mask(24, 24, 4))  # another size than the image
    (root / "transistor" / "ground_truth" / "bent_lead" / "000_mask.png").write_bytes(b"\x89PNG garbage")
    (root / "bottle" / "test" / "good" / "000.png").write_bytes(b"")  # an empty image file
    out = tmp_path / "a.jsonl"
    meta2 = meta_of(root, "mvtec", tmp_path / "meta2.json")  # the missing mask is no longer in the meta
    rep = annotate(meta=meta2, image_root=root, out=out).report
    assert rep["problem_counts"] == {
        "missing_mask": 1, "empty_mask": 1, "mask_size": 1, "unreadable_mask": 1, "empty_image": 1, "generic_type": 2,
    }  # fmt: skip
    written = {r["image"] for r in lines(out)}
    skipped = {p["item"] for p in rep["problems"] if p["kind"] != "generic_type"}
    assert not written & skipped and len(written) == 16 - 5
    assert all(p["detail"] and "\n" not in p["detail"] for p in rep["problems"])
    assert meta.read_text() != meta2.read_text()


def test_mpdd_and_kolektor_layouts(tmp_path):
    mpdd = make_masked_mvtec(tmp_path / "MPDD", {"bracket_black": {"scratches": [3], "hole": [7]},
                                                  "connector": {"parts_mismatch": [4]}})  # fmt: skip
    out = tmp_path / "mpdd.jsonl"
    annotate(meta=meta_of(mpdd, "mpdd", tmp_path / "mpdd.json"), image_root=mpdd, out=out, sheet=0)
    recs = {r["image"]: r for r in lines(out)}
    assert (recs["bracket_black/test/scratches/000.png"]["type"], recs["bracket_black/test/scratches/000.png"]
            ["location"]) == ("Scratch", "left")  # fmt: skip
    assert recs["bracket_black/test/hole/000.png"]["location"] == "bottom"
    assert recs["connector/test/parts_mismatch/000.png"]["type"] is None

    sdd = make_masked_sdd(tmp_path / "SDD", {"Part0": None, "Part1": 8, "Part2": 0})
    types = tmp_path / "types.yaml"
    types.write_text("classes:\n  SDD: Damage\n")  # KolektorSDD's defects are cracks in commutators
    out = tmp_path / "sdd.jsonl"
    rep = annotate(meta=meta_of(sdd, "sdd", tmp_path / "sdd.json"), image_root=sdd, out=out, types=types).report
    recs = {r["image"]: r for r in lines(out)}
    assert recs["kos01/Part1.jpg"]["location"] == "bottom right" and recs["kos01/Part2.jpg"]["location"] == "top left"
    assert recs["kos01/Part1.jpg"]["type"] == "Damage" and recs["kos01/Part1.jpg"]["type_source"] == "class_default"
    assert "location" not in recs["kos01/Part0.jpg"] and rep["problem_counts"] == {}


def test_template_texts_are_seeded_and_varied(mvtec, tmp_path):
    root, meta = mvtec
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    annotate(meta=meta, image_root=root, out=a, sheet=0)
    annotate(meta=meta, image_root=root, out=b, sheet=0)
    annotate(meta=meta, image_root=root, out=c, seed=1, sheet=0)
    assert a.read_bytes() == b.read_bytes()
    ra, rc = lines(a), lines(c)
    assert [r.get("location") for r in ra] == [r.get("location") for r in rc]
    assert sum(x["reasoning"] != y["reasoning"] for x, y in zip(ra, rc, strict=True)) >= len(ra) // 3
    openings = {r["reasoning"].split(".")[0].split(" the ")[0] for r in ra}
    assert len(openings) >= 2, "several phrasings, not one sentence"


def test_resume_skips_done_images_and_refuses_other_settings(mvtec, tmp_path):
    root, meta = mvtec
    out = tmp_path / "a.jsonl"
    annotate(meta=meta, image_root=root, out=out, sheet=0, splits=["train"])
    first = lines(out)
    assert {r["image"].split("/")[1] for r in first} == {"train"}
    rep = annotate(meta=meta, image_root=root, out=out, sheet=0).report  # now every split: only the rest is added
    assert rep["run"]["already_done"] == len(first) and rep["run"]["written"] == 16 - len(first)
    assert lines(out)[: len(first)] == first and len({r["image"] for r in lines(out)}) == 16
    with pytest.raises(ConfigError, match=r"other settings \(seed 0 -> 1\).*--overwrite"):
        annotate(meta=meta, image_root=root, out=out, seed=1)
    annotate(meta=meta, image_root=root, out=out, seed=1, overwrite=True, sheet=0)
    assert len(lines(out)) == 16
    hand = tmp_path / "hand.jsonl"
    hand.write_text('{"image": "x.png", "reasoning": "mine"}\n')
    with pytest.raises(ConfigError, match="not written by `iadr1 annotate`"):
        annotate(meta=meta, image_root=root, out=hand)


def test_report_and_contact_sheet(mvtec, tmp_path):
    root, meta = mvtec
    out = tmp_path / "a.jsonl"
    result = annotate(meta=meta, image_root=root, out=out, sheet=6)
    rep = json.loads(report_path(out).read_text())
    assert rep["complete"] and rep["annotated"] == 16 and rep["sources"] == {"template": 16}
    assert rep["per_type"] == {"Damage": 3, "Deformation": 2, "None": 2, "Contamination": 1}
    assert rep["examples"] and rep["sheet"] == str(sheet_path(out)) == str(result.sheet)
    with Image.open(result.sheet) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400


# ---------------------------------------------------------------------------------------------------------------------
# The teacher, against the local OpenAI-compatible stub
# ---------------------------------------------------------------------------------------------------------------------
def good_reply(body: dict) -> dict:
    """What a careful teacher answers: it reads the facts of the prompt and follows the grammar."""
    text = " ".join(p.get("text", "") for p in body["messages"][-1]["content"] if p.get("type") == "text")
    if "is normal" in text:
        return {"reply": "<think>The bottle looks intact and clean.</think><answer>No</answer>"}
    loc = next((w for w in sorted(GRID_WORDS, key=len, reverse=True) if f"the {w} cell" in text), "top left")
    typ = text.split("Defect type: ")[1].split(".")[0] if "Defect type: " in text else "stain"
    return {"reply": f"<think>A defect at the {loc}.</think><location>{loc}</location><type>{typ}</type>"
                     "<answer>Yes</answer>"}  # fmt: skip


@pytest.fixture
def stub(openai_server):
    return openai_server


def with_teacher(stub, meta: Path, root: Path, out: Path, **kw) -> dict:
    """The report of a teacher run on the stub (the openai backend, as `iadr1 annotate --reasoner model` opens it)."""
    from iadr1.infer.teacher import open_teacher

    cfg = AnnotateConfig(meta=meta, image_root=root, out=out, reasoner="model", model="stub-vlm", backend="openai",
                         base_url=stub.base_url, api_key_env="IADR1_TEST_KEY", concurrency=2, sheet=0, retries=0,
                         **kw)  # fmt: skip
    with open_teacher(cfg) as teacher:
        return annotate(cfg, teacher=teacher).report


def test_check_reply_rules():
    yes = "<think>ok</think><location>{}</location><type>{}</type><answer>Yes</answer>"
    assert check_reply(yes.format("top right", "scratches"), True, "top right", "Scratch").refusal is None
    assert check_reply(yes.format("upper right", "Scratch"), True, "top right", "Scratch").location == "top right"
    assert check_reply(yes.format("top", "Scratch"), True, "top right", "Scratch").refusal == "wrong_location"
    assert check_reply(yes.format("somewhere", "Scratch"), True, None, "Scratch").refusal == "wrong_location"
    assert check_reply(yes.format("top", "hole"), True, "top", "Scratch").refusal == "wrong_type"
    assert check_reply(yes.format("top", "dirt"), True, None, None).type == "Contamination"
    assert check_reply("<think>ok</think><answer>Yes</answer>", True, "top", "Scratch").refusal == "grammar"
    assert check_reply(yes.format("top", "Scratch").replace("Yes", "No"), True, "top", "Scratch").refusal in (
        "wrong_answer",
    )
    assert check_reply("<think>a > b</think><answer>No</answer>", False, None, None).refusal == "bad_reasoning"
    assert check_reply(None, False, None, None).refusal == "no_reply"


def test_teacher_replies_that_pass(stub, mvtec, tmp_path):
    root, meta = mvtec
    stub.responder = good_reply
    out = tmp_path / "t.jsonl"
    rep = with_teacher(stub, meta, root, out)
    recs = {r["image"]: r for r in lines(out)}
    assert len(recs) == 16 and all(r["source"] == "teacher" for r in recs.values())
    assert recs["bottle/test/broken_small/002.png"]["location"] == "bottom right"
    assert recs["bottle/test/broken_small/002.png"]["reasoning"] == "A defect at the bottom right."
    assert rep["teacher"]["acceptance_rate"] == 1.0 and rep["teacher"]["accepted_first_try"] == 16
    # Generic names: the teacher names the type, mapped to its category.
    assert recs["bottle/test/combined/000.png"]["type"] == "Contamination"
    assert recs["bottle/test/combined/000.png"]["type_source"] == "teacher"
    bodies = [r["body"] for r in stub.requests]
    assert all(len([p for p in b["messages"][-1]["content"] if p["type"] == "image_url"]) == 2 for b in bodies)
    everything = out.read_text() + report_path(out).read_text()
    assert SECRET not in everything and all(SECRET not in json.dumps(b) for b in bodies)


def test_teacher_retries_then_falls_back_to_the_template(stub, mvtec, tmp_path):
    root, meta = mvtec

    def first_wrong(body: dict) -> dict:
        text = json.dumps(body)
        if "previous reply was refused" in text:
            return good_reply(body)
        return {"reply": "<answer>Yes</answer>"}  # no reasoning, no tags: refused

    stub.responder = first_wrong
    rep = with_teacher(stub, meta, root, tmp_path / "r.jsonl")
    t = rep["teacher"]
    assert t["accepted"] == 16 and t["accepted_after_retry"] == 16 and t["refusals"] == {"grammar": 16}

    stub.responder = lambda body: {"reply": "The part looks fine to me."}  # no tags
    out = tmp_path / "f.jsonl"
    rep = with_teacher(stub, meta, root, out, teacher_retries=1)
    t = rep["teacher"]
    assert t["accepted"] == 0 and t["template_fallback"] == 16 and t["refusals"] == {"grammar": 32}
    assert all(r["source"] == "template_fallback" and r["teacher"]["attempts"] == 2 for r in lines(out))


def test_teacher_locates_defects_without_masks(stub, mvtec, tmp_path):
    root, _ = mvtec
    for p in (root / "bottle" / "ground_truth" / "broken_small").iterdir():
        p.unlink()
    meta = meta_of(root, "mvtec", tmp_path / "meta2.json")
    stub.responder = good_reply  # no cell in the prompt: answers "top left"
    out = tmp_path / "m.jsonl"
    rep = with_teacher(stub, meta, root, out)
    recs = {r["image"]: r for r in lines(out)}
    r = recs["bottle/test/broken_small/001.png"]
    assert (r["location"], r["location_source"], r["facts"]) == ("top left", "teacher", None)
    assert rep["problem_counts"]["missing_mask"] == 3
    # A teacher that never passes: no template can stand in without a mask, so those three are skipped.
    stub.responder = lambda body: {"reply": "no idea"}
    out = tmp_path / "n.jsonl"
    rep = with_teacher(stub, meta, root, out, teacher_retries=0)
    assert rep["problem_counts"]["teacher_failed"] == 3 and len(lines(out)) == 13


@pytest.mark.e2e
def test_killed_teacher_run_resumes_every_image_exactly_once(stub, mvtec, tmp_path):
    root, meta = mvtec
    out = tmp_path / "k.jsonl"

    def slow(body: dict) -> dict:
        time.sleep(0.15)
        return good_reply(body)

    stub.responder = slow
    args = ["annotate", "--meta", str(meta), "--image-root", str(root), "--out", str(out), "--chunk", "4",
            "--reasoner", "model", "--model", "stub-vlm", "--base-url", stub.base_url, "--api-key-env",
            "IADR1_TEST_KEY", "--concurrency", "1", "--sheet", "0"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "iadr1", *args], env={**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(lines(out))
    assert 5 <= done < 16, done
    stub.responder = good_reply
    rep = with_teacher(stub, meta, root, out, chunk=4)
    images = [r["image"] for r in lines(out)]
    assert len(images) == 16 and len(set(images)) == 16 and rep["run"]["already_done"] == done


# ---------------------------------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iadr1", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_cli_annotate_and_build_data_annotate_template(mvtec, tmp_path):
    root, meta = mvtec
    r = run_cli("annotate", "--meta", str(meta), "--image-root", str(root), "--out", str(tmp_path / "a.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "written 16 now" in r.stdout and "generic_type" in r.stdout
    assert (tmp_path / "a_report.json").is_file() and (tmp_path / "a_sheet.png").is_file()
    r = run_cli("annotate", "--meta", str(meta), "--out", str(tmp_path / "b.jsonl"), "--reasoner", "model")
    assert r.returncode == 1 and "needs --model" in r.stderr
    built = tmp_path / "built"
    r = run_cli("build-data", "--meta", str(meta), "--image-root", str(root), "--annotate", "template", "--out",
                str(built), "--allow-test")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (built / "annotations.jsonl").is_file()
    sft = json.loads((built / "sft_0shot.json").read_text())
    assert len(sft) == 16 - 2  # every image but the two generic defects without a type
    r = run_cli("build-data", "--meta", str(meta), "--annotate", "model", "--out", str(built))
    assert r.returncode == 1 and "iadr1 annotate --reasoner model" in r.stderr


@pytest.mark.train
@pytest.mark.e2e
def test_own_images_folder_to_pa_sft(tiny_model, tmp_path):
    """The path docs/own-images.md walks: a folder of images and masks -> convert -> annotate -> build-data -> a few
    PA-SFT steps on a tiny model, each a command as a user types it."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    base = data / "OWN" / "bracket"
    for i in range(6):
        write_image(base / "train" / "good" / f"{i:03d}.png", (rng.random((64, 64)) * 40 + 100).astype(np.uint8))
    for split_folder, n in (("good", 4), ("scratch", 8)):
        for i in range(n):
            img = (rng.random((64, 64)) * 40 + 100).astype(np.uint8)
            if split_folder == "scratch":
                mask = disc_mask(64, 64, i % 9, radius=0.08)
                img[mask > 0] = 10
                write_image(base / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask)
            write_image(base / "test" / split_folder / f"{i:03d}.png", img)
    steps = [
        ("convert", "--layout", "folder", "--root", str(data), "--dataset", "OWN", "--meta",
         str(tmp_path / "meta.json"), "--test-file", str(tmp_path / "test.json"), "--train-share", "0.5"),
        ("annotate", "--meta", str(tmp_path / "meta.json"), "--image-root", str(data), "--out",
         str(tmp_path / "ann" / "annotations.jsonl")),
        ("build-data", "--meta", str(tmp_path / "meta.json"), "--image-root", str(data), "--annotations",
         str(tmp_path / "ann" / "annotations.jsonl"), "--test-file", str(tmp_path / "test.json"), "--out",
         str(tmp_path / "built"), "--strict"),
        ("sft", "--model", str(tiny_model("qwen2_vl")), "--dataset", str(tmp_path / "built" / "sft_0shot.json"),
         "--image-root", str(data), "--out", str(tmp_path / "sft"), "--max-steps", "6", "--set", "lr=1e-3",
         "--set", "warmup_steps=0", "--set", "batch_size=2", "--set", "grad_accum=1", "--set", "save_steps=100"),
    ]  # fmt: skip
    for args in steps:
        r = subprocess.run([sys.executable, "-m", "iadr1", *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (args[0], r.stdout[-2000:], r.stderr[-2000:])
    anns = {r["image"]: r for r in lines(tmp_path / "ann" / "annotations.jsonl")}
    for i in range(8):
        assert anns[f"OWN/bracket/test/scratch/{i:03d}.png"]["location"] == GRID_WORDS[i % 9]
        assert anns[f"OWN/bracket/test/scratch/{i:03d}.png"]["type"] == "Scratch"
    sft = json.loads((tmp_path / "built" / "sft_0shot.json").read_text())
    texts = [m["content"] for rec in sft for m in rec["messages"] if m["role"] == "assistant"]
    assert len(sft) == 6 + 2 + 4  # train/good, and half of each test folder moved to training by --train-share
    assert any("<location>" in t and "<type>Scratch</type>" in t for t in texts)
    losses = [h["loss"] for h in json.loads((tmp_path / "sft" / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0], losses


@pytest.mark.train
def test_a_local_checkpoint_as_teacher(tiny_model, mvtec, tmp_path):
    """The transformers backend as teacher: a random tiny model cannot follow the grammar, so every reply is
    refused (and counted) and the template stands in; the prompts carry the system text and both images."""
    from iadr1.infer.teacher import open_teacher

    root, meta = mvtec
    out = tmp_path / "local.jsonl"
    cfg = AnnotateConfig(meta=meta, image_root=root, out=out, reasoner="model", model=str(tiny_model("qwen2_vl")),
                         backend="transformers", max_new_tokens=16, teacher_retries=1, splits=["train"], sheet=0,
                         device="cpu")  # fmt: skip
    with open_teacher(cfg) as teacher:
        rep = annotate(cfg, teacher=teacher).report
    recs = lines(out)
    assert len(recs) == 4 and all(r["source"] == "template_fallback" for r in recs)
    assert rep["teacher"]["images"] == 4 and sum(rep["teacher"]["refusals"].values()) == 8
