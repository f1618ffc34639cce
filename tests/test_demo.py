"""`iadr1 demo`, shortened (the QUICK preset): the pipeline runs end to end, and each stage really learns.

The full-size learning proof (the bar of issues 7 and 14: balanced accuracy >= 90 after PA-SFT, type and location
accuracy, SC-GRPO's interpretation gain, consistency >= 95, the wall time) is `benchmarks/bench_demo.py`; this test
asserts, with margin, what the shortened run reaches (measured, docs/demo.md).
The demo is a composition of the library: the `demo` training recipe, eval's writer, progress through callbacks.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

import iadr1.demo as demo_module
from iadr1.cli import main
from iadr1.demo import (
    QUICK,
    STAGES,
    DemoConfig,
    evaluate_stage,
    interpretation_gain,
    per_defect_accuracy,
    run_demo,
    short_reasoning,
    summary_rows,
    training_config,
    write_report,
)
from iadr1.errors import ConfigError
from iadr1.train.config import GRPORunConfig, SFTRunConfig, load_config

pytestmark = pytest.mark.e2e

REQUIRED = {"model": "m", "dataset": "d.json", "output_dir": "o"}
MIN_QUICK_SFT_BA = 70.0


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _without_timings(obj: Any) -> Any:
    """`obj` without the wall-clock figures (keys naming seconds), which differ between runs."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list, list]:
    out = tmp_path_factory.mktemp("demo") / "out"
    progress: list[tuple[str, int, int | None, str]] = []
    messages: list[str] = []
    report = run_demo(
        DemoConfig(out=out, **QUICK),
        on_progress=lambda *call: progress.append(call),
        on_message=messages.append,
    )
    return out, report, progress, messages


