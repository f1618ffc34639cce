"""Model families: dispatch on config.json, processor checks, tiny checkpoints, prompt rendering, freezing."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from iadr1.errors import ConfigError
from iadr1.models.registry import FAMILIES, family_of, get_family
from iadr1.models.tiny import TINY_FAMILIES

# What one image looks like in each family's rendered prompt (before the processor expands it to N tokens).
IMAGE_MARKER = {
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl_moe": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>",
    "llava_next": "<image>",
    "llava_onevision": "<image>",
    "internvl": "<IMG_CONTEXT>",
}


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (60 + 10 * i, 90, 3), dtype=np.uint8)) for i in range(n)]


# --- registry -----------------------------------------------------------------------------------------------
def test_get_family_by_name_and_model_type():
    assert get_family("qwen2_5_vl").model_class == "Qwen2_5_VLForConditionalGeneration"
    assert get_family("Qwen2.5-VL").name == "qwen2_5_vl"  # spelling variants normalise
    # InternVL: the transformers format trains, the remote-code format is served by vLLM only.
    assert get_family("internvl").trainable is True and get_family("internvl").model_types == ("internvl",)
    assert get_family("internvl_chat").trainable is False
    assert {f.name for f in FAMILIES.values() if f.trainable} == set(TINY_FAMILIES)


def test_the_qwen_families_are_the_dynamic_resolution_ones():
    assert {f.name for f in FAMILIES.values() if f.dynamic_resolution} == {
        "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe",
    }  # fmt: skip


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        get_family("gpt2")
    for name in FAMILIES:
        assert name in str(e.value)


def test_family_of_reads_config_not_the_path(tmp_path):
    # The original chose classes from path substrings; a folder named like another family must not fool us.
    misleading = tmp_path / "Qwen2-VL-2B-Instruct-llava-sft"
    misleading.mkdir()
    (misleading / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    assert family_of(misleading).name == "llava_onevision"
    (misleading / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert family_of(misleading / "config.json").name == "qwen2_vl"


def test_family_of_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        family_of(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert' is not supported"):
        family_of(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config.json"):
        family_of(tmp_path)


# --- loading checks -----------------------------------------------------------------------------------------
def test_load_processor_rejects_a_bare_tokenizer(tiny_model, tmp_path):
    # A folder with a tokenizer but no image processor: AutoProcessor quietly returns the tokenizer.
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=str(tiny_model("qwen2_vl") / "tokenizer.json")).save_pretrained(tmp_path)
    from iadr1.models.loading import load_processor

    with pytest.raises(ConfigError, match="not a multimodal processor"):
        load_processor(tmp_path)


def test_load_processor_and_model_errors(tmp_path):
    from iadr1.models.loading import load_model, load_processor, resolve_dtype

    with pytest.raises(ConfigError, match="never hub names"):
        load_processor("Qwen/Qwen2-VL-2B-Instruct")
    with pytest.raises(ConfigError, match="never hub names"):
        load_model(tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int3")
    import torch

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16


def test_max_pixels_caps_qwen_image_tokens(tiny_model):
    from iadr1.models.loading import load_processor

    path = tiny_model("qwen2_vl")
    big = _images(1)[0].resize((400, 400))
    n_default = load_processor(path).image_processor(images=[big])["image_grid_thw"].prod().item()
    n_capped = load_processor(path, max_pixels=56 * 56).image_processor(images=[big])["image_grid_thw"].prod().item()
    assert n_default == 64  # 112x112 max: 8x8 patches of 14 px
    assert n_capped == 16  # 56x56: 4x4 patches


def test_max_pixels_applies_to_full_processor_calls_without_warnings(tiny_model):
    """The cap holds through the processor's own call (text + images), and transformers 5's 'min_pixels/max_pixels
    per call are deprecated' FutureWarning is not raised on every batch."""
    import warnings

    from iadr1.models.loading import load_processor

    proc = load_processor(tiny_model("qwen2_vl"), max_pixels=56 * 56)
    big = _images(1)[0].resize((400, 400))
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enc = proc(text=[text], images=[big], return_tensors="pt")
    assert enc["image_grid_thw"].prod().item() == 16


def test_image_factor_is_the_patch_grid_of_dynamic_resolution_families(tiny_model, tiny_model_factory):
    from iadr1.models.loading import image_factor, load_processor

    def factor(path):
        return image_factor(family_of(path), load_processor(path))

    assert factor(tiny_model("qwen2_vl")) == 28  # 14 px patches merged 2x2, as in the published models
    assert factor(tiny_model_factory("qwen2_vl", vision_depth=2, patch_size=7)) == 14  # the demo's model
    assert factor(tiny_model("llava_onevision")) == 1  # a fixed-size tower resizes anyway


def test_fit_image_sizes_by_the_cap_or_leaves_the_image(tmp_path):
    from iadr1.models.loading import fit_image, load_image

    image = _images(1)[0].resize((300, 200))
    assert fit_image(image, None, 28) is image  # no cap: the processor's own limits apply
    assert fit_image(image, 4900, 28).size == (84, 56)
    assert fit_image(image, 4900, 1).size == (85, 57)
    image.save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png", 4900, 28)), np.asarray(fit_image(image, 4900, 28)))


def test_tiny_vision_options(tmp_path):
    from iadr1.models.tiny import build_tiny

    path = build_tiny("qwen2_vl", tmp_path / "q", vision_depth=2, vision_dim=96, patch_size=7)
    vc = json.loads((path / "config.json").read_text())["vision_config"]
    assert (vc["depth"], vc["embed_dim"], vc["patch_size"], vc["num_heads"]) == (2, 96, 7, 3)
    assert json.loads((path / "processor_config.json").read_text())["image_processor"]["patch_size"] == 7
    with pytest.raises(ConfigError, match="Qwen families"):
        build_tiny("llava", tmp_path / "l", patch_size=7)
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_tiny("qwen2_vl", tmp_path / "b", vision_dim=50)


