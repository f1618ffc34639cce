"""Load a processor and a model of any registered family, size images, render prompts through the family's
chat template, and freeze the vision side for PA-SFT.

The image size has one rule (`fit_image`), used by training's dataset and by the local inference backends: an
image is cut to at most `max_pixels`, with sides on the processor's patch grid for the dynamic-resolution
families, so every processor built from the checkpoint (transformers', vLLM's) leaves it as it is and all of
them see the same pixels.

Checkpoints are local folders (`save_pretrained` output): this project never loads a model by hub name.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iadr1.errors import ConfigError
from iadr1.models.registry import Family, family_of

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image
    from transformers import PreTrainedModel


def _local_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{p}: model folder not found (iadr1 loads local checkpoints only, never hub names)")
    return p


def load_processor(path: str | os.PathLike, max_pixels: int | None = None, min_pixels: int | None = None):
    """The checkpoint's multimodal processor, with left padding (what batched generation needs).

    `max_pixels`/`min_pixels` cap the image size for the Qwen families (the others resize to a fixed size).
    `AutoProcessor` silently returns a bare tokenizer when it does not know the saved processor class (or when
    torchvision is missing): that is a `ConfigError` here, not a confusing failure later.
    """
    from transformers import AutoProcessor, ProcessorMixin

    p = _local_dir(path)
    try:
        processor = AutoProcessor.from_pretrained(p)
    except (OSError, ValueError, AttributeError, ImportError) as e:
        raise ConfigError(f"{p}: cannot load the processor ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(processor, ProcessorMixin):
        raise ConfigError(
            f"{p}: AutoProcessor returned a {type(processor).__name__}, not a multimodal processor "
            "(missing preprocessor_config.json / processor_config.json, or torchvision not installed)"
        )
    if max_pixels is not None or min_pixels is not None:
        _set_pixel_bounds(processor, min_pixels, max_pixels)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:  # some LLaVA tokenizers ship without one; generation needs it
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def _set_pixel_bounds(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Apply pixel bounds to a Qwen-style image processor, whose `size` holds them as shortest/longest edge (in
    pixels, not sides). Set on the processor rather than passed to `from_pretrained`: transformers 5 turns such
    kwargs into per-call arguments and warns on every call that they are deprecated."""
    from transformers.image_processing_utils import SizeDict

    for ip in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)):
        size = getattr(ip, "size", None)
        get = size.get if isinstance(size, dict) else lambda k, s=size: getattr(s, k, None)
        if size is None or get("longest_edge") is None:
            continue  # a fixed-resolution processor (CLIP / SigLIP): nothing to cap
        lo = int(min_pixels) if min_pixels is not None else int(get("shortest_edge") or 0)
        hi = int(max_pixels) if max_pixels is not None else int(get("longest_edge"))
        ip.size = SizeDict(shortest_edge=min(lo, hi), longest_edge=hi)


# ------------------------------------------------------------------------------------------------------------
# Image size: one rule for training and inference
# ------------------------------------------------------------------------------------------------------------
def image_factor(family: Family, processor: Any) -> int:
    """The side multiple a family's processor snaps images to: patch x merge size for the dynamic-resolution
    families (28 for Qwen; 14 for the demo's 7 px patches), else 1 (a fixed-size tower resizes anyway)."""
    if not family.dynamic_resolution:
        return 1
    ip = getattr(processor, "image_processor", processor)
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    if not (isinstance(patch, int) and isinstance(merge, int)):
        raise ConfigError(f"{family.name}: the image processor gives no patch_size/merge_size to size images by")
    return patch * merge


def fit_size(width: int, height: int, max_pixels: int, factor: int = 1) -> tuple[int, int]:
    """The size an image is used at: sides rounded to multiples of `factor`, at most `max_pixels` in all.

    Qwen's `smart_resize` rule (without its lower bound), so a Qwen processor leaves the result unchanged.

    >>> fit_size(1024, 1024, 512 * 512, 28)
    (504, 504)
    >>> fit_size(100, 50, 480000, 1)
    (100, 50)
    """
    w = max(factor, round(width / factor) * factor)
    h = max(factor, round(height / factor) * factor)
    if w * h > max_pixels:
        scale = math.sqrt(width * height / max_pixels)
        w = max(factor, math.floor(width / scale / factor) * factor)
        h = max(factor, math.floor(height / scale / factor) * factor)
    return w, h