def test_report_files_and_shape(quick_demo: tuple[Path, dict, list, list]) -> None:
    out, report, _, _ = quick_demo
    on_disk = json.loads((out / "report.json").read_text())
    assert list(on_disk["stages"]) == list(STAGES)
    for stage in STAGES:
        m = on_disk["stages"][stage]
        for key in ("balanced_accuracy", "consistency_rate", "f1", "seconds"):
            assert key in m, (stage, key)
        assert m["seconds"] > 0
        assert set(m["per_defect_accuracy"]) >= {"good"}
        assert m["samples"] and all("output" in s for s in m["samples"])
        # The layout runs are compared by, and eval's own outputs beside the predictions (iadr1.eval.report).
        assert (out / f"eval_{stage}" / "predictions.jsonl").is_file()
        metrics = json.loads((out / f"eval_{stage}" / "metrics.json").read_text())["datasets"]["SYNTH"]
        assert metrics["balanced_accuracy"] == m["balanced_accuracy"] and metrics["f1"] == m["f1"]
        assert (out / f"eval_{stage}" / "accuracy.csv").read_text().startswith(",Anomaly Detection,Average\n")
        assert "Misjudged images" in (out / f"eval_{stage}" / "report.html").read_text()
    assert (out / "data" / "annotations.jsonl").is_file()
    md = (out / "report.md").read_text()
    assert "| Balanced accuracy |" in md and "## Accuracy per defect type" in md and "curves.png" in md
    assert "eval_sft/report.html" in md
    assert (out / "curves.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "<table>" in html and '<img src="curves.png"' in html


def test_training_runs_the_demo_recipe(quick_demo: tuple[Path, dict, list, list]) -> None:
    out, report, _, _ = quick_demo
    sft = load_config(SFTRunConfig, recipe="demo", overrides=REQUIRED)
    grpo = load_config(GRPORunConfig, recipe="demo", overrides=REQUIRED)
    ran_sft, ran_grpo = report["training"]["sft"], report["training"]["grpo"]
    assert (ran_sft["lr"], ran_sft["batch_size"], ran_sft["warmup_steps"]) == (sft.lr, sft.batch_size, 10)
    assert (ran_grpo["lr"], ran_grpo["num_generations"], ran_grpo["beta"]) == (grpo.lr, 8, 0.04)
    assert (ran_grpo["max_steps"], ran_grpo["batch_size"]) == (2, 8)  # QUICK's overrides of the recipe
    assert ran_sft["output_dir"] == str(out / "sft") and ran_sft["seed"] == 0
    assert Path(report["models"]["sft"], "iadr1_config.yaml").is_file()


def test_progress_goes_through_callbacks(quick_demo: tuple[Path, dict, list, list]) -> None:
    _, report, progress, messages = quick_demo
    last = {task: (done, total) for task, done, total, _ in progress}
    assert last["iadr1 demo"] == (5, 5)
    assert last["drawing images"] == (2080, 2080)  # 2000 train + 64 test + 16 templates
    assert last["vision warm-up"] == (4, 4)
    assert last["PA-SFT"] == (250, 250) and last["SC-GRPO"] == (2, 2)
    assert all(last[f"eval {s}"] == (64, 64) for s in STAGES)
    assert any(info.startswith("loss ") for task, _, _, info in progress if task == "PA-SFT")
    assert [m.split(":")[0] for m in messages if m.split(":")[0] in STAGES] == list(STAGES)
    # The core draws nothing (the CLI passes the drawing callbacks: iadr1/cli/_progress.py).
    source = Path(demo_module.__file__).read_text()
    assert "from rich" not in source and "import rich" not in source


def test_warm_up_teaches_the_tower_to_see(quick_demo: tuple[Path, dict, list, list]) -> None:
    out, report, _, _ = quick_demo
    hist = report["vision_warmup"]["history"]
    before, after = hist[0]["held_out"], hist[-1]["held_out"]
    assert before["auroc"] < 70, hist  # the random tower: chance
    assert after["auroc"] >= 85, hist  # measured 95
    assert "## Vision warm-up" in (out / "report.md").read_text()


def test_warm_up_teaches_what_and_where(quick_demo: tuple[Path, dict, list, list]) -> None:
    warm = quick_demo[1]["vision_warmup"]
    assert quick_demo[1]["config"]["family"] == "qwen3_vl"
    assert warm["kinds"] == sorted(DemoConfig().defects)
    after = warm["history"][-1]["held_out"]
    # Chance: 1/6 for the kind, about 1/9 for the cell. Measured (the quick run, seed 0): 53.1 and 97.6.
    assert after["kind_accuracy"] >= 40, after
    assert after["position_accuracy"] >= 90, after


def test_interpretation_gain_is_the_paired_difference(quick_demo: tuple[Path, dict, list, list]) -> None:
    out, report, _, messages = quick_demo
    sft, grpo = report["stages"]["sft"], report["stages"]["grpo"]
    gain = report["interpretation_gain"]
    mean = {s: (m["type_accuracy"] + m["location_accuracy"]) / 2 for s, m in (("sft", sft), ("grpo", grpo))}
    assert gain["before"] == pytest.approx(mean["sft"], abs=0.01)
    assert gain["gain"] == pytest.approx(mean["grpo"] - mean["sft"], abs=0.02)
    assert gain["type_gain"] == pytest.approx(grpo["type_accuracy"] - sft["type_accuracy"], abs=0.01)
    assert any(m.startswith("SC-GRPO over PA-SFT: mean of type and location accuracy") for m in messages)
    assert "Interpretation (the mean of type and location accuracy" in (out / "report.md").read_text()
    root = Path(report["data"]["root"])
    args = (root / "test_SYNTH_format.json", root / "annotations.jsonl")
    # From the files, as a user compares two runs: the same figures as the demo's own (from its scoring).
    assert interpretation_gain(*args, *(out / f"eval_{s}" / "predictions.jsonl" for s in ("sft", "grpo"))) == gain
    same = interpretation_gain(*args, out / "eval_sft" / "predictions.jsonl", out / "eval_sft" / "predictions.jsonl")
    assert same["gain"] == 0 and same["standard_error"] == 0
    # Against the untrained model (nothing judged: no defect found) there is no figure, not a made-up one.
    untrained = out / "eval_untrained" / "predictions.jsonl"
    none = interpretation_gain(*args, untrained, out / "eval_sft" / "predictions.jsonl")
    assert none["before"] is None and none["gain"] is None


def test_sft_learns_grammar_and_decision(quick_demo: tuple[Path, dict, list, list]) -> None:
    rows = summary_rows(quick_demo[1])
    untrained, sft = rows["untrained"], rows["sft"]
    # A random language model writes no <answer>: nothing is consistent, everything unanswered.
    assert untrained["consistency_rate"] < 5
    assert untrained["balanced_accuracy"] < 20
    # PA-SFT teaches the output grammar on held-out images ...
    assert sft["consistency_rate"] >= 95, sft
    assert sft["unanswered_rate"] <= 5, sft
    # ... and the decision: a constant answer would score 50. Measured 81.25 on 64 images; 70 leaves room for a
    # machine whose float sums differ.
    assert sft["balanced_accuracy"] >= MIN_QUICK_SFT_BA, rows
    per_defect = quick_demo[1]["stages"]["sft"]["per_defect_accuracy"]
    assert per_defect["good"] >= 80 and sum(v >= 50 for k, v in per_defect.items() if k != "good") >= 3, per_defect


def test_grpo_moves_parameters_and_keeps_grammar(quick_demo: tuple[Path, dict, list, list]) -> None:
    out, report, _, _ = quick_demo
    sft_w, grpo_w = _weights(Path(report["models"]["sft"])), _weights(Path(report["models"]["grpo"]))
    moved = [k for k in sft_w if not (sft_w[k] == grpo_w[k]).all()]
    assert moved, "SC-GRPO changed no parameter"
    logs = json.loads((out / "grpo" / "log_history.json").read_text())
    assert any(x.get("grad_norm", 0) > 0 for x in logs)
    rows = summary_rows(report)
    assert rows["grpo"]["consistency_rate"] >= 95, rows
    # Two SC-GRPO steps at lr 5e-5 barely move the decision (the full demo's bar is SFT - 2).
    assert rows["grpo"]["balanced_accuracy"] >= rows["sft"]["balanced_accuracy"] - 5, rows


def test_write_report_is_reproducible(quick_demo: tuple[Path, dict, list, list], tmp_path: Path) -> None:
    out, report, _, _ = quick_demo
    # The same report written again: the same files, whatever folder they go to.
    paths = write_report(report, tmp_path / "again")
    assert json.loads(paths["json"].read_text()) == json.loads((out / "report.json").read_text())
    for kind in ("md", "html"):
        assert paths[kind].read_text() == (out / paths[kind].name).read_text(), kind
    # The same model scored again: the same stage figures, timings excepted.
    cfg = DemoConfig(out=tmp_path, **QUICK)
    root = Path(report["data"]["root"])
    ds = SimpleNamespace(
        test_file=root / "test_SYNTH_format.json",
        image_root=root / "images",
        annotations=root / "annotations.jsonl",
        counts=report["data"]["counts"],
    )
    keys = [s["image"] for s in report["stages"]["sft"]["samples"]]
    again = evaluate_stage("sft", Path(report["models"]["sft"]), cfg, ds, keys)  # type: ignore[arg-type]
    stage = {k: v for k, v in report["stages"]["sft"].items() if k not in ("train_seconds", "seconds")}
    assert _without_timings(again) == _without_timings(stage)
    assert (tmp_path / "eval_sft" / "predictions.jsonl").read_bytes() != b""


def test_cli_refuses_used_folder(quick_demo: tuple[Path, dict, list, list], capsys: pytest.CaptureFixture[str]) -> None:
    out = quick_demo[0]
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(out)])
    assert e.value.code == 1
    assert "earlier demo" in capsys.readouterr().err


