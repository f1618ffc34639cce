"""`iadr1 sft` / `iadr1 grpo` / `iadr1 merge` on tiny random models of every trainable family.

What is asserted is behaviour, not a green run: SFT lowers the loss on a fixed batch and leaves the frozen vision
tower as it was; GRPO with a graded reward moves the weights and raises the mean reward (and a reward that is 0
everywhere moves nothing: the control); a bad record fails before any training; the saved folder loads back and
generates. Resume is tested in test_train_resume.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iadr1.errors import DataError
from iadr1.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.train

QUESTION = "Are there any defects in the query image?"
YES = "<think>A dark spot.</think><location>top left</location><type>stain</type><answer>Yes</answer>"
NO = "<think>The surface looks uniform.</think><answer>No</answer>"
YES_SOLUTION = "<location>top left</location><type>stain</type><answer>Yes</answer>"

# A graded reward a random model can improve quickly: the share of even token ids in the completion (about 0.5
# for a random policy, with spread inside each group, so advantages are not all 0).
EVEN_TOKENS_REWARD = """
def even_tokens(completions, completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(1, len(ids)) for ids in completion_ids]


def always_zero(completions, **kwargs):
    return [0.0] * len(completions)
"""


# ---------------------------------------------------------------------------------------------------------------------
# Helpers (also used by test_train_distributed.py)
# ---------------------------------------------------------------------------------------------------------------------
def write_dataset(root: Path, n: int = 4, one_shot: bool = False) -> Path:
    """`n` small PNGs (odd ones with a dark defect) and matching sft.jsonl / grpo.jsonl records under `root`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    sft, grpo = [], []
    for i in range(n):
        defect = i % 2 == 1
        pixels = (rng.random((40, 48, 3)) * 60 + 100).astype("uint8")
        if defect:
            pixels[8:18, 8:30] = 10
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        query = f"img/{i}.png"
        if one_shot:
            images: str | list[str] = ["img/0.png", query]
            user = f"Following is 1 normal sample.<image>\nFollowing is the test sample:<image>\n{QUESTION}"
        else:
            images, user = query, f"<image>\n{QUESTION}"
        answer = YES if defect else NO
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        sft.append({"images": images, "messages": messages})
        solution = YES_SOLUTION if defect else "<answer>No</answer>"
        grpo.append({"id": f"r{i}", "image": images, "problem": f"You are an expert. {QUESTION}", "solution": solution})
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (root / "grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in grpo))
    return root


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def moved(base: Path, trained: Path) -> tuple[list[str], list[str]]:
    """(names that changed, names that did not) among the weights both folders hold."""
    a, b = weights(base), weights(trained)
    common = sorted(set(a) & set(b))
    assert len(common) > 10, "the trained folder should hold the same weights as the base"
    changed = [k for k in common if not np.allclose(a[k].float().numpy(), b[k].float().numpy(), atol=0, rtol=0)]
    return changed, [k for k in common if k not in changed]


def is_vision(name: str) -> bool:
    return any(part in name for part in ("visual.", "vision_tower.", "multi_modal_projector.", "image_newline"))


def history(out: Path) -> list[dict]:
    return json.loads((out / "log_history.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train-data")
    reward_file = base / "test_rewards.py"
    reward_file.write_text(EVEN_TOKENS_REWARD)
    return {
        "zero": write_dataset(base / "zero", n=4),
        "one": write_dataset(base / "one", n=4, one_shot=True),
        "rewards": reward_file,
    }


def sft_config(model: Path, dataset: Path, out: Path, **kw):
    from iadr1.train.config import SFTRunConfig

    # Two records, batch 2: every step sees the same batch, so the logged loss is the loss on a fixed batch.
    opts = dict(max_steps=5, lr=1e-3, warmup_steps=0, batch_size=2, grad_accum=1, save_steps=100, seed=0)
    return SFTRunConfig(model=str(model), dataset=dataset / "sft.jsonl", output_dir=out, **{**opts, **kw})


def grpo_config(model: Path, dataset: Path, out: Path, reward: str, **kw):
    from iadr1.train.config import GRPORunConfig

    opts = dict(
        max_steps=10,
        lr=1e-3,
        lr_scheduler="constant",
        batch_size=16,  # 4 prompts x G=4 completions per step
        grad_accum=1,
        max_completion_length=12,
        save_steps=100,
        seed=0,
        rewards=[reward],
    )
    return GRPORunConfig(model=str(model), dataset=dataset / "grpo.jsonl", output_dir=out, **{**opts, **kw})


# ---------------------------------------------------------------------------------------------------------------------
# PA-SFT
# ---------------------------------------------------------------------------------------------------------------------
def _only_two_records(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    lines = (src / "sft.jsonl").read_text().splitlines()[:2]
    (dst / "sft.jsonl").write_text("\n".join(lines) + "\n")
    (dst / "img").symlink_to(src / "img")
    return dst


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_sft_reduces_loss_on_a_fixed_batch(family, mode, tiny_model_factory, data, tmp_path):
    from iadr1.train.sft import run_sft

    base = tiny_model_factory(family)
    # Full: zero-shot records; LoRA: one-shot records (two images, `<image>` markers inside the text).
    dataset = _only_two_records(data["zero" if mode == "full" else "one"], tmp_path / "data")
    lr = 1e-3 if mode == "full" else 1e-2  # 2e-2 overshoots on the last cosine step for tiny InternVL
    out = run_sft(sft_config(base, dataset, tmp_path / "out", lora=mode == "lora", lr=lr, lora_r=8, lora_alpha=16))

    losses = [h["loss"] for h in history(out) if "loss" in h]
    assert len(losses) == 5
    # An adapter on the attention projections alone moves the loss less in a few steps than a full fine-tune.
    assert losses[-1] < (0.85 if mode == "full" else 0.95) * losses[0], losses
    changed, _ = moved(base, out)
    vision = [k for k in changed if is_vision(k)]
    assert vision == [], f"the vision tower and projector are frozen by default, yet moved: {vision[:3]}"
    assert changed, "the language model did not move"
    if mode == "lora":
        assert all(k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed), changed
        assert (out / "adapter" / "adapter_config.json").is_file()
        assert not (out / "adapter_config.json").exists(), "the top folder holds the merged full model"


def test_sft_can_train_the_vision_tower_and_logs_to_tensorboard(tiny_model_factory, data, tmp_path):
    from iadr1.train.sft import run_sft

    base = tiny_model_factory("qwen2_vl")
    cfg = sft_config(base, data["zero"], tmp_path / "out", max_steps=2, freeze_vision=False, report_to="tensorboard")
    out = run_sft(cfg)
    changed, _ = moved(base, out)
    assert any(k.startswith(("visual.", "model.visual.")) for k in changed)
    assert list((out / "runs").glob("*/events.out.tfevents.*")), "--report-to tensorboard writes event files"
    live = [json.loads(x) for x in (out / "log_history.jsonl").read_text().splitlines()]
    assert [x["step"] for x in live if "loss" in x] == [1, 2]


def _generate_from(folder: Path, image: Path) -> str:
    """Load `folder` as `iadr1 infer` does and greedily generate a few tokens for one image."""
    import torch

    from iadr1.models.loading import load_model, load_processor, render_prompt
    from iadr1.train.data import load_image

    processor = load_processor(folder)
    model = load_model(folder, dtype="float32", device="cpu")
    prompt = render_prompt(processor, [None, QUESTION])
    inputs = processor(images=[load_image(str(image), 262144)], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = ids[:, inputs["input_ids"].shape[1] :]
    assert new.shape[1] >= 1
    return processor.batch_decode(new, skip_special_tokens=True)[0]


def test_cli_sft_lora_then_merge_loads_back_and_generates(tiny_model_factory, data, tmp_path, capsys):
    """`iadr1 sft --lora` saves a full HF folder (and the adapter); `iadr1 merge` rebuilds the same model."""
    from transformers import AutoConfig, AutoProcessor, GenerationConfig, ProcessorMixin

    from iadr1.cli import main

    base = tiny_model_factory("llava_onevision")
    out = tmp_path / "sft"
    args = ["sft", "--model", str(base), "--dataset", str(data["zero"] / "sft.jsonl"), "--output-dir", str(out)]
    args += ["--max-steps", "2", "--lr", "1e-2", "--lora", "--batch-size", "2", "--grad-accum", "1"]
    main([*args, "--set", "warmup_steps=0", "--set", "lora_r=4"])
    assert "PA-SFT done" in capsys.readouterr().out

    for name in ("config.json", "model.safetensors", "generation_config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert isinstance(AutoProcessor.from_pretrained(out), ProcessorMixin)
    assert AutoConfig.from_pretrained(out).model_type == "llava_onevision"
    assert GenerationConfig.from_pretrained(out).eos_token_id is not None
    saved = (out / "iadr1_config.yaml").read_text()
    assert "lora: true" in saved and "max_steps: 2" in saved

    main(["merge", str(out / "adapter"), "--output-dir", str(tmp_path / "merged"), "--base", str(base)])
    a, b = weights(out), weights(tmp_path / "merged")
    assert set(a) == set(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)

    text = _generate_from(out, data["zero"] / "img" / "1.png")
    assert isinstance(text, str)


def test_merge_refuses_a_quantized_base(tiny_model_factory, tmp_path):
    import shutil

    from iadr1.errors import ConfigError
    from iadr1.train.merge import merge_adapter

    base = tmp_path / "base"
    shutil.copytree(tiny_model_factory("qwen2_vl"), base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(cfg))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    with pytest.raises(ConfigError, match="quantized .bitsandbytes.*refused"):
        merge_adapter(adapter, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------------
# Resume, bad records
# ---------------------------------------------------------------------------------------------------------------------
def _broken_copy(src: Path, dst: Path, name: str, line: int, edit) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "img").symlink_to(src / "img")
    rows = [json.loads(x) for x in (src / name).read_text().splitlines()]
    edit(rows[line - 1])
    (dst / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


@pytest.mark.parametrize(
    ("stage", "edit", "message"),
    [
        ("sft", lambda r: r.update(images="img/missing.png"), "record 'line 3': image 'img/missing.png' not found"),
        ("sft", lambda r: r.pop("messages"), "record 'line 3': field 'messages'"),
        ("sft", lambda r: r["messages"].pop(), "record 'line 3': field 'messages': must end with"),
        ("sft", lambda r: r.update(images=["img/0.png", "img/1.png"]), r"record 'line 3': 1 <image> marker\(s\)"),
        ("grpo", lambda r: r.update(solution="<answer>Maybe</answer>"), "record 'line 3': field 'solution'"),
    ],
)
def test_a_bad_record_fails_before_training(stage, edit, message, tiny_model_factory, data, tmp_path):
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    base = tiny_model_factory("qwen2_vl")
    name = f"{stage}.jsonl"
    dataset = _broken_copy(data["zero"], tmp_path / "data", name, 3, edit)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        if stage == "sft":
            run_sft(sft_config(base, dataset, out))
        else:
            run_grpo(grpo_config(base, dataset, out, "accuracy"))
    assert not out.exists(), "nothing may be written before the records are checked"


# ---------------------------------------------------------------------------------------------------------------------
# SC-GRPO
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_grpo_graded_reward_moves_weights_and_raises_the_mean_reward(family, tiny_model_factory, data, tmp_path):
    from iadr1.train.grpo import run_grpo

    base = tiny_model_factory(family)
    # LLaVA-OneVision runs one-shot prompts: two images per prompt is where TRL alone gets its image counts wrong.
    dataset = data["one" if family == "llava_onevision" else "zero"]
    out = run_grpo(grpo_config(base, dataset, tmp_path / "out", f"{data['rewards']}:even_tokens"))

    logs = [h for h in history(out) if "reward" in h]
    rewards = [h["reward"] for h in logs]
    assert len(rewards) == 10
    # A random policy sits near 0.5 (the noise of a 3-step mean is about 0.03); seeds 0-2 on every family rise
    # by 0.2 to 0.38 over these 10 steps.
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.1, rewards
    assert max(h["kl"] for h in logs) > 0, "beta 0.04 by default: the KL to the reference must show"
    assert all("consistency_rate" in h and "completions/mean_length" in h for h in logs)
    changed, same = moved(base, out)
    assert changed, "the policy did not move"
    assert not [k for k in changed if is_vision(k)]

    samples = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == set(range(1, 11))
    assert all(isinstance(s["completion"], str) and "even_tokens" in next(iter(s["rewards"])) for s in samples)
    assert {s["id"] for s in samples} <= {"r0", "r1", "r2", "r3"}


def test_grpo_with_rewards_all_zero_learns_nothing(tiny_model_factory, data, tmp_path):
    """The control for the test above: no reward signal, zero advantages, no update. A test that passed here
    would not be testing learning."""
    from iadr1.train.grpo import run_grpo

    base = tiny_model_factory("qwen2_vl")
    out = run_grpo(grpo_config(base, data["zero"], tmp_path / "out", f"{data['rewards']}:always_zero", max_steps=2))
    assert all(h["reward"] == 0 for h in history(out) if "reward" in h)
    changed, _ = moved(base, out)
    assert changed == []


def test_grpo_lora_with_published_rewards_runs_and_logs(tiny_model_factory, data, tmp_path):
    """LoRA + KL (the reference is the base with the adapter disabled) and the published reward pair."""
    from iadr1.train.grpo import run_grpo

    base = tiny_model_factory("qwen2_5_vl")
    cfg = grpo_config(base, data["zero"], tmp_path / "out", "accuracy", max_steps=2, lora=True, lora_r=4)
    cfg.rewards = ["accuracy", "consistency=0.5"]
    out = run_grpo(cfg)
    logs = [h for h in history(out) if "reward" in h]
    assert {"rewards/accuracy/mean", "rewards/consistency/mean", "consistency_rate"} <= set(logs[0])
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
