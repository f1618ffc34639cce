"""Resume restores the run exactly, half-written checkpoints are skipped, and runs that can learn nothing say so.

The exactness tests compare weights, not step counts: a run killed after its step-8 checkpoint and started again
with the same command ends with the weights of the uninterrupted 12-step run (same schedule), and logs the same
losses after the resume point.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import EVEN_TOKENS_REWARD, grpo_config, history, sft_config, weights, write_dataset

from iadr1.errors import ConfigError, DataError
from iadr1.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.train


class Killed(Exception):
    """Stands in for SIGKILL: the run stops between steps, after a checkpoint was written."""


def _kill_after(step: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed

    return Kill()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("resume-data"), n=4)
    (root / "rewards.py").write_text(EVEN_TOKENS_REWARD)
    return root


def _losses(out: Path, after: int = 0) -> list[float]:
    return [h["loss"] for h in history(out) if "loss" in h and h["step"] > after]


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


RUNS = {
    # 4 records in batches of 2: 2 steps an epoch, so the resume point (8) follows an epoch boundary
    "sft-full": dict(stage="sft"),
    "sft-lora": dict(stage="sft", lora=True, lora_r=4),
    # 2 prompts x G=4 per step; sampling, the KL reference and the prompt order must all come back
    "grpo-full": dict(stage="grpo", batch_size=8, lr=1e-3),
}


def _config(run: str, base: Path, data: Path, out: Path):
    kw = dict(RUNS[run])
    stage = kw.pop("stage")
    if stage == "sft":
        return stage, sft_config(base, data, out, max_steps=12, save_steps=4, **kw)
    return stage, grpo_config(base, data, out, f"{data / 'rewards.py'}:even_tokens", max_steps=12, save_steps=4, **kw)


def _train(stage: str, cfg, callbacks=()):
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    return (run_sft if stage == "sft" else run_grpo)(cfg, callbacks=list(callbacks))


@pytest.mark.parametrize("run", list(RUNS))
def test_a_killed_run_resumes_to_the_same_weights(run, tiny_model_factory, data, tmp_path, caplog):
    base = tiny_model_factory("qwen2_vl")
    stage, cfg = _config(run, base, data, tmp_path / "whole")
    whole = _train(stage, cfg)

    stage, cfg = _config(run, base, data, tmp_path / "killed")
    with pytest.raises(Killed):
        _train(stage, cfg, [_kill_after(9)])
    assert (tmp_path / "killed" / "checkpoint-8").is_dir()
    shutil.rmtree(tmp_path / "killed" / "checkpoint-8" / ".." / "checkpoint-12", ignore_errors=True)
    with caplog.at_level(logging.WARNING):
        resumed = _train(stage, cfg)  # the same command again

    assert _max_diff(whole, resumed) < 1e-4
    np.testing.assert_allclose(_losses(resumed, after=8), _losses(whole, after=8), rtol=1e-5, atol=1e-7)
    assert len(_losses(resumed, after=8)) == 4
    assert not [r for r in caplog.records if "missing" in r.getMessage() or "unexpected" in r.getMessage()]


def test_the_weights_at_the_resume_point_are_the_checkpoints(tiny_model_factory, data, tmp_path):
    """Before the fix the Trainer's resume matched no key and kept the input model's weights."""
    from transformers.core_model_loading import revert_weight_conversion

    import iadr1.train.common as common

    base = tiny_model_factory("qwen2_vl")
    stage, cfg = _config("sft-full", base, data, tmp_path / "out")
    with pytest.raises(Killed):
        _train(stage, cfg, [_kill_after(5)])
    saved = weights(tmp_path / "out" / "checkpoint-4")

    from transformers import TrainerCallback

    seen = {}

    class Peek(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if not seen:
                seen.update(revert_weight_conversion(model, dict(model.state_dict())))
            raise Killed

    with pytest.raises(Killed):
        _train(stage, cfg, [Peek()])
    assert common.last_checkpoint(tmp_path / "out").endswith("checkpoint-4")
    assert seen.keys() >= saved.keys()
    assert max(float((seen[k] - saved[k]).abs().max()) for k in saved) == 0.0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_resume_loads_every_weight_key_of_every_family(family, tiny_model_factory, tmp_path):
    """Fast check for the families not trained above: a checkpoint as the Trainer writes it (save_pretrained)
    loads back into the training model with every key, restoring each tensor."""
    import torch

    from iadr1.models.registry import family_of
    from iadr1.train.common import load_checkpoint_weights, load_model_for_training
    from iadr1.train.config import SFTRunConfig

    base = tiny_model_factory(family)
    cfg = SFTRunConfig(model=str(base), dataset="x.jsonl", output_dir=tmp_path)
    model = load_model_for_training(cfg, family_of(base))
    model.save_pretrained(tmp_path / "checkpoint-1")
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    load_checkpoint_weights(model, tmp_path / "checkpoint-1")
    after = model.state_dict()
    assert all(torch.equal(after[k], expected[k]) for k in expected)


def test_a_key_mismatch_is_an_error_not_a_warning(tiny_model_factory, tmp_path):
    from safetensors.torch import load_file, save_file

    from iadr1.models.registry import family_of
    from iadr1.train.common import load_checkpoint_weights, load_model_for_training
    from iadr1.train.config import SFTRunConfig

    base = tiny_model_factory("qwen2_vl")
    cfg = SFTRunConfig(model=str(base), dataset="x.jsonl", output_dir=tmp_path)
    model = load_model_for_training(cfg, family_of(base))
    ckpt = tmp_path / "checkpoint-1"
    model.save_pretrained(ckpt)
    state = load_file(ckpt / "model.safetensors")
    state["model.norm.extra"] = state.pop("model.norm.weight")
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"checkpoint-1: weight keys do not match the model: 1 missing \(.*norm"):
        load_checkpoint_weights(model, ckpt)

    # loading a model for training checks the same way
    broken = tmp_path / "broken-model"
    shutil.copytree(base, broken)
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    cfg = SFTRunConfig(model=str(broken), dataset="x.jsonl", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="weight keys do not match the model"):
        load_model_for_training(cfg, family_of(broken))


# --- half-written checkpoints ------------------------------------------------------------------------------------
def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


TEARS = {
    "no trainer state": (lambda d: (d / "trainer_state.json").unlink(), "no trainer_state.json"),
    "torn trainer state": (lambda d: _cut(d / "trainer_state.json"), "trainer_state.json is torn"),
    "torn weights": (lambda d: _cut(d / "model.safetensors", 0.9), "model.safetensors is cut short"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no model weights"),
    "torn optimizer": (lambda d: _cut(d / "optimizer.pt", 0.9), "optimizer.pt is cut short"),
    "no optimizer": (lambda d: (d / "optimizer.pt").unlink(), "no optimizer.pt"),
}


@pytest.fixture(scope="module")
def two_checkpoints(tiny_model_factory, data, tmp_path_factory) -> Path:
    from iadr1.train.sft import run_sft

    out = tmp_path_factory.mktemp("ckpts") / "out"
    with pytest.raises(Killed):
        run_sft(sft_config(tiny_model_factory("qwen2_vl"), data, out, max_steps=6, save_steps=2), [_kill_after(5)])
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    return out


@pytest.mark.parametrize("tear", list(TEARS))
def test_a_half_written_checkpoint_is_skipped_with_one_line(tear, two_checkpoints, tmp_path, caplog):
    from iadr1.train.common import checkpoint_problem, last_checkpoint

    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    assert checkpoint_problem(out / "checkpoint-4") is None
    edit, why = TEARS[tear]
    edit(out / "checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="iadr1.train"):
        assert last_checkpoint(out) == str(out / "checkpoint-2")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "checkpoint-4" in line and why in line

    edit(out / "checkpoint-2")
    assert last_checkpoint(out) is None  # nothing complete: start fresh


def test_a_run_with_a_torn_newest_checkpoint_resumes_from_the_one_before(two_checkpoints, tmp_path, caplog):
    from transformers import TrainerCallback

    from iadr1.train.sft import run_sft

    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    _cut(out / "checkpoint-4" / "model.safetensors", 0.5)
    begin = []

    class Begin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            begin.append(state.global_step)

    import yaml

    from iadr1.train.config import SFTRunConfig

    saved = {**yaml.safe_load((out / "iadr1_config.yaml").read_text()), "output_dir": out}
    with caplog.at_level(logging.WARNING, logger="iadr1.train"):
        run_sft(SFTRunConfig(**saved), [Begin()])  # the same command again
    assert any("skipping" in r.getMessage() and "checkpoint-4" in r.getMessage() for r in caplog.records)
    assert begin == [2]
    assert [h["step"] for h in history(out) if "loss" in h][-4:] == [3, 4, 5, 6]


# --- fail fast, decode every image, warn about runs that learn nothing ------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "iadr1", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("stage", ["sft", "grpo"])
@pytest.mark.parametrize(
    ("what", "message"),
    [("model", "model folder not found"), ("dataset", "dataset file not found"), ("root", "image root folder")],
)
def test_trivial_errors_come_before_torch_is_imported(stage, what, message, tiny_model_factory, data, tmp_path):
    base = tiny_model_factory("qwen2_vl")
    args = {"model": str(base), "dataset": str(data / f"{stage}.jsonl"), "root": str(data)}
    args[what] = str(tmp_path / "missing")
    r = _cli(
        stage, "--model", args["model"], "--dataset", args["dataset"], "--image-root", args["root"],
        "--output-dir", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if not x.startswith("import time:")]
    assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
    imported = {x.split("|")[-1].strip() for x in r.stderr.splitlines() if x.startswith("import time:")}
    assert not {"torch", "transformers", "trl"} & imported


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_a_corrupt_image_fails_before_the_model_loads(stage, tiny_model_factory, data, tmp_path):
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    _cut(copy / "img" / "1.png", 0.5)  # exists and has a valid header: only decoding finds it
    base = tiny_model_factory("qwen2_vl")
    run = run_sft if stage == "sft" else run_grpo
    cfg = (
        sft_config(base, copy, tmp_path / "out")
        if stage == "sft"
        else grpo_config(base, copy, tmp_path / "o", "accuracy")
    )
    with pytest.raises(DataError, match=r"record 'line 2': image .*1\.png: (corrupt|truncated)"):
        run(cfg)


def test_skip_bad_images_drops_and_records_them(tiny_model_factory, data, tmp_path):
    from iadr1.train.sft import run_sft

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    _cut(copy / "img" / "1.png", 0.5)
    out = run_sft(sft_config(tiny_model_factory("qwen2_vl"), copy, tmp_path / "out", max_steps=1, skip_bad_images=True))
    report = json.loads((out / "image_check.json").read_text())
    assert report["images_checked"] == 4
    assert [(Path(s["image"]).name, "line 2" in s["record"]) for s in report["skipped"]] == [("1.png", True)]


def test_warm_up_that_never_ends_is_warned_about(tiny_model_factory, data, tmp_path, caplog):
    from iadr1.train.sft import run_sft

    with caplog.at_level(logging.WARNING, logger="iadr1.train"):
        run_sft(sft_config(tiny_model_factory("qwen2_vl"), data, tmp_path / "out", max_steps=2, warmup_steps=5))
    assert any("never reaches its peak" in r.getMessage() for r in caplog.records)


def test_grpo_groups_without_reward_spread_are_warned_about(tiny_model_factory, data, tmp_path, caplog):
    from iadr1.train.grpo import run_grpo

    cfg = grpo_config(
        tiny_model_factory("qwen2_vl"), data, tmp_path / "out", f"{data / 'rewards.py'}:always_zero", max_steps=3
    )
    cfg.zero_spread_warn_steps = 3
    with caplog.at_level(logging.WARNING, logger="iadr1.train"):
        run_grpo(cfg)
    (line,) = [r.getMessage() for r in caplog.records if "same reward" in r.getMessage()]
    assert "3 logged steps" in line and "temperature" in line


def test_other_ranks_read_the_main_ranks_verdict(tmp_path):
    """Under a launcher only rank 0 decodes the images; the others drop what it dropped, or fail with its line."""
    import contextlib

    from iadr1.train.common import IMAGE_CHECK_FILENAME, checked_rows
    from iadr1.train.config import SFTRunConfig

    class Rank1:
        process_index = 1

        def main_process_first(self, local=True, desc=""):
            assert local is False, "the verdict is global: rank 0 of all machines decides"
            return contextlib.nullcontext()

    rows = [{"images": ["a.png"], "_record": "r1"}, {"images": ["b.png"], "_record": "r2"}]
    cfg = SFTRunConfig(model="m", dataset="d.jsonl", output_dir=tmp_path)
    verdict = tmp_path / IMAGE_CHECK_FILENAME
    verdict.write_text(
        json.dumps({"images_checked": 2, "skipped": [{"record": "r2", "image": "b.png", "problem": "x"}]})
    )
    assert checked_rows(rows, cfg, Rank1()) == rows[:1]
    verdict.write_text(json.dumps({"images_checked": 2, "error": "d.jsonl: record 'line 2': image b.png: corrupt"}))
    with pytest.raises(DataError, match="image b.png: corrupt"):
        checked_rows(rows, cfg, Rank1())
