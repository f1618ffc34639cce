"""The decision score (P(defect) where the reply decides) and operating points (`eval --target-miss`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_eval_load import ours, write_jsonl, write_test_file

from iadr1.cli import main
from iadr1.eval import threshold as TH
from iadr1.infer.base import (
    GenerationOptions,
    Result,
    decision_position,
    decision_side,
    p_defect_from_candidates,
    p_defect_from_steps,
    scores_from_steps,
)
from iadr1.infer.runner import InferConfig, prediction_record
from iadr1.ranking import decision_score, grouped_auroc_aupr, threshold_decision


def lp(p: float) -> float:
    return math.log(p)


# --- where the reply decides -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pieces, expected",
    [
        (["<", "think", ">", "x", "</", "think", ">", "<", "location", ">"], 8),
        (["<think>", "x", "</think>", "<location>", "top"], 3),
        (["<think>x", "</", "think", "><", "answer", ">", "no"], 4),  # "><" merged: the letters come next
        (["<think>x</think>", "\n", "<", "answer", ">"], 3),
        (["<think>x</think><answer>", "no"], 0),  # one token carries the fork: that one
        (["<think>", "still thinking"], None),
        (["Yes"], None),
    ],
)
def test_decision_position(pieces, expected):
    assert decision_position(pieces, "iadr1") == expected


def test_styles_without_a_fork_decide_at_the_answer_word():
    assert decision_position(["<think>x</think>", "<answer>", "A"], "anomaly_r1") == 2
    assert decision_position([" ", "Yes"], "baseline") == 1
    cands = {"Yes": lp(0.3), "No": lp(0.1)}
    assert p_defect_from_candidates(cands, "baseline") == pytest.approx(0.75)


@pytest.mark.parametrize(
    "text, side",
    [("location", 1), ("<location>", 1), ("<loc", 1), (" Loc", 1), ("l", 1), ("answer", 0), ("<ans", 0),
     ("<answer>", 0), ("</", None), ("a.", None), ("the", None), ("type", None), ("\n", None), ("", None)],
)  # fmt: skip
def test_decision_side(text, side):
    assert decision_side(text, "iadr1") == side


def test_p_defect_from_candidates():
    got = p_defect_from_candidates({"location": lp(0.3), "<loc": lp(0.1), "answer": lp(0.2), "\n": lp(0.4)}, "iadr1")
    assert got == pytest.approx(0.4 / 0.6)
    assert p_defect_from_candidates([("answer", lp(0.5))], "iadr1") == 0.0
    assert p_defect_from_candidates({"the": lp(0.9)}, "iadr1") is None


def test_scores_from_steps_read_two_positions():
    pieces = ["<think>", "ok", "</think>", "<", "location", ">", "top left", "</location>", "<type>", "scratch",
              "</type>", "<answer>", "Yes", "</answer>"]  # fmt: skip
    steps = {4: [("location", lp(0.6)), ("answer", lp(0.2))], 12: [("Yes", lp(0.99)), ("No", lp(0.01))]}
    p_yes, p_def = scores_from_steps(pieces, lambda i: steps.get(i, []), "iadr1")
    assert p_yes == pytest.approx(0.99) and p_def == pytest.approx(0.75)
    assert p_defect_from_steps(["<think>", "..."], lambda i: [], "iadr1") is None


def test_transformers_p_defect_is_the_vocabulary_mass_at_the_fork(tiny_model):
    """P(defect) over the whole vocabulary: every token starting the defect tag against every token starting the
    normal one, at the decision position; checked on logits that put known mass on the two tags' tokens."""
    import torch

    from iadr1.infer.transformers_backend import TransformersBackend

    engine = TransformersBackend(tiny_model("qwen2_vl"), GenerationOptions(max_new_tokens=4))
    tok = engine.tokenizer
    reply = "<think>ok</think><location>top left</location><type>scratch</type><answer>yes</answer>"
    ids = tok.encode(reply, add_special_tokens=False)
    pieces = tok.batch_decode([[i] for i in ids])
    pos = decision_position(pieces, "iadr1")
    assert pieces[pos] == "location"
    defect_ids, normal_ids = engine._branch_ids()
    assert ids[pos] in defect_ids and tok.convert_tokens_to_ids("answer") in normal_ids
    vocab = len(tok)
    logits = [torch.full((1, vocab), -1e9) for _ in ids]
    logits[pos][0, ids[pos]] = math.log(0.3)
    logits[pos][0, tok.convert_tokens_to_ids("answer")] = math.log(0.1)
    logits[pos][0, tok.convert_tokens_to_ids(">")] = math.log(0.6)  # not a branch token: left out
    from iadr1.infer.base import answer_position

    at = answer_position(pieces, "iadr1")
    yes_ids, no_ids = engine._yes_no_ids()
    logits[at][0, yes_ids[0]] = math.log(0.09)
    logits[at][0, no_ids[0]] = math.log(0.01)
    p_yes, p_def = engine._scores(ids, tuple(logits), 0)
    assert p_def == pytest.approx(0.75, rel=1e-5)
    assert p_yes == pytest.approx(0.9, rel=1e-5) and at > pos  # read at its own position, the answer word