# --- tiny checkpoints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_checkpoint_loads_and_generates(tiny_model, family):
    import torch

    from iadr1.models.loading import load_model, load_processor, render_prompt
    from iadr1.prompts import inference_segments

    path = tiny_model(family)
    assert family_of(path).name == family
    assert sum(f.stat().st_size for f in path.iterdir()) < 4_000_000
    processor = load_processor(path)
    model = load_model(path)
    assert type(model).__name__ == FAMILIES[family].model_class
    assert next(model.parameters()).dtype == torch.float32  # auto on CPU
    prompts = [
        render_prompt(processor, inference_segments(0)),
        render_prompt(processor, inference_segments(1)),
    ]
    imgs = _images(3)
    batch = processor(text=prompts, images=[imgs[:1], imgs[1:3]], return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every row ends on a real token
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 5
    # The method's tags must stay plain text: tokenizing `<answer>` must not give one special token.
    tok = processor.tokenizer
    assert "<answer>" not in tok.all_special_tokens
    assert tok.decode(tok("<answer>Yes</answer>")["input_ids"], skip_special_tokens=True) == "<answer>Yes</answer>"


def test_tiny_is_deterministic_and_sized(tmp_path):
    from safetensors.torch import load_file

    from iadr1.models.tiny import build_tiny

    a = build_tiny("qwen2_vl", tmp_path / "a", seed=3)
    b = build_tiny("qwen2_vl", tmp_path / "b", seed=3)
    c = build_tiny("qwen2_vl", tmp_path / "c", hidden_size=192, num_layers=3, seed=4)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    cfg = json.loads((c / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert text["hidden_size"] == 192 and text["num_hidden_layers"] == 3
    assert sum(v.numel() for v in wc.values()) > sum(v.numel() for v in wa.values())
    with pytest.raises(ConfigError, match="multiple of 64"):
        build_tiny("qwen2_vl", tmp_path / "d", hidden_size=100)
    with pytest.raises(ConfigError, match="no tiny builder"):
        build_tiny("internvl_chat", tmp_path / "e")


def test_onevision_siglip_weights_use_hub_names(tiny_model):
    # vLLM loads LLaVA-OneVision's SigLIP tower only under `vision_tower.vision_model.*` (the hub naming).
    from safetensors import safe_open

    with safe_open(str(tiny_model("llava_onevision") / "model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if "vision_tower" in k]  # noqa: SIM118 - safe_open has no __iter__
    assert keys and all("vision_tower.vision_model." in k for k in keys)


# --- prompts through chat templates -------------------------------------------------------------------------
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_render_prompt_has_k_plus_one_images(tiny_model, family, k):
    from iadr1.models.loading import load_processor, render_prompt
    from iadr1.prompts import inference_segments, k_shot_intro

    processor = load_processor(tiny_model(family))
    text = render_prompt(processor, inference_segments(k))
    marker = IMAGE_MARKER[family]
    assert text.count(marker) == k + 1
    assert text.rstrip().endswith(("assistant", "ASSISTANT:", "[/INST]"))  # generation prompt added
    if k and (family.startswith("qwen") or family == "internvl"):
        # Interleaved in order: intro, k references, the test-sample line, the query image, the question.
        pos = [m.start() for m in re.finditer(re.escape(marker), text)]
        intro, test_line = text.index(k_shot_intro(k)), text.index("Following is image of test sample:")
        assert intro < pos[0] and pos[k - 1] < test_line < pos[k] < text.index("Are there any defects")
    # The processor expands each marker into image tokens and accepts exactly k + 1 images.
    batch = processor(text=[text], images=[_images(k + 1)], return_tensors="pt")
    assert batch["input_ids"].shape[1] > len(processor.tokenizer(text)["input_ids"])


def test_render_prompt_with_system(tiny_model):
    from iadr1.models.loading import load_processor, render_prompt

    processor = load_processor(tiny_model("qwen2_5_vl"))
    text = render_prompt(processor, [None, "Q?"], system="Answer in tags.")
    assert text.startswith("<|im_start|>system\nAnswer in tags.<|im_end|>")
    assert "You are a helpful assistant" not in text


# --- freezing and LoRA targets against real parameter names -------------------------------------------------
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_freeze_and_lora_patterns_match_real_parameters(tiny_model, family):
    from iadr1.models.loading import freeze_modules, load_model

    fam = FAMILIES[family]
    model = load_model(tiny_model(family))
    frozen, trainable = freeze_modules(model, fam)
    assert frozen > 0 and trainable > 0
    for name, p in model.named_parameters():
        vision = name.startswith(("model.visual.", "model.vision_tower.", "model.multi_modal_projector.")) or (
            name == "model.image_newline"
        )
        assert p.requires_grad is not vision, name
    modules = [n for n, _ in model.named_modules() if re.fullmatch(fam.lora_target_modules, n)]
    n_layers = model.config.get_text_config().num_hidden_layers
    assert len(modules) == 4 * n_layers  # q, k, v, o of every language-model layer, nothing in the vision tower
    assert all(".language_model." in n for n in modules)


def test_freeze_modules_refuses_a_pattern_that_matches_nothing(tiny_model):
    import dataclasses

    from iadr1.models.loading import freeze_modules, load_model

    model = load_model(tiny_model("llava"))
    wrong = dataclasses.replace(FAMILIES["llava"], frozen_modules=("model.visual.",))  # the Qwen name
    with pytest.raises(ConfigError, match="no parameter matches"):
        freeze_modules(model, wrong)
