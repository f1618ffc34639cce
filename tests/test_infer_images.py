"""One image-size rule for training and inference: a model trained by iadr1 is run at the cap it was trained with
(saved in its `iadr1_config.yaml`), and the local backends feed it the pixels training's dataset gave it.

The bug this pins: `iadr1 infer` on an `iadr1 sft`/`grpo` output ignored the saved `max_pixels`, so the
transformers backend saw a 6x8 patch grid where training had seen 4x6, unless the user repeated the flag.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import make_bench, write_png

from iadr1.errors import ConfigError
from iadr1.infer.base import GenerationOptions, Request, resolve_max_pixels, trained_max_pixels
from iadr1.infer.runner import run_inference

CAP = 4900  # 70x70 px: below the tiny processors' own 112x112, so a forgotten cap shows in the grid
SEGMENTS = (None, "Are there any defects? Please answer by yes or no.")
NOTE = f"max_pixels {CAP}: the image cap this model was trained with ("


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _trained(tiny_model, family: str, folder: Path, cap: int = CAP) -> Path:
    """A copy of the tiny checkpoint with the config `iadr1 sft` saves beside its weights."""
    from iadr1.train.config import SFTRunConfig, save_config

    shutil.copytree(tiny_model(family), folder)
    save_config(SFTRunConfig(model="base", dataset="d.jsonl", output_dir=folder, max_pixels=cap))
    return folder


def _training_inputs(model: Path, image: Path, max_pixels: int):
    """What PA-SFT feeds the model for this image: training's dataset item through the checkpoint's processor."""
    from iadr1.models.loading import image_factor, load_processor, render_prompt
    from iadr1.models.registry import family_of
    from iadr1.train.data import build_dataset

    processor = load_processor(model)
    row = {
        "prompt": [{"role": "user", "content": SEGMENTS[1]}],
        "completion": [{"role": "assistant", "content": "<answer>No</answer>"}],
        "images": [str(image)],
    }
    item = build_dataset([row], max_pixels, image_factor(family_of(model), processor))[0]
    text = render_prompt(processor, list(SEGMENTS))
    return item["images"], processor(text=[text], images=[item["images"]], return_tensors="pt")


# --- the bug: the transformers backend sees training's pixels ----------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision", "internvl"])
def test_transformers_backend_feeds_the_pixels_training_fed(tiny_model, tmp_path, family):
    import torch

    from iadr1.infer.transformers_backend import TransformersBackend

    model = _trained(tiny_model, family, tmp_path / "trained")
    image = write_png(tmp_path / "query.png", 0, size=(300, 200))
    _, want = _training_inputs(model, image, CAP)

    engine = TransformersBackend(model, GenerationOptions(max_new_tokens=2, prompt_style="baseline"), batch_size=1)
    assert engine.max_pixels == CAP and len(engine.notes) == 1 and engine.notes[0].startswith(NOTE)
    got = engine.inputs([Request(key="q", segments=SEGMENTS, images=(image,))])
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    for grid in ("image_grid_thw", "image_sizes"):  # InternVL's tiles have neither: pixel_values say it all
        if grid in want:
            assert torch.equal(got[grid], want[grid])
    if family == "qwen2_vl":
        assert want["image_grid_thw"].tolist() == [[1, 4, 6]]  # 56x84 px; the processor's own cap gives 6x8


def test_a_checkpoint_not_trained_by_iadr1_keeps_the_processors_own_limits(tiny_model, tmp_path):
    """Published checkpoints give today's results: no cap unless asked, the image goes to the processor as is."""
    import torch
    from PIL import Image

    from iadr1.infer.transformers_backend import TransformersBackend
    from iadr1.models.loading import render_prompt

    image = write_png(tmp_path / "query.png", 0, size=(300, 200))
    engine = TransformersBackend(tiny_model("qwen2_vl"), GenerationOptions(max_new_tokens=2), batch_size=1)
    assert engine.max_pixels is None and engine.notes == ()
    got = engine.inputs([Request(key="q", segments=SEGMENTS, images=(image,))])
    text = render_prompt(engine.processor, list(SEGMENTS))
    want = engine.processor(text=[text], images=[[Image.open(image).convert("RGB")]], return_tensors="pt")
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert got["image_grid_thw"].tolist() == [[1, 6, 8]]