def test_prediction_records_the_call_at_a_threshold():
    cfg = InferConfig(model="m", test_file="t", image_root="r", out="o", threshold=0.5)
    normal = "<think>x</think><answer>no</answer>"
    rec, _ = prediction_record("a.png", cfg, Result(raw=normal, p_yes=0.01, p_defect=0.7))
    assert (rec["answer"], rec["p_defect"], rec["threshold"], rec["decision"]) == ("no", 0.7, 0.5, "yes")
    rec, _ = prediction_record("a.png", cfg, Result(raw="No", p_yes=0.3))
    assert rec["decision"] == "no"  # no P(defect): P(yes) decides
    rec, _ = prediction_record("a.png", cfg, Result(raw="hmm"))
    assert rec["decision"] is None
    rec, _ = prediction_record("a.png", cfg.model_copy(update={"threshold": None}), Result(raw="No", p_yes=0.9))
    assert rec["threshold"] is None and rec["decision"] is None
    assert decision_score(None, 0.2) == 0.2 and decision_score(0.6, 0.2) == 0.6 and decision_score(None, None) is None
    assert threshold_decision(0.5, 0.5) == "yes" and threshold_decision(0.49, 0.5) == "no"
    # Six significant digits: a confident model's tail (where a 1% Miss threshold lies) keeps its order.
    rec, _ = prediction_record("a.png", cfg, Result(raw=normal, p_yes=2.3456789e-7, p_defect=1.23456789e-7))
    assert (rec["p_yes"], rec["p_defect"]) == (2.34568e-07, 1.23457e-07)


def test_a_threshold_is_a_run_setting():
    from iadr1.infer.manifest import differences, run_settings

    base = InferConfig(model="m", test_file="t", image_root="r", out="o")
    assert "threshold" not in run_settings(base, "")  # folders written before thresholds resume as before
    with_t = run_settings(base.model_copy(update={"threshold": 0.3}), "")
    assert differences(run_settings(base, ""), with_t) == ["threshold not recorded here, 0.3 in this run"]


# --- choosing the threshold ------------------------------------------------------------------------------------------
def test_threshold_for_miss_by_hand():
    a = np.arange(1, 11) / 10  # 0.1 .. 1.0
    assert TH.threshold_for_miss(a, 0.0) == pytest.approx(0.1)
    assert TH.threshold_for_miss(a, 0.1) == pytest.approx(0.2)  # one of ten may score below T
    assert TH.threshold_for_miss(a, 0.25) == pytest.approx(0.3)
    assert TH.rates_at(a, np.array([0.05, 0.25, 0.9]), 0.3) == (pytest.approx(20.0), pytest.approx(100 / 3))
    # Defects without a score are missed at every T: two of ten unscored leave no T for a 10% target.
    a2 = np.r_[np.full(2, -np.inf), a[2:]]
    assert TH.threshold_for_miss(a2, 0.1) is None
    assert TH.threshold_for_miss(a2, 0.2) == pytest.approx(0.3)
    assert TH.threshold_for_miss(np.zeros(0), 0.1) is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0, float("nan")]), min_size=1, max_size=40),
    st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 0.5]),
)
def test_threshold_is_the_highest_that_meets_the_target(values, target):
    """Against brute force over every candidate threshold: the chosen T meets the target, a higher one does not."""
    a, _ = TH._prepared(np.array(values), np.ones(len(values), bool))
    t = TH.threshold_for_miss(a, target)
    candidates = sorted({v for v in a if np.isfinite(v)} | {2.0})
    ok = [c for c in candidates if (a < c).mean() <= target + 1e-12]
    if not ok:
        assert t is None
    else:
        best = max(ok)
        assert (math.isinf(t) and best == 2.0) or t == pytest.approx(best)


