"""Model families: one registry entry per family, chosen by `config.json`'s `model_type` (never by path).

The original picked model classes from substrings of the checkpoint path, which broke on its own output paths
(docs/method.md §5). Here a checkpoint is whatever its `config.json` says it is:

>>> get_family("qwen2_5_vl").model_class
'Qwen2_5_VLForConditionalGeneration'
>>> get_family("llava_onevision").trainable
True
>>> get_family("qwen2-vl").dynamic_resolution
True

Parameter names are those of transformers 5.x (`model.visual.*`, `model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`); `tests/test_models.py` checks every
pattern below against a real instance of each class.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iadr1.errors import ConfigError

# The LoRA target of the method: attention projections of the language model only (a bare `q_proj` would
# also hit the SigLIP/CLIP attention layers of the LLaVA vision towers).
_LM_ATTENTION = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"

# Vision tower and projector: frozen in PA-SFT as published. Prefixes of `named_parameters()` names.
_QWEN_VISION = ("model.visual.",)  # the projector ("merger") lives inside `visual`
_LLAVA_VISION = ("model.vision_tower.", "model.multi_modal_projector.")
# LLaVA-NeXT/OneVision: `image_newline` (the learned separator between image rows) is on the projector side.
_LLAVA_NEXT_VISION = (*_LLAVA_VISION, "model.image_newline")


@dataclass(frozen=True)
class Family:
    """How to load, freeze, adapt and serve one model family.

    `model_types` are the `config.json` values that dispatch to this family; `frozen_modules` are
    parameter-name prefixes (regexes anchored at the start) of the vision tower and projector;
    `lora_target_modules` is a regex for PEFT's `target_modules`; `vllm_options` are extra `vllm.LLM(...)`
    keyword arguments the family needs. `dynamic_resolution`: the processor keeps each image near its own size,
    on a grid of patches (Qwen's `smart_resize`), so the pixel cap decides the image tokens; the other families
    resize to their vision tower's fixed size (tiled by LLaVA-NeXT/OneVision).
    """

    name: str
    model_types: tuple[str, ...]
    model_class: str
    trainable: bool
    lora_target_modules: str
    frozen_modules: tuple[str, ...]
    dynamic_resolution: bool = False
    vllm_options: dict[str, Any] = field(default_factory=dict)
    image_token: str = "<image>"  # what the processor's chat template writes for one image (before expansion)
    description: str = ""

    def __hash__(self) -> int:  # dict field: hash by name (families are unique by name)
        return hash(self.name)


# What the four Qwen families share: the tower and merger inside `model.visual` (Qwen3-VL's deep-stack mergers too),
# Qwen's patch-grid processor, the same image markers. Each family below adds only what differs.
_QWEN = {
    "trainable": True,
    "lora_target_modules": _LM_ATTENTION,
    "frozen_modules": _QWEN_VISION,
    "dynamic_resolution": True,
    "image_token": "<|vision_start|><|image_pad|><|vision_end|>",
}
_LLAVA = {"trainable": True, "lora_target_modules": _LM_ATTENTION}

_INTERNVL = Family(
    name="internvl",
    # The transformers-native format (OpenGVLab's `*-hf` repositories: InternVL3-1B/2B/8B-hf, ...).
    model_types=("internvl",),
    model_class="InternVLForConditionalGeneration",
    trainable=True,
    lora_target_modules=_LM_ATTENTION,
    frozen_modules=_LLAVA_VISION,  # InternVL names its tower and projector as LLaVA does
    image_token="<IMG_CONTEXT>",
    description="InternVL3 / InternVL2.5 in the transformers format (e.g. InternVL3-2B-hf)",
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2_vl",
            model_types=("qwen2_vl",),
            model_class="Qwen2VLForConditionalGeneration",
            description="Qwen2-VL (e.g. Qwen2-VL-2B-Instruct)",
            **_QWEN,
        ),
        Family(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            model_class="Qwen2_5_VLForConditionalGeneration",
            description="Qwen2.5-VL (3B/7B/72B-Instruct; Anomaly-R1)",
            **_QWEN,
        ),
        Family(
            name="qwen3_vl",
            model_types=("qwen3_vl",),
            model_class="Qwen3VLForConditionalGeneration",
            description="Qwen3-VL (2B/4B/8B-Instruct; not in the paper)",
            **_QWEN,
        ),
        Family(
            name="qwen3_vl_moe",
            model_types=("qwen3_vl_moe",),
            model_class="Qwen3VLMoeForConditionalGeneration",
            # LoRA on attention only, as for every family: the experts are fused 3-D weights, not Linear layers.
            description="Qwen3-VL mixture of experts (e.g. Qwen3-VL-30B-A3B-Instruct); not in the paper",
            **_QWEN,
        ),
        Family(
            name="llava",
            model_types=("llava",),
            model_class="LlavaForConditionalGeneration",
            frozen_modules=_LLAVA_VISION,
            description="LLaVA-1.5 (llava-hf/llava-1.5-7b-hf, 13b)",
            **_LLAVA,
        ),
        Family(
            name="llava_next",
            model_types=("llava_next",),
            model_class="LlavaNextForConditionalGeneration",
            frozen_modules=_LLAVA_NEXT_VISION,
            description="LLaVA-1.6 / LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf, 34b)",
            **_LLAVA,
        ),
        Family(
            name="llava_onevision",
            model_types=("llava_onevision",),
            model_class="LlavaOnevisionForConditionalGeneration",
            frozen_modules=_LLAVA_NEXT_VISION,
            description="LLaVA-OneVision (llava-hf/llava-onevision-qwen2-0.5b-si-hf, 7b)",
            **_LLAVA,
        ),
        _INTERNVL,
        # The remote-code format (OpenGVLab/InternVL2_5-4B, ...): vLLM serves it; transformers cannot load it without
        # trust_remote_code, so it is never trained here.
        replace(
            _INTERNVL,
            name="internvl_chat",
            model_types=("internvl_chat",),
            trainable=False,
            vllm_options={"trust_remote_code": True},
            description="InternVL2.5 / InternVL3, remote-code format (vLLM inference only; evaluated in the paper)",
        ),
    )
}

_BY_MODEL_TYPE: dict[str, Family] = {mt: f for f in FAMILIES.values() for mt in f.model_types}


def get_family(name: str) -> Family:
    """The family named `name`, or the family of model_type `name`; unknown names are a `ConfigError`."""
    key = name.strip().lower().replace("-", "_").replace(".", "_")
    fam = FAMILIES.get(key) or _BY_MODEL_TYPE.get(key)
    if fam is None:
        known = ", ".join(FAMILIES)
        raise ConfigError(f"unknown model family or model_type {name!r}; known families: {known}")
    return fam


def read_model_config(model_path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint folder's config.json as a dict (a `ConfigError` naming the file if absent or unreadable)."""
    path = Path(model_path)
    cfg = path / "config.json" if path.is_dir() else path
    if not cfg.exists():
        raise ConfigError(f"{path}: no config.json (expected a local model folder saved by transformers)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cfg}: cannot read config.json ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg}: config.json is not a JSON object")
    return data


def read_model_type(model_path: str | os.PathLike) -> str:
    """The `model_type` in a checkpoint folder's config.json (a `ConfigError` naming the file if absent)."""
    path = Path(model_path)
    data = read_model_config(path)
    cfg = path / "config.json" if path.is_dir() else path
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(f"{cfg}: config.json has no 'model_type'")
    return model_type


def family_of(model_path: str | os.PathLike) -> Family:
    """The family of a local checkpoint, from its config.json's `model_type` (never from the folder name)."""
    model_type = read_model_type(model_path)
    try:
        return get_family(model_type)
    except ConfigError:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise ConfigError(f"{model_path}: model_type {model_type!r} is not supported; supported: {known}") from None
