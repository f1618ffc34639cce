"""`iadr1 merge`: fold a LoRA adapter into its base model and save a full HF folder (weights, processor, chat
template, generation config) that transformers and vLLM load like any checkpoint.

A quantized base (bitsandbytes, GPTQ, AWQ...) is refused: merging into rounded weights silently changes the
model, and the result could not be saved as a plain checkpoint anyway. Merge into the full-precision base
instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from iadr1.errors import ConfigError

logger = logging.getLogger("iadr1.train")


def adapter_base(adapter_dir: str | os.PathLike) -> str | None:
    """The base model path recorded in the adapter's `adapter_config.json` (None if absent)."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter folder)")
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path") or None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg}: malformed JSON ({e.msg})") from None


def check_not_quantized(base: str | os.PathLike) -> None:
    """Refuse a base whose config.json declares a quantization (the weights are not the real ones)."""
    cfg = Path(base) / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{base}: no config.json (expected a local model folder)")
    data = json.loads(cfg.read_text(encoding="utf-8"))
    quant = data.get("quantization_config") or (data.get("text_config") or {}).get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise ConfigError(
            f"{base}: the base model is quantized ({method}); merging a LoRA adapter into quantized weights "
            "is refused: merge into the full-precision base model instead"
        )


def merge_adapter(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base: str | os.PathLike | None = None,
    dtype: str = "auto",
) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into `base` (default: the base recorded in the adapter) and
    save the full model to `output_dir`. `dtype="auto"` keeps the base checkpoint's dtype. Returns
    `output_dir`."""
    import torch
    import transformers
    from peft import PeftModel

    from iadr1.models.loading import load_processor
    from iadr1.models.registry import family_of

    adapter_dir = Path(adapter_dir)
    recorded = adapter_base(adapter_dir)
    base = base or recorded
    if base is None:
        raise ConfigError(f"{adapter_dir}: the adapter does not record its base model; pass --base PATH")
    if not Path(base).is_dir():
        raise ConfigError(f"{base}: base model folder not found")
    check_not_quantized(base)
    family = family_of(base)

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = getattr(transformers, family.model_class).from_pretrained(base, dtype=torch_dtype)
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        raise ConfigError(f"{base}: the base model loaded quantized; merging into quantized weights is refused")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    # The processor (and chat template) saved beside the adapter is the one training used; else the base's.
    saved = any((adapter_dir / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
    source = adapter_dir if saved else Path(base)
    processor = load_processor(source)
    processor.tokenizer.padding_side = "left"
    processor.save_pretrained(out)
    logger.info("merged %s into %s -> %s", adapter_dir, base, out)
    return out