def fit_image(image: Image, max_pixels: int | None, factor: int = 1) -> Image:
    """An RGB image at the size training used (`fit_size`, bicubic); `max_pixels=None` leaves it as it is (the
    processor's own limits then apply: a checkpoint not trained by iadr1, run without a cap)."""
    from PIL import Image as PILImage

    if max_pixels is None:
        return image
    size = fit_size(image.width, image.height, max_pixels, factor)
    return image if size == image.size else image.resize(size, PILImage.Resampling.BICUBIC)


def load_image(path: str | os.PathLike, max_pixels: int | None, factor: int = 1) -> Image:
    """Open an image as RGB at its training size (`fit_image`)."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        im = im.convert("RGB")
    return fit_image(im, max_pixels, factor)


def resolve_dtype(dtype: str = "auto", device: str | None = None) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on CPU; else one of float32/fp32, bfloat16/bf16, float16/fp16."""
    import torch

    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype == "auto":
        on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return torch.bfloat16 if on_cuda else torch.float32
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(names)}")
    return names[dtype]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    path: str | os.PathLike, dtype: str = "auto", device: str | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load the checkpoint with its family's class (dispatch on config.json's model_type), in eval mode.

    `dtype="auto"`: bf16 on CUDA, fp32 on CPU. `device=None`: CUDA when available. Extra kwargs go to
    `from_pretrained` (e.g. `attn_implementation="flash_attention_2"`).
    """
    import transformers

    p = _local_dir(path)
    family = family_of(p)
    if family.name != "internvl_chat":
        cls = getattr(transformers, family.model_class)
    else:  # remote-code InternVL: vLLM serves it; transformers would need trust_remote_code
        raise ConfigError(
            f"{p}: model_type 'internvl_chat' is the remote-code InternVL format; use --backend vllm, "
            "or a transformers-format checkpoint (OpenGVLab/*-hf)"
        )
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    model = cls.from_pretrained(p, dtype=torch_dtype, **kwargs)
    return model.to(device).eval()


def render_prompt(processor: Any, segments: list[str | None], system: str | None = None) -> str:
    """The text prompt for one user turn: segments are text pieces and `None` image slots, in order.

    Goes through the processor's own chat template with `add_generation_prompt=True`, so each family gets its
    image markers (`<|vision_start|><|image_pad|><|vision_end|>`, `<image>`, ...) and role headers.
    The processor expands each image marker to the right number of image tokens when called with the images.
    """
    content: list[dict[str, str]] = []
    for seg in segments:
        if seg is None:
            content.append({"type": "image"})
        elif seg:
            content.append({"type": "text", "text": seg})
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    if getattr(processor, "chat_template", None) is None:
        raise ConfigError("the processor has no chat template (chat_template.jinja missing from the checkpoint)")
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def freeze_modules(model: Any, family: Family) -> tuple[int, int]:
    """Freeze the vision tower and projector (`family.frozen_modules`), as PA-SFT did in the published runs.

    Returns (frozen, trainable) parameter counts. A pattern that matches no parameter is a `ConfigError`:
    a silent no-op would train the vision tower without anyone noticing.
    """
    patterns = [re.compile(p) for p in family.frozen_modules]
    hits = dict.fromkeys(family.frozen_modules, 0)
    frozen = trainable = 0
    for name, param in model.named_parameters():
        matched = False
        for raw, pat in zip(family.frozen_modules, patterns, strict=True):
            if pat.match(name):
                hits[raw] += 1
                matched = True
        if matched:
            param.requires_grad_(False)
            frozen += param.numel()
        elif param.requires_grad:
            trainable += param.numel()
    missing = [p for p, n in hits.items() if n == 0]
    if missing:
        raise ConfigError(f"{family.name}: no parameter matches frozen module pattern(s) {missing}")
    return frozen, trainable