def test_bootstrap_helpers_agree_with_a_plain_loop():
    rng = np.random.default_rng(3)
    a = np.r_[rng.uniform(0.2, 1, 60).round(2), -np.inf]
    n = np.r_[rng.uniform(0, 0.8, 80).round(2), np.inf]
    ua, ca = TH._resample_counts(a, 50, np.random.default_rng(1))
    un, cn = TH._resample_counts(n, 50, np.random.default_rng(2))
    ts = TH._boot_thresholds(ua, ca, 0.05)
    miss = TH._boot_rates(ua, ca, ts, below_is_wrong=True)
    over = TH._boot_rates(un, cn, ts, below_is_wrong=False)
    for b in range(50):
        sa, sn = np.repeat(ua, ca[b]), np.repeat(un, cn[b])
        t = TH.threshold_for_miss(sa, 0.05)
        if t is None:  # this resample drew too many unscored defects: no threshold reaches the target
            assert np.isnan(ts[b]) and np.isnan(miss[b]) and np.isnan(over[b])
            continue
        assert ts[b] == t
        assert (miss[b], over[b]) == pytest.approx(TH.rates_at(sa, sn, t))
    assert 0 < np.isnan(ts).sum() < 50  # both kinds of replicate were met


def test_operating_point_intervals_and_calibration():
    rng = np.random.default_rng(0)
    score = np.r_[rng.beta(5, 2, 300), rng.beta(2, 5, 300)]
    anomalous = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    p = TH.operating_point(score, anomalous, 0.05, n_boot=400, rng=np.random.default_rng(1))
    assert p["chosen_on"] == "this data" and p["reachable"] and p["miss"] <= 5.0
    assert p["threshold"] == pytest.approx(np.sort(score[:300])[15])
    lo, hi = p["ci95"]["overkill"]
    assert lo < p["overkill"] < hi and hi - lo > 2  # the choice of T costs width
    again = TH.operating_point(score, anomalous, 0.05, n_boot=400, rng=np.random.default_rng(1))
    assert again == p  # seeded
    # Chosen on a calibration set drawn from the same law: its own T, the Miss measured here may exceed the target.
    cal = (np.r_[rng.beta(5, 2, 300), rng.beta(2, 5, 300)], anomalous)
    q = TH.operating_point(score, anomalous, 0.05, calibration=cal, n_boot=400, rng=np.random.default_rng(1))
    assert q["chosen_on"] == "calibration" and q["n_calibration"] == 600
    assert q["threshold"] == pytest.approx(np.sort(cal[0][:300])[15])
    assert q["miss"] == pytest.approx((score[:300] < q["threshold"]).mean() * 100)
    assert q["ci95"]["miss"][0] <= q["miss"] <= q["ci95"]["miss"][1]


def test_roc_points_give_the_auroc():
    from iadr1.eval.report import roc_points

    rng = np.random.default_rng(5)
    anomalous = rng.random(200) < 0.4
    score = np.where(anomalous, rng.random(200) * 0.7 + 0.3, rng.random(200) * 0.7).round(2)
    score[::17] = np.nan
    fpr, tpr = roc_points(anomalous, score)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids: ties count one half
    assert auc == pytest.approx(grouped_auroc_aupr(np.zeros(200, int), 1, anomalous, score)[0][0])


# --- eval --target-miss ----------------------------------------------------------------------------------------------
def _scored_run(folder: Path, name: str, seed: int, n: int = 80, with_p_defect: bool = True) -> tuple[Path, Path]:
    """A test file of n defective and n normal images of two datasets, and predictions with scores."""
    rng = np.random.default_rng(seed)
    labels, rows = {}, []
    for i in range(2 * n):
        ds = "AA" if i % 2 else "BB"
        bad = i < n
        key = f"{ds}/part/test/{'bad' if bad else 'good'}/{name}{i}.png"
        labels[key] = bad
        s = float(np.clip(rng.normal(0.7 if bad else 0.3, 0.2), 0, 1).round(4))
        extra = {"p_defect": s, "p_yes": float(s > 0.5)} if with_p_defect else {"p_yes": s}
        rows.append(ours(key, "A" if s > 0.5 else "B", **extra))
    folder.mkdir(parents=True, exist_ok=True)
    return write_test_file(folder / f"test_{name}_format.json", labels), write_jsonl(folder / f"{name}.jsonl", rows)


def _expected_t(pred: Path, test: Path, target: float, dataset: str | None = None) -> float:
    labels = {k: v["conversation"][0]["Answer"] == "A" for k, v in json.loads(test.read_text()).items()}
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    a = sorted(
        r.get("p_defect", r["p_yes"])
        for r in rows
        if labels[r["image"]] and (dataset is None or r["image"].startswith(dataset))
    )
    return a[int(math.floor(target * len(a) + 1e-9))]