# --- without a demo run --------------------------------------------------------------------------------------------


def test_demo_family_must_be_a_tiny_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert DemoConfig(family="qwen2_vl").family == "qwen2_vl"
    assert DemoConfig(family="internvl").family == "internvl"
    with pytest.raises(SystemExit) as e:  # refused before any image is drawn
        main(["demo", "--out", str(tmp_path / "x"), "--family", "internvl_chat"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "family must be one of qwen2_vl, qwen2_5_vl, qwen3_vl" in err and "internvl;" in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.train
@pytest.mark.e2e
def test_demo_runs_end_to_end_with_internvl(tmp_path: Path) -> None:
    """InternVL (no patch grid for the warm-up): the demo skips the warm-up, says so, and runs every stage."""
    messages: list[str] = []
    tiny = {"n_train": 160, "n_test": 16, "hidden_size": 128, "num_layers": 2, "vocab_size": 800, "samples": 2,
            "grpo": {"max_steps": 1, "batch_size": 8}, "sft": {"max_steps": 4}}  # fmt: skip
    report = run_demo(DemoConfig(out=tmp_path / "out", family="internvl", **tiny), on_message=messages.append)
    assert set(report["stages"]) == {"untrained", "sft", "grpo"}
    assert any(m.startswith("vision warm-up: skipped") for m in messages)
    assert (tmp_path / "out" / "eval_grpo" / "predictions.jsonl").is_file()
    assert json.loads((tmp_path / "out" / "model_untrained" / "config.json").read_text())["model_type"] == "internvl"


def test_cli_rejects_unknown_defect_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "x"), "--defects", "crack,rust"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "--defects" in err and "rust" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_recipe_demo_is_what_the_demo_trains_with(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = DemoConfig()
    for stage, cls in (("sft", SFTRunConfig), ("grpo", GRPORunConfig)):
        recipe = load_config(cls, recipe="demo", overrides=REQUIRED).model_dump()
        demo = training_config(stage, cfg, "m", "d.json", "img").model_dump()  # type: ignore[arg-type]
        # What the demo sets itself: paths, its seed, one use of the folder, no checkpoints, no tqdm bars.
        own = {"model", "dataset", "image_root", "output_dir", "seed", "resume", "save_steps", "trl_args"}
        assert {k for k in recipe if recipe[k] != demo[k]} <= own, stage
        assert recipe["max_pixels"] == cfg.max_pixels  # one image size for warm-up, training and inference
    assert training_config("grpo", cfg, "m", "d.json", "img").vllm == "off"  # the YAML `off` is not False
    # DemoConfig.grpo's values are explicit: None is a value (keep every checkpoint), the demo's paths still win
    user = DemoConfig(grpo={"save_total_limit": None, "max_steps": 7, "seed": 3})
    run = training_config("grpo", user, "m", "d.json", "img")
    assert run.save_total_limit is None and run.max_steps == 7 and run.seed == 3
    assert run.output_dir == user.out / "grpo" and run.save_steps == 10**6
    main(
        [
            "sft",
            "--recipe",
            "demo",
            "--model",
            "m",
            "--dataset",
            "d.json",
            "--output-dir",
            str(tmp_path),
            "--print-config",
        ]
    )
    printed = capsys.readouterr().out
    assert "lr: 0.001" in printed and "batch_size: 8" in printed


def test_training_options_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="max_pixels: set by the demo"):
        DemoConfig(sft={"max_pixels": 4096})
    with pytest.raises(ConfigError, match="lr"):
        run_demo(DemoConfig(out=tmp_path / "out", sft={"lr": "fast"}))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("image", "answer", "expected"),
    [
        (
            "SYNTH/gravel/train/hole/0003.png",
            "<think>Long text.</think><location>top left</location><type>Hole</type><answer>Yes</answer>",
            "<think>Gravel: hole at the top left.</think><location>top left</location><type>Hole</type>"
            "<answer>Yes</answer>",
        ),
        (
            "SYNTH/coins/train/stain/0007.png",
            "<think>x</think><location>center</location><type>Contamination</type><answer>Yes</answer>",
            "<think>Coin: contamination in the center.</think><location>center</location><type>Contamination</type>"
            "<answer>Yes</answer>",
        ),
        ("SYNTH/brick/train/good/0001.png", "<think>x</think><answer>No</answer>", None),
    ],
)
def test_short_reasoning_puts_the_verdict_first(image: str, answer: str, expected: str | None) -> None:
    from iadr1.answers import parse

    short = short_reasoning(image, answer)
    assert short == (expected or "<think>Brick wall: no defect.</think><answer>No</answer>")
    assert parse(short).well_formed and parse(short).answer == parse(answer).answer