def test_infer_defaults_to_the_saved_cap_says_so_and_records_it(tiny_model, tmp_path):
    model = _trained(tiny_model, "qwen2_vl", tmp_path / "trained")
    test_file, root, _ = make_bench(tmp_path, n=2, corrupt=False, missing=False)
    args = [
        sys.executable, "-m", "iadr1", "infer", "--model", str(model), "--test-file", str(test_file),
        "--image-root", str(root), "--out", str(tmp_path / "o"), "--max-new-tokens", "2", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sum(line.startswith(NOTE) for line in r.stderr.splitlines()) == 1  # one line in the run output
    settings = json.loads((tmp_path / "o" / "predictions.run.json").read_text())["settings"]
    assert settings["max_pixels"] == CAP  # the cap used, not the None that was passed

    # Naming the same cap is the same run (it resumes); another cap is refused: it changes the pixels.
    same = {"model": str(model), "test_file": test_file, "image_root": root, "out": tmp_path / "o", "max_new_tokens": 2}
    s = run_inference(**same, max_pixels=CAP)
    assert s.written == 0 and s.notes[0].startswith("nothing to do")
    with pytest.raises(ConfigError, match=f"max_pixels {CAP} here, 8000 in this run"):
        run_inference(**same, max_pixels=8000)


# --- where the cap comes from ----------------------------------------------------------------------------------------
def test_resolve_max_pixels(tmp_path):
    plain = tmp_path / "hub"
    plain.mkdir()
    assert resolve_max_pixels(plain, None) == (None, None)  # not trained here: the processor's own
    assert resolve_max_pixels(plain, 480000) == (480000, None)
    assert resolve_max_pixels("gpt-4.1-mini", None) == (None, None)  # a name, not a folder

    run = tmp_path / "run"
    (run / "checkpoint-500").mkdir(parents=True)
    (run / "iadr1_config.yaml").write_text(f"model: base\nmax_pixels: {CAP}\n")
    cap, note = resolve_max_pixels(run, None)
    assert cap == CAP and note.startswith(NOTE) and note.endswith("; --max-pixels to change)")
    assert resolve_max_pixels(run, CAP) == (CAP, None)
    cap, note = resolve_max_pixels(run, 8000)
    assert cap == 8000 and note.startswith(f"max_pixels 8000 (--max-pixels), not the {CAP} this model was trained")
    assert trained_max_pixels(run / "checkpoint-500") == (CAP, run / "iadr1_config.yaml")  # a mid-run checkpoint

    (run / "iadr1_config.yaml").write_text("max_pixels: lots\n")
    with pytest.raises(ConfigError, match="max_pixels must be a positive integer") as e:
        resolve_max_pixels(run, None)
    assert "\n" not in str(e.value)


# --- the vLLM backend without vLLM: the images it queues and the engine options it passes ---------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision", "internvl"])
def test_vllm_backend_queues_training_sized_images(tiny_model, tmp_path, fake_vllm, family):
    from iadr1.infer.vllm_backend import VLLMBackend

    model = _trained(tiny_model, family, tmp_path / "trained")
    image = write_png(tmp_path / "query.png", 0, size=(300, 200))
    want, _ = _training_inputs(model, image, CAP)

    engine = VLLMBackend(model, GenerationOptions(max_new_tokens=2))
    assert engine.max_pixels == CAP and engine.notes[-1].startswith(NOTE)
    got = engine._prompt(Request(key="q", segments=SEGMENTS, images=(image,)))["multi_modal_data"]["image"]
    assert [im.size for im in got] == [im.size for im in want]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True))
    # vLLM's processor is the checkpoint's, unchanged, as in SC-GRPO's vLLM rollouts: it keeps such images as they are
    assert "mm_processor_kwargs" not in fake_vllm.kwargs


def test_vllm_backend_without_a_saved_cap_passes_images_as_they_are(tiny_model, tmp_path, fake_vllm):
    from iadr1.infer.vllm_backend import VLLMBackend

    image = write_png(tmp_path / "query.png", 0, size=(300, 200))
    engine = VLLMBackend(tiny_model("qwen2_vl"), GenerationOptions(max_new_tokens=2))
    assert engine.max_pixels is None and not any(n.startswith("max_pixels") for n in engine.notes)
    got = engine._prompt(Request(key="q", segments=SEGMENTS, images=(image,)))["multi_modal_data"]["image"]
    assert [im.size for im in got] == [(300, 200)]
    capped = VLLMBackend(tiny_model("qwen2_vl"), GenerationOptions(max_new_tokens=2), max_pixels=CAP)
    got = capped._prompt(Request(key="q", segments=SEGMENTS, images=(image,)))["multi_modal_data"]["image"]
    assert [im.size for im in got] == [(84, 56)]  # the flag: training's rule, on Qwen's 28 px grid