def test_eval_target_miss_end_to_end(tmp_path, capsys):
    test, pred = _scored_run(tmp_path, "run", seed=0)
    out = tmp_path / "ev"
    main(["eval", "-t", str(test), "-p", str(pred), "-o", str(out), "--bootstrap", "200",
          "--target-miss", "0.05", "--target-miss", "0.2"])  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    op = m["operating_points"]
    assert [p["target_miss"] for p in op["overall"]] == [0.05, 0.2]
    assert op["overall"][0]["threshold"] == pytest.approx(_expected_t(pred, test, 0.05))
    assert op["datasets"]["AA"][1]["threshold"] == pytest.approx(_expected_t(pred, test, 0.2, "AA"))
    assert all(p["miss"] <= p["target_miss"] * 100 for pts in [op["overall"], *op["datasets"].values()] for p in pts)
    assert op["overall"][0]["overkill"] > op["overall"][1]["overkill"]  # missing fewer costs more false alarms
    assert op["score"] == {"p_defect": 160, "p_yes": 0, "none": 0}
    assert op["overall"][0]["chosen_on"] == "this data" and m["run"]["target_miss"] == [0.05, 0.2]
    printed = " ".join(capsys.readouterr().out.split())
    assert "operating points" in printed and "T chosen on the data it is reported on" in printed
    page = (out / "report.html").read_text()
    assert 'id="operating"' in page and "chosen on the data it is reported on" in page
    assert 'alt="roc"' in page and 'alt="threshold"' in page
    for name in ("roc.png", "threshold.png"):
        from PIL import Image

        with Image.open(out / name) as im:
            assert im.size[0] > 400 and len(set(im.convert("L").getdata())) > 10


def test_eval_target_miss_calibrated_on_a_validation_set(tmp_path, capsys):
    test, pred = _scored_run(tmp_path / "test", "run", seed=0)
    val_test, val_pred = _scored_run(tmp_path / "val", "val", seed=1)
    out = tmp_path / "ev"
    main(["eval", "-t", str(test), "-p", str(pred), "-o", str(out), "--bootstrap", "100", "--target-miss", "0.1",
          "--calibrate-on", str(val_pred), "--calibrate-test-file", str(val_test)])  # fmt: skip
    op = json.loads((out / "metrics.json").read_text())["operating_points"]
    p = op["overall"][0]
    assert p["chosen_on"] == "calibration" and p["n_calibration"] == 160
    assert p["threshold"] == pytest.approx(_expected_t(val_pred, val_test, 0.1))
    assert p["threshold"] != pytest.approx(_expected_t(pred, test, 0.1))
    assert "T chosen on the calibration set" in " ".join(capsys.readouterr().out.split())
    assert "chosen on the calibration set" in (out / "report.html").read_text()


def test_old_prediction_files_are_thresholded_on_p_yes(tmp_path):
    test, pred = _scored_run(tmp_path, "old", seed=2, with_p_defect=False)
    out = tmp_path / "ev"
    main(["eval", "-t", str(test), "-p", str(pred), "-o", str(out), "--bootstrap", "0", "--target-miss", "0.1"])
    op = json.loads((out / "metrics.json").read_text())["operating_points"]
    assert op["score"] == {"p_defect": 0, "p_yes": 160, "none": 0}
    assert op["overall"][0]["threshold"] == pytest.approx(_expected_t(pred, test, 0.1))


def test_eval_operating_point_options_are_checked(tmp_path, capsys):
    test, pred = _scored_run(tmp_path, "run", seed=0, n=5)
    base = ["eval", "-t", str(test), "-p", str(pred), "-o", str(tmp_path / "ev"), "--bootstrap", "0"]
    other, _ = _scored_run(tmp_path / "other", "zz", seed=1, n=5)
    for extra, message in [
        (["--target-miss", "1.5"], "--target-miss 1.5: a fraction in [0, 1)"),
        (["--calibrate-on", str(pred)], "--calibrate-on chooses the --target-miss thresholds"),
        (["--target-miss", "0.1", "--calibrate-test-file", str(other)], "give --calibrate-on too"),
        (["--target-miss", "0.1", "--calibrate-on", str(pred), "--calibrate-test-file", str(other)],
         "none of its predictions names an image"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main([*base, *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and message in " ".join(err.split()), err