def test_per_defect_accuracy_counts_each_kind(tmp_path: Path) -> None:
    """The demo's per-defect figures are eval's per-specie metric: scored here from real files."""
    from test_eval_load import ours, write_jsonl, write_test_file

    from iadr1.eval import evaluate

    labels = {"S/c/test/good/0.png": False, "S/c/test/good/1.png": False, "S/c/test/hole/2.png": True,
              "S/c/test/hole/3.png": True}  # fmt: skip
    test = write_test_file(tmp_path / "t.json", labels)
    letters = ["B", "A", "A", "E"]  # right, wrong, right, unanswered
    preds = write_jsonl(tmp_path / "p.jsonl", [ours(k, x) for k, x in zip(labels, letters, strict=True)])
    result = evaluate([test], [preds], n_boot=0)
    assert per_defect_accuracy(result) == {"good": 50.0, "hole": 50.0}


def test_progress_bars_draw_one_bar_per_task() -> None:
    from rich.console import Console

    from iadr1.cli._progress import ProgressBars

    buf = io.StringIO()
    with ProgressBars(Console(file=buf, width=100)) as on_progress:
        on_progress("checking images", 3, 10)  # build_data's callbacks: no info
        on_progress("PA-SFT", 5, 5, "loss 0.123")
        on_progress("checking images", 10, 10)
    text = buf.getvalue()
    assert "checking images" in text and "10/10" in text and "PA-SFT" in text and "loss 0.123" in text


def test_cli_reads_a_config_file_and_set_options(monkeypatch, tmp_path: Path) -> None:
    """`iadr1 demo --config FILE --set K=V` goes through iadr1.config, the one config reader; flags win."""
    import iadr1.demo as demo_module

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(demo_module, "run_demo", fake)
    (tmp_path / "demo.yaml").write_text("n_test: 40\nwarmup-epochs: 1\nseed: 3\n")
    with pytest.raises(Stop):
        main(["demo", "--config", str(tmp_path / "demo.yaml"), "--set", "n_test=60", "--seed", "5"])
    cfg = seen["cfg"]
    assert (cfg.n_test, cfg.warmup_epochs, cfg.seed, cfg.out) == (60, 1, 5, Path("demo_out"))
    with pytest.raises(SystemExit):
        main(["demo", "--set", "n_tset=60"])
    # training overrides merge key by key with the preset's (QUICK keeps its 2 SC-GRPO steps)
    with pytest.raises(Stop):
        main(["demo", "--quick", "--set", "grpo={lr: 1.0e-4}"])
    assert seen["cfg"].grpo == {**QUICK["grpo"], "lr": 1e-4}
    (tmp_path / "empty.yaml").write_text("grpo:\n")
    with pytest.raises(Stop):
        main(["demo", "--config", str(tmp_path / "empty.yaml"), "--grpo-steps", "3"])
    assert seen["cfg"].grpo == {"max_steps": 3}
