"""The GPU suite: inference and training speed of iadr1 on random-weight models with the real architectures.

One command, one JSON of figures (`OUT/gpu_suite.json`, rewritten after every measurement), ending inside a time
budget (default 420 s, so that it ends well within 8 minutes):

    python benchmarks/gpu_suite.py --out OUT [--models qwen2_5_vl_3b,qwen2_vl_2b] [--budget-s 420] [--wheels .whl]
    python benchmarks/gpu_suite.py --out /tmp/suite --small        # tiny shapes of the same architectures, CPU, < 1 min

Models: Qwen2.5-VL-3B-Instruct and Qwen2-VL-2B-Instruct (and Qwen2.5-VL-7B-Instruct when named), built from the
published `config.json` values written below (`ARCHS`), with random weights, in bf16 on the GPU, saved as a real
checkpoint folder with an offline tokenizer and processor (`iadr1.models.tiny`'s tokenizer builder, the published
image-processor settings). Speed does not depend on the weights' values. Per model, in order of value:

- inference through `iadr1.infer.transformers_backend.TransformersBackend.generate` (the whole path: images, processor,
  batched `generate`, P(yes)), batch 1, 8 and 32, on native 1024x1024 images (the processor's own limits: 1369
  image tokens) and capped at 480,000 pixels (the SC-GRPO cap: 672x672, 576 image tokens), greedy, a fixed output
  length (`--new-tokens`; EOS is suppressed with `min_new_tokens`). The backend answers a batch that fails request by
  request; the suite notes the failure (an out-of-memory at batch 32, say) and records the measurement as an error
  instead of timing batch 1 under a batch-32 label. Figures: images/s, prompt tokens/s, generated tokens/s and the
  model-FLOPs utilisation (MFU, below);
- PA-SFT steps, full fine-tune then LoRA, through `iadr1.train.sft.run_sft` with the model's published recipe
  (batch 1 x accumulation 2, gradient checkpointing, vision frozen, bf16 autocast over fp32 master weights), and
  SC-GRPO steps through `iadr1.train.grpo.run_grpo` (G = 4, the published 24 completions per optimizer step as one
  GPU runs them: batch 6 x accumulation 4, transformers rollouts of a fixed length `--grpo-tokens`, KL to a reference
  model): seconds per optimizer step (median of the steps after the first, which is warm-up), samples/s, peak GPU
  memory. DeepSpeed is off (one GPU) and the final save is skipped (not part of a step).

Each measurement is guarded: an error (an out-of-memory at batch 32, say) is recorded and the next one runs; a
measurement that would not fit the time left or the GPU's memory is recorded as skipped with the reason; each model
runs in its own worker process, which the suite kills at the budget, so a run stopped at the limit keeps everything
it measured. Peak GPU memory is `torch.cuda.max_memory_allocated()`, reset before each measurement.

MFU (inference). Model FLOPs of the useful work (padding and recomputation not counted), over the measured
seconds, against the GPU's bf16 matrix peak (`PEAK_BF16_FLOPS`). A forward pass costs 2 FLOPs per parameter per
token for the dense layers (every matrix multiply-accumulate) plus the attention scores and the weighted sum:

    vision (per image, n patches of 14x14 px):  2 x (patch embedding + vision blocks) x n + 2 x merger x n / 4
                                                + sum over vision layers of 4 x n x L x d_vision
                                                (L = n for full-attention layers, the 8x8-patch window, 64, for
                                                Qwen2.5-VL's windowed layers)
    prefill (T prompt tokens):                  2 x decoder-layer parameters x T + 2 x lm_head (last position)
                                                + layers x 2 x T^2 x d_attn          (causal: half the T x T scores)
    each further generated token (context c):   2 x (decoder-layer parameters + lm_head) + layers x 4 x c x d_attn

d_attn = attention heads x head dim (= hidden size for Qwen2/2.5). For Qwen2.5-VL-3B and one native 1024x1024
image (1369 image and 60 text tokens) this gives 15.9 TFLOP of prefill (8.2 language model, 7.7 vision tower;
../shared/GPU.md's limit takes 16.5). Decoding is bound by memory bandwidth, not matrix throughput, so MFU falls with
the share of decode steps: it is a measure of how far the whole request is from the compute limit.

Wheels. The GPU machine has torch, transformers, accelerate, peft, pandas, pyarrow... but not trl, datasets,
pydantic or msgspec, and no network. Download them here, for Python 3.12 on x86-64, into a folder the device
copy carries (the repository's `.whl/`, ignored through .git/info/exclude), then pass `--wheels .whl`: the suite
pip-installs every wheel there (`--no-index --no-deps --target`) before it imports iadr1's training code:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        trl==1.16.0 datasets==5.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.7.0 \\
        typing-inspection==0.4.5 typing-extensions==4.16.0 msgspec==0.23.0 dill==0.4.1 multiprocess==0.70.19

Ten wheels, 4.9 MB (4.7 MiB) in all, inside the 64 MiB the device copy may carry with the repository (about 2 MB).
`--no-deps` because the machine already has the other requirements (pandas, pyarrow, xxhash, fsspec, huggingface-hub,
accelerate, transformers); the versions are those of iadr1/versions.py TESTED and pyproject.toml. The one-line
device command is in docs/performance.md ("The GPU suite").

Figures are recorded in the JSON with the settings that produced them, the machine (GPU, torch, CUDA, transformers,
trl, peft, accelerate, datasets) and the errors and skips per measurement. `--small` (implied by `--device cpu`)
runs the same code on tiny shapes of the same architectures; tests/test_gpu_suite.py runs it in the slow tier.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

START = time.time()  # the budget counts from here (wheels, imports and data included)
ROOT = Path(__file__).resolve().parents[1]
RESULT_NAME = "gpu_suite.json"
LOG_NAME = "gpu_suite.log"

# The H200's bf16 dense matrix throughput as measured on this workplace's H200s: an 8192x8192x8192 bf16 matmul
# through PyTorch ran at 769-798 TFLOP/s (.library/device/KINDS.md, 2026-10-28 and 2026-11-04; NVIDIA's datasheet
# says 989 TFLOP/s dense). MFU is reported against the practical figure. `--peak-tflops` sets another.
PEAK_BF16_FLOPS = 790e12
PEAK_SOURCE = "H200 bf16 8192^3 torch.matmul as measured on this workplace's H200 (769-798 TFLOP/s); datasheet 989"

# ------------------------------------------------------------------------------------------------------------------
# The architectures: published config.json values (Hugging Face, Qwen/<name>), checked against the hub files
# ------------------------------------------------------------------------------------------------------------------
_QWEN_IMAGE_PROCESSOR = {  # preprocessor_config.json of all three (Qwen2VLImageProcessor)
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

ARCHS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl_3b": {
        "hub": "Qwen/Qwen2.5-VL-3B-Instruct",
        "recipe": "qwen2.5-vl-3b",
        "config": {
            "model_type": "qwen2_5_vl",
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "max_window_layers": 70,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "sliding_window": 32768,
            "use_sliding_window": False,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "vocab_size": 151936,
            "vision_config": {
                "depth": 32,
                "hidden_act": "silu",
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "in_chans": 3,
                "out_hidden_size": 2048,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2,
                "temporal_patch_size": 2,
            },
        },
    },
    "qwen2_vl_2b": {
        "hub": "Qwen/Qwen2-VL-2B-Instruct",
        "recipe": "qwen2-vl-2b",
        "config": {
            "model_type": "qwen2_vl",
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "max_window_layers": 28,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "sliding_window": 32768,
            "use_sliding_window": False,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "vocab_size": 151936,
            "vision_config": {
                "depth": 32,
                "embed_dim": 1280,
                "mlp_ratio": 4,
                "num_heads": 16,
                "in_chans": 3,
                "hidden_size": 1536,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
        },
    },
    "qwen2_5_vl_7b": {
        "hub": "Qwen/Qwen2.5-VL-7B-Instruct",
        "recipe": "qwen2.5-vl-7b",
        "config": {
            "model_type": "qwen2_5_vl",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "max_window_layers": 28,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "sliding_window": 32768,
            "use_sliding_window": False,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "vocab_size": 152064,
            "vision_config": {
                "depth": 32,
                "hidden_act": "silu",
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "in_chans": 3,
                "out_hidden_size": 3584,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2,
                "temporal_patch_size": 2,
            },
        },
    },
}
DEFAULT_MODELS = "qwen2_5_vl_3b,qwen2_vl_2b"

# --small: the same architectures (classes, attention layout, M-RoPE, windows, merger, tied head) at toy sizes.
_SMALL_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 1024,
    "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
}
_SMALL_VISION = {
    "qwen2_vl": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "qwen2_5_vl": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "fullatt_block_indexes": [1],
    },
}

# Time a measurement needs at least (seconds): one that would not fit what is left of the budget is skipped.
NEEDS = {
    "gpu": {"build": 45, "infer": 12, "sft": 50, "grpo": 80},
    "small": {"build": 2, "infer": 1, "sft": 4, "grpo": 5},
}


@dataclasses.dataclass
class Settings:
    """What the measurements run with (GPU defaults; `small()` for the CPU test)."""

    image_size: int = 1024  # MVTec's native side
    capped_pixels: int = 480_000  # the SC-GRPO cap (max_pixels of the recipes)
    new_tokens: int = 128  # fixed output length of the inference measurements
    batches: tuple[int, ...] = (1, 8, 32)
    reps: tuple[int, ...] = (2, 2, 1)  # timed batches per batch size
    sft_steps: int = 5
    grpo_steps: int = 3
    grpo_batch: int = 6  # completions per micro-step: the recipes' 6 per GPU ...
    grpo_accum: int = 4  # ... x 4 = the published 24 completions (6 prompts x G=4) per optimizer step on one GPU
    grpo_tokens: int = 128  # fixed completion length (published: up to 512)
    test_images: int = 8
    train_images: int = 8

    @classmethod
    def small(cls) -> Settings:
        """For the CPU test: 112 px images (16 image tokens; 4 at the 56x56 cap), batches 1/4/8, 8 tokens out,
        3 optimizer steps, SC-GRPO with one prompt x G=4 per step."""
        return cls(
            image_size=112,
            capped_pixels=56 * 56,
            new_tokens=8,
            batches=(1, 4, 8),
            reps=(1, 1, 1),
            sft_steps=3,
            grpo_steps=3,
            grpo_batch=4,
            grpo_accum=1,
            grpo_tokens=8,
        )


# ------------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def install_wheels(folder: Path, site: Path) -> dict[str, Any]:
    """pip-install every wheel of `folder` into `site` (offline, no dependency resolution: the machine has the rest)
    and put `site` first on the import path, for this process and the workers (PYTHONPATH)."""
    t0 = time.perf_counter()
    wheels = sorted(str(p) for p in Path(folder).glob("*.whl"))
    info: dict[str, Any] = {"dir": str(folder), "wheels": [Path(w).name for w in wheels], "site": str(site)}
    if not wheels:
        info["error"] = f"no .whl files in {folder}"
        return info
    flags = ["-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
    cmd = [sys.executable, "-m", "pip", "install", *flags, "--find-links", str(folder), "--target", str(site), *wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        info["error"] = (proc.stderr or proc.stdout).strip()[-1000:]
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return info


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "host": platform.node(),
        **{f"{k}_version": v for k, v in _versions().items()},
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


# ------------------------------------------------------------------------------------------------------------------
# Building a random checkpoint with the real architecture
# ------------------------------------------------------------------------------------------------------------------
def transformers_configs(name: str, small: bool, ids: dict[str, int]) -> tuple[str, dict, dict, dict]:
    """(model_type, text_config, vision_config, top-level kwargs) for transformers 5 from the published values."""
    pub = json.loads(json.dumps(ARCHS[name]["config"]))  # a deep copy
    mtype = pub.pop("model_type")
    vision = pub.pop("vision_config")
    if small:
        pub.update(_SMALL_TEXT)
        vision.update(_SMALL_VISION[mtype])
    vision.pop("in_chans", None)
    vision["in_channels"] = 3
    if mtype == "qwen2_vl":
        vision["hidden_size"] = pub["hidden_size"]  # Qwen2-VL's merger outputs the text width under this name
    else:
        vision["out_hidden_size"] = pub["hidden_size"]
    rope = {"rope_type": "default", "rope_theta": pub.pop("rope_theta"), **pub.pop("rope_scaling")}
    rope.pop("type")  # "mrope" in the published files: transformers 5 reads M-RoPE from mrope_section
    tie = pub.pop("tie_word_embeddings")
    text = {
        **pub,
        "rope_parameters": rope,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": tie,
    }
    top = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": tie,
    }
    return mtype, text, vision, top


@dataclasses.dataclass
class FlopModel:
    """The parameter counts and widths the FLOP formulas of the module docstring need (read off the model)."""

    llm_dense: int  # decoder-layer parameters (2 FLOPs per token each)
    lm_head: int  # vocabulary x hidden
    llm_layers: int
    llm_attn_width: int  # heads x head dim
    vis_dense: int  # patch embedding + vision blocks (per patch)
    vis_merger: int  # merger MLP (per merged token)
    merge: int  # patches per side merged into one token
    vis_width: int
    vis_full_layers: int
    vis_window_layers: int
    window_patches: int  # patches per attention window of the windowed layers (0: none)
    params_total: int
    params_vision: int

    def vision(self, patches: int) -> float:
        attn = self.vis_full_layers * 4 * patches * patches * self.vis_width
        if self.vis_window_layers:
            attn += self.vis_window_layers * 4 * patches * min(patches, self.window_patches) * self.vis_width
        return 2 * self.vis_dense * patches + 2 * self.vis_merger * patches / self.merge**2 + attn

    def prefill(self, tokens: int) -> float:
        return 2 * self.llm_dense * tokens + 2 * self.lm_head + self.llm_layers * 2 * tokens**2 * self.llm_attn_width

    def decode(self, context: int, new_tokens: int) -> float:
        """The forward passes after the prefill: one per generated token but the first (the prefill's)."""
        steps = max(0, new_tokens - 1)
        ctx_sum = steps * context + steps * (steps + 1) / 2  # contexts context+1 .. context+steps
        return steps * 2 * (self.llm_dense + self.lm_head) + self.llm_layers * 4 * ctx_sum * self.llm_attn_width

    def request(self, patches: list[int], prompt_tokens: int, new_tokens: int) -> float:
        return (
            sum(self.vision(p) for p in patches) + self.prefill(prompt_tokens) + self.decode(prompt_tokens, new_tokens)
        )


def flop_model(model: Any, vision_cfg: Any, text_cfg: Any) -> FlopModel:
    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    inner = model.model
    visual, lm = inner.visual, inner.language_model
    depth = len(visual.blocks)
    full = getattr(vision_cfg, "fullatt_block_indexes", None)
    full_layers = len(full) if full is not None else depth
    patch = vision_cfg.patch_size
    window = getattr(vision_cfg, "window_size", None)
    vis_width = getattr(vision_cfg, "embed_dim", None) or vision_cfg.hidden_size
    heads = text_cfg.num_attention_heads
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // heads
    return FlopModel(
        llm_dense=count(lm.layers),
        lm_head=model.lm_head.weight.numel(),
        llm_layers=len(lm.layers),
        llm_attn_width=heads * head_dim,
        vis_dense=count(visual.patch_embed) + count(visual.blocks),
        vis_merger=count(visual.merger),
        merge=vision_cfg.spatial_merge_size,
        vis_width=vis_width,
        vis_full_layers=full_layers,
        vis_window_layers=depth - full_layers,
        window_patches=(window // patch) ** 2 if window and full is not None else 0,
        params_total=count(model),
        params_vision=count(visual),
    )


def make_model(name: str, small: bool, device: str, dtype: Any) -> tuple[Any, Any, dict[str, int]]:
    """(model, tokenizer, special-token ids): a random `name` (`ARCHS`) on `device` ("meta": shapes only), with an
    offline tokenizer (`iadr1.models.tiny`'s byte-level BPE with the Qwen special tokens; its vocabulary is small,
    the model's embedding has the published size)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    from iadr1.models.tiny import _QWEN_SPECIALS, _build_tokenizer

    tok = _build_tokenizer(_QWEN_SPECIALS, 4096, 0, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    mtype, text, vision, top = transformers_configs(name, small, ids)
    prefix = "Qwen2VL" if mtype == "qwen2_vl" else "Qwen2_5_VL"
    config = getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, **top)
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, f"{prefix}ForConditionalGeneration")._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"]
    )
    return model, tok, ids


def build_checkpoint(name: str, folder: Path, small: bool, device: str) -> dict[str, Any]:
    """A random checkpoint of `name` saved to `folder` (weights in the device's dtype, processor with the published
    image-processor settings, the family's chat template, generation config): what `from_pretrained`, iadr1's
    backends and its trainers load."""
    import torch
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from iadr1.models.tiny import QWEN2_VL_CHAT_TEMPLATE

    t0 = time.perf_counter()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, tok, _ = make_model(name, small, device, dtype)
    mtype = model.config.model_type
    prefix = "Qwen2VL" if mtype == "qwen2_vl" else "Qwen2_5_VL"
    flops = flop_model(model, model.config.vision_config, model.config.text_config)
    model_vocab = model.config.text_config.vocab_size
    t_init = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    ip = _QWEN_IMAGE_PROCESSOR
    size = {"shortest_edge": ip["min_pixels"], "longest_edge": ip["max_pixels"]}
    common = {
        "size": size,
        "patch_size": ip["patch_size"],
        "temporal_patch_size": ip["temporal_patch_size"],
        "merge_size": ip["merge_size"],
        "image_mean": ip["image_mean"],
        "image_std": ip["image_std"],
    }
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=Qwen2VLImageProcessor(min_pixels=ip["min_pixels"], max_pixels=ip["max_pixels"], **common),
        video_processor=Qwen2VLVideoProcessor(**common),
        tokenizer=tok,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return {
        "hub_config": ARCHS[name]["hub"],
        "model_type": mtype,
        "recipe": ARCHS[name]["recipe"],
        "dtype": str(dtype).removeprefix("torch."),
        "params": flops.params_total,
        "params_vision": flops.params_vision,
        "params_decoder_layers": flops.llm_dense,
        "lm_head": flops.lm_head,
        "vocab_size": model_vocab,
        "tokenizer_size": len(tok),
        "init_s": round(t_init, 2),
        "build_s": round(time.perf_counter() - t0, 2),
        "flops": dataclasses.asdict(flops),
    }


# ------------------------------------------------------------------------------------------------------------------
# Measurements (run inside a model's worker)
# ------------------------------------------------------------------------------------------------------------------
class Memory:
    """Peak memory of one measurement: torch.cuda.max_memory_allocated (reset at the start) on a GPU; the process's
    peak resident set so far on CPU (which cannot be reset)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def figures(self) -> dict[str, float | None]:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        gpu = self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return {"peak_gpu_gib": None if gpu is None else round(gpu, 3), "peak_rss_gib": round(rss, 3)}


def free_memory(device: str) -> float | None:
    """Collect garbage, empty CUDA's cache; the GPU memory still allocated (GiB), a check that nothing leaked."""
    import torch

    gc.collect()
    if not device.startswith("cuda"):
        return None
    torch.cuda.empty_cache()
    return round(torch.cuda.memory_allocated() / 2**30, 3)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _answer(backend: Any, reqs: list) -> list:
    """One batch through the backend's public `generate` (batch size = len(reqs)). A batch that fails (an
    out-of-memory, say) is an error here: the backend would answer it request by request instead, which
    `_spy_failures` cuts short, so that such a run is neither reported as the batch's nor slow."""
    backend.batch_size = len(reqs)
    backend._suite_failures = []
    results = [res for _, res in backend.generate(reqs)]
    errors = backend._suite_failures or [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"batch of {len(reqs)} failed: {errors[0]}")
    return results


# For tests/test_gpu_suite.py: IADR1_GPU_SUITE_FAULTS="oom:8,hang:sft_full" makes every batch of 8 or more
# requests fail as an out-of-memory would, and the measurement sft_full hang (until the suite kills the worker).
FAULTS = dict(f.split(":", 1) for f in os.environ.get("IADR1_GPU_SUITE_FAULTS", "").split(",") if ":" in f)


def _spy_failures(backend: Any) -> None:
    """Note the exceptions of the backend's batched step (its `_run_batch`, whatever its arguments) before the
    backend's per-request fallback hides them; after one, the retries fail at once."""
    backend._suite_failures = []
    inner = getattr(backend, "_run_batch", None)
    if inner is None:
        return

    def spy(*a: Any, **k: Any) -> Any:
        if backend._suite_failures:
            raise RuntimeError("not retried: the batch failed")
        try:
            if "oom" in FAULTS and backend.batch_size >= int(FAULTS["oom"]):
                raise RuntimeError("CUDA out of memory (simulated: IADR1_GPU_SUITE_FAULTS)")
            return inner(*a, **k)
        except Exception as e:
            backend._suite_failures.append(_short(e))
            raise

    backend._run_batch = spy


def measure_infer(backend: Any, requests: list, m: dict, ctx: dict) -> dict[str, Any]:
    """One inference measurement: a warm-up batch (2 tokens), then `reps` timed batches of `batch` requests at a
    fixed output length, all through `TransformersBackend.generate`."""
    s = m["settings"]
    batch, reps, new = s["batch"], s["reps"], s["new_tokens"]
    backend.max_pixels = s["max_pixels"]
    reqs = [requests[i % len(requests)] for i in range(batch)]
    gen = backend.model.generation_config
    mem = Memory(ctx["device"])
    t0 = time.perf_counter()
    backend.options = dataclasses.replace(ctx["options"], max_new_tokens=2)
    gen.min_new_tokens = 2
    _answer(backend, reqs)  # warm-up at this shape
    _sync(ctx["device"])
    warmup = time.perf_counter() - t0
    backend.options = dataclasses.replace(ctx["options"], max_new_tokens=new)
    gen.min_new_tokens = new  # EOS suppressed until the fixed length: every row generates exactly `new` tokens
    results = []
    t0 = time.perf_counter()
    for _ in range(reps):
        results += _answer(backend, reqs)
    _sync(ctx["device"])
    seconds = time.perf_counter() - t0
    figures = mem.figures()
    # The FLOPs of the work done, from the very inputs the backend builds (untimed: built again after the clock).
    inputs = backend.inputs(reqs)
    grid = inputs["image_grid_thw"].tolist()
    patches = [int(t * h * w) for t, h, w in grid]  # one image per request (zero-shot)
    prompt = [int(x) for x in inputs["attention_mask"].sum(dim=1).tolist()]
    fm = FlopModel(**ctx["flops"])
    flop = reps * sum(fm.request([patches[i]], prompt[i], new) for i in range(batch))
    images = batch * reps
    prompt_tokens = reps * sum(prompt)
    generated = sum(r.completion_tokens or 0 for r in results)
    peak = ctx["peak_flops"]
    return {
        "images": images,
        "seconds": seconds,
        "warmup_s": round(warmup, 3),
        "images_per_s": images / seconds,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_per_s": prompt_tokens / seconds,
        "generated_tokens": generated,
        "generated_tokens_per_s": generated / seconds,
        "fixed_length": generated == images * new,
        "image_tokens_per_image": patches[0] // (fm.merge**2),
        "image_size_used": [int(grid[0][2] * ctx["patch"]), int(grid[0][1] * ctx["patch"])],
        "model_tflop": flop / 1e12,
        "tflops_per_s": flop / seconds / 1e12,
        "mfu": (flop / seconds / peak) if peak else None,
        **figures,
    }


class StepClock:
    """A TrainerCallback that notes the wall time at the end of every optimizer step (after a CUDA sync)."""

    def __new__(cls, device: str):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
                _sync(device)
                self.times.append(time.perf_counter())

        return _Clock()


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def train_fits(stage: str, lora: bool, flops: dict, gpu_bytes: int | None) -> str | None:
    """Why a run would not fit the GPU (None: it fits, by this estimate): fp32 master weights (4 B/param), and for a
    full fine-tune fp32 gradients and AdamW's two moments (12 B per trainable parameter; vision frozen), plus an fp32
    reference model for SC-GRPO (LoRA disables the adapter instead); 15% left for activations."""
    if gpu_bytes is None:
        return None
    total, trainable = flops["params_total"], flops["params_total"] - flops["params_vision"]
    need = 4 * total + (0 if lora else 12 * trainable) + (4 * total if stage == "grpo" and not lora else 0)
    if need > 0.85 * gpu_bytes:
        gib = 2**30
        return f"would not fit: ~{need / gib:.0f} GiB of weights and optimizer state on a {gpu_bytes / gib:.0f} GiB GPU"
    return None


# The resolved training options recorded with each training measurement (recipe + the suite's overrides).
RESOLVED = ("batch_size", "grad_accum", "gradient_checkpointing", "lora", "lora_r", "freeze_vision", "max_pixels", "lr")


def measure_train(m: dict, ctx: dict) -> dict[str, Any]:
    """PA-SFT or SC-GRPO steps through iadr1's own `run_sft` / `run_grpo`, with the model's published recipe."""
    from iadr1.train import common
    from iadr1.train.config import GRPORunConfig, SFTRunConfig, load_config
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    s = m["settings"]
    stage = m["kind"]
    out = Path(ctx["work"]) / "runs" / f"{ctx['model']}-{m['id']}"
    shutil.rmtree(out, ignore_errors=True)
    trl_args: dict[str, Any] = {"disable_tqdm": True}
    overrides: dict[str, Any] = {
        "model": str(ctx["folder"]),
        "dataset": str(ctx["data"][f"{stage}_file"]),
        "image_root": str(ctx["data"]["image_root"]),
        "output_dir": str(out),
        "max_steps": s["steps"],
        "lora": s["lora"],
        "deepspeed": "none",  # one GPU (and DeepSpeed is not installed there)
        "save_steps": 10**6,
        "resume": False,
        "logging_steps": 1,
        "report_to": "none",
        "trl_args": trl_args,
    }
    if stage == "grpo":
        # A fixed completion length (EOS suppressed), and none of the tokenizer's special tokens sampled: a random
        # policy would otherwise emit <|vision_start|> & co, which the loss pass would read as image markers.
        specials = sorted(set(ctx["special_ids"]) - {ctx["eos_id"]})
        trl_args["generation_kwargs"] = {"min_new_tokens": s["completion_tokens"], "suppress_tokens": specials}
        overrides.update(
            batch_size=s["batch_size"],
            grad_accum=s["grad_accum"],
            vllm="off",
            max_completion_length=s["completion_tokens"],
            completions_to_log=0,
        )
    cls = SFTRunConfig if stage == "sft" else GRPORunConfig
    cfg = load_config(cls, recipe=ctx["recipe"], overrides=overrides)
    clock = StepClock(ctx["device"])
    captured: dict[str, Any] = {}

    def no_final_save(trainer: Any, cfg: Any) -> Path:  # the final save is not part of a training step
        captured["log_history"] = list(trainer.state.log_history)
        return Path(cfg.output_dir)

    free_memory(ctx["device"])
    mem = Memory(ctx["device"])
    t0 = time.perf_counter()
    with _patched(common, "save_final", no_final_save):
        (run_sft if stage == "sft" else run_grpo)(cfg, callbacks=[clock])
    seconds = time.perf_counter() - t0
    figures = mem.figures()
    times = clock.times
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]  # the first step (warm-up) is left out
    if not steps:
        raise RuntimeError(f"{len(times)} optimizer step(s) recorded: need at least 2 to time one after warm-up")
    per_step = statistics.median(steps)
    samples = cfg.batch_size * cfg.grad_accum
    logs = [h for h in captured.get("log_history", []) if "loss" in h or "num_tokens" in h]
    tokens = [h["num_tokens"] for h in logs if "num_tokens" in h]
    lengths = [h["completions/mean_length"] for h in logs if "completions/mean_length" in h]
    record = {
        "seconds": round(seconds, 3),
        "first_step_end_s": round(times[0] - t0, 3),  # load, record and image checks, trainer, the warm-up step
        "optimizer_steps": len(times),
        "timed_steps": len(steps),
        "step_seconds": [round(x, 4) for x in steps],
        "seconds_per_step": per_step,
        "samples_per_step": samples,
        "samples_per_s": samples / per_step,
        "tokens_per_step": (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else None,
        "settings_resolved": {k: getattr(cfg, k) for k in RESOLVED},
        **figures,
    }
    record["settings_resolved"]["precision"] = cfg.resolved_precision()  # auto: bf16 on a GPU, fp32 on CPU
    if stage == "grpo":
        record["prompts_per_s"] = samples / cfg.num_generations / per_step
        record["completion_length"] = statistics.mean(lengths) if lengths else None
        record["settings_resolved"].update(
            num_generations=cfg.num_generations, beta=cfg.beta, max_completion_length=cfg.max_completion_length
        )
    shutil.rmtree(out, ignore_errors=True)
    return record


# ------------------------------------------------------------------------------------------------------------------
# The plan, the worker, the parent
# ------------------------------------------------------------------------------------------------------------------
def plan_for(model: str, st: Settings, only: set[str] | None) -> list[dict[str, Any]]:
    """The measurements of one model, in order of value: inference (native images, then capped), PA-SFT full,
    SC-GRPO full, PA-SFT LoRA. `only`: ids or kinds to keep."""

    def m(mid: str, kind: str, **settings: Any) -> dict[str, Any]:
        return {"id": mid, "kind": kind, "settings": settings}

    plan = [
        m(f"infer_{size}_b{b}", "infer", batch=b, reps=r, max_pixels=cap, new_tokens=st.new_tokens,
          image_size=st.image_size, greedy=True)
        for size, cap in (("native", None), ("capped", st.capped_pixels))
        for b, r in zip(st.batches, st.reps, strict=True)
    ]  # fmt: skip
    plan += [
        m("sft_full", "sft", lora=False, steps=st.sft_steps),
        m("grpo_full", "grpo", lora=False, steps=st.grpo_steps, batch_size=st.grpo_batch, grad_accum=st.grpo_accum,
          completion_tokens=st.grpo_tokens, num_generations=4),
        m("sft_lora", "sft", lora=True, steps=st.sft_steps),
    ]  # fmt: skip
    return [x for x in plan if not only or x["id"] in only or x["kind"] in only]


def worker(args: argparse.Namespace) -> None:
    """One model: build it, then every measurement of its plan; one JSON line per event on `--records`."""
    job = json.loads(Path(args.worker_job).read_text())
    records = Path(job["records"])
    deadline = job["deadline"]
    device, small, name = job["device"], job["small"], job["model"]
    needs = NEEDS["small" if small else "gpu"]

    def emit(event: dict[str, Any]) -> None:
        event["at_s"] = round(time.time() - job["start"], 2)  # since the suite started: where the budget went
        if event["event"] == "result":
            event["record"]["at_s"] = event["at_s"]
        with records.open("a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    emit({"event": "machine", "machine": machine_info(device)})
    folder = Path(job["work"]) / "models" / name
    if time.time() + needs["build"] > deadline:
        emit({"event": "model", "model": name, "skipped": f"no time left to build the model (~{needs['build']} s)"})
        return
    emit({"event": "start", "model": name, "id": "build"})
    try:
        info = build_checkpoint(name, folder, small, device)
    except Exception as e:  # recorded; nothing else can run without a model
        emit({"event": "model", "model": name, "error": _short(e), "traceback": traceback.format_exc()[-3000:]})
        return
    emit({"event": "model", "model": name, "info": {**info, "built_at_s": round(time.time() - job["start"], 2)}})

    from iadr1.data.schemas import load_test_file
    from iadr1.infer.base import GenerationOptions
    from iadr1.infer.runner import InferConfig, build_request
    from iadr1.models.tiny import _QWEN_SPECIALS

    data = job["data"]
    icfg = InferConfig(model="-", test_file=data["test_file"], image_root=data["image_root"], out="-")
    requests = [build_request(k, e, icfg) for k, e in load_test_file(data["test_file"]).items()]
    requests = [r for r in requests if not isinstance(r, str)]
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if device.startswith("cuda") else None
    ctx: dict[str, Any] = {
        "device": device,
        "work": job["work"],
        "model": name,
        "folder": folder,
        "data": data,
        "recipe": ARCHS[name]["recipe"],
        "flops": info["flops"],
        "peak_flops": job["peak_flops"],
        "patch": ARCHS[name]["config"]["vision_config"]["patch_size"],
        "options": GenerationOptions(max_new_tokens=job["new_tokens"], temperature=0.0, logprobs=True),
    }
    backend = None
    for m in job["plan"]:
        mid, kind = m["id"], m["kind"]
        left = deadline - time.time()
        base = {"kind": kind, "settings": m["settings"]}
        why = f"budget: {left:.0f} s left, needs ~{needs[kind]} s" if left < needs[kind] else None
        if why is None and kind != "infer":
            why = train_fits(kind, m["settings"]["lora"], info["flops"], gpu_bytes)
        if why:
            emit({"event": "result", "model": name, "id": mid, "record": {**base, "status": "skipped", "reason": why}})
            continue
        emit({"event": "start", "model": name, "id": mid})
        if FAULTS.get("hang") == mid:
            time.sleep(3600)
        try:
            if kind == "infer":
                if backend is None:
                    from iadr1.infer.transformers_backend import TransformersBackend

                    t0 = time.perf_counter()
                    backend = TransformersBackend(folder, ctx["options"], device=device)
                    _spy_failures(backend)
                    base["backend_load_s"] = round(time.perf_counter() - t0, 2)
                rec = measure_infer(backend, requests, m, ctx)
            else:
                if backend is not None:
                    backend.close()
                    backend = None
                    free_memory(device)
                if "special_ids" not in ctx:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(folder)
                    ctx["special_ids"] = [tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS]
                    ctx["eos_id"] = tok.convert_tokens_to_ids("<|im_end|>")
                rec = measure_train(m, ctx)
            record = {**base, "status": "ok", **rec}
        except Exception as e:  # one failed measurement (an OOM at batch 32) must not sink the rest
            record = {**base, "status": "error", "error": _short(e), "traceback": traceback.format_exc()[-3000:]}
        left_after = free_memory(device)
        if kind != "infer":
            record["gpu_gib_left_after"] = left_after
        emit({"event": "result", "model": name, "id": mid, "record": record})
    if backend is not None:
        backend.close()
    shutil.rmtree(folder, ignore_errors=True)


class Suite:
    """The parent: data, one worker per model, the JSON rewritten after every event."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / RESULT_NAME
        self.t0 = START
        self.deadline = self.t0 + args.budget_s
        self.result: dict[str, Any] = {
            "suite": "iadr1 benchmarks/gpu_suite.py",
            "command": [Path(sys.executable).name, *sys.argv],
            "started": _now(),
            "finished": None,
            "complete": False,
            "counts": {},
            "elapsed_s": 0.0,
            "budget_s": args.budget_s,
            "small": args.small,
            "device": args.device,
            "peak_bf16_flops": args.peak_flops,
            "peak_source": args.peak_source,
            "settings": dataclasses.asdict(args.settings),
            "machine": None,
            "wheels": None,
            "data": None,
            "models": {},
            "errors": [],
        }

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.time() - self.t0, 2)
        write_json(self.path, self.result)

    def run(self) -> dict[str, Any]:
        args = self.args
        self.save()
        self.result["data"] = self.make_data()
        self.save()
        for name in args.models:
            plan = plan_for(name, args.settings, args.only)
            self.result["models"][name] = {
                "hub_config": ARCHS[name]["hub"],
                "measurements": {
                    m["id"]: {"kind": m["kind"], "settings": m["settings"], "status": "pending"} for m in plan
                },
            }
            self.save()
            if self.result["data"].get("error"):
                self.fail_pending(name, f"no data: {self.result['data']['error']}")
                continue
            self.run_worker(name, plan)
        self.result["finished"] = _now()
        statuses = [rec["status"] for model in self.result["models"].values() for rec in model["measurements"].values()]
        self.result["counts"] = {k: statuses.count(k) for k in sorted(set(statuses))}
        self.result["complete"] = bool(statuses) and set(statuses) == {"ok"}  # every planned measurement measured
        self.save()
        return self.result

    def make_data(self) -> dict[str, Any]:
        """The synthetic benchmark (iadr1's own builder) at the native size: test images and the SFT/GRPO records."""
        t0 = time.perf_counter()
        st = self.args.settings
        try:
            from iadr1.data.synthetic import make_dataset

            root = Path(self.args.work) / "data"
            shutil.rmtree(root, ignore_errors=True)
            ds = make_dataset(
                root,
                n_train=st.train_images,
                n_test=st.test_images,
                size=st.image_size,
                templates=1,
                classes=("brick", "coins"),
                seed=0,
            )
        except Exception as e:  # recorded: the suite goes on without data, reporting why
            return {"error": _short(e)}
        return {
            "test_file": str(ds.test_file),
            "image_root": str(ds.image_root),
            "sft_file": str(ds.sft_file),
            "grpo_file": str(ds.grpo_file),
            "counts": ds.counts,
            "image_size": st.image_size,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def fail_pending(self, name: str, why: str, timeout: bool = False) -> None:
        """Close the measurements a worker did not report: the one in flight is an error (or a timeout, at the
        budget); those not started are errors (or skipped, at the budget)."""
        for rec in self.result["models"][name]["measurements"].values():
            if rec["status"] == "running":
                rec.update(status="timeout" if timeout else "error", error=why)
            elif rec["status"] == "pending":
                rec.update(
                    {"status": "skipped", "reason": f"budget: {why}"} if timeout else {"status": "error", "error": why}
                )

    def run_worker(self, name: str, plan: list[dict[str, Any]]) -> None:
        args = self.args
        work = Path(args.work)
        records = work / f"records-{name}.jsonl"
        records.unlink(missing_ok=True)
        job = {
            "model": name,
            "plan": plan,
            "records": str(records),
            "start": self.t0,
            "deadline": self.deadline,
            "device": args.device,
            "small": args.small,
            "work": str(work),
            "data": self.result["data"],
            "peak_flops": args.peak_flops,
            "new_tokens": args.settings.new_tokens,
        }
        job_file = work / f"job-{name}.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        model = self.result["models"][name]
        with (self.out / LOG_NAME).open("a") as log:
            log.write(f"\n===== {name} worker, {_now()} =====\n")
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker-job", str(job_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
            )  # in the suite's process group: a kill of the whole command (the device's time limit) ends it too
            seen = 0
            timed_out = False
            while True:
                done = proc.poll() is not None
                if records.exists():
                    text = records.read_text()
                    lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only: one may be half written
                    for line in lines[seen:]:
                        self.take(name, json.loads(line))
                    if len(lines) > seen:
                        seen = len(lines)
                        self.save()
                if done:
                    break
                if time.time() > self.deadline + 5:  # the worker skips what would not fit; this is the backstop
                    timed_out = True
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.5)
        if timed_out:
            model["worker"] = "killed at the budget"
            self.fail_pending(name, "the suite stopped at its time budget", timeout=True)
        elif proc.returncode != 0:
            tail = (self.out / LOG_NAME).read_text().splitlines()[-5:]
            why = f"worker exited with status {proc.returncode}: {' | '.join(tail)[-500:]}"
            model["worker"] = why
            self.fail_pending(name, why)
            self.result["errors"].append(f"{name}: {why}")
        else:
            self.fail_pending(name, "not measured: the worker ended before it")
        self.save()

    def take(self, name: str, event: dict[str, Any]) -> None:
        """Fold one worker event into the result."""
        model = self.result["models"][name]
        kind = event["event"]
        if kind == "machine":
            self.result["machine"] = self.result["machine"] or event["machine"]
        elif kind == "start" and event["id"] in model["measurements"]:
            model["measurements"][event["id"]]["status"] = "running"
        elif kind == "model":
            if "skipped" in event:
                model["skipped"] = event["skipped"]
                self.fail_pending(name, event["skipped"], timeout=True)
            elif "error" in event:
                model["error"] = event["error"]
                self.fail_pending(name, f"model not built: {event['error']}")
            else:
                model.update(event["info"])
        elif kind == "result":
            model["measurements"][event["id"]] = event["record"]


def summary(result: dict[str, Any]) -> str:
    """A short table of the figures (also the last lines of the run's output)."""

    def mem(r: dict[str, Any]) -> str:
        return f"peak GPU {r['peak_gpu_gib']:.1f} GiB" if r.get("peak_gpu_gib") is not None else "CPU"

    lines = []
    for name, model in result["models"].items():
        lines.append(f"{name} ({model.get('hub_config')}, {model.get('params', 0) / 1e6:,.1f} M parameters):")
        for mid, r in model["measurements"].items():
            if r["status"] != "ok":
                lines.append(f"  {mid:17s} {r['status']}: {r.get('error') or r.get('reason', '')}")
            elif r["kind"] == "infer":
                use = f"MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else f"{r['tflops_per_s']:.3g} TFLOP/s"
                lines.append(
                    f"  {mid:17s} {r['images_per_s']:8.2f} images/s {r['prompt_tokens_per_s']:9.0f} prompt tok/s "
                    f"{r['generated_tokens_per_s']:7.0f} gen tok/s  {use}  {mem(r)}"
                )
            else:
                lines.append(
                    f"  {mid:17s} {r['seconds_per_step']:8.3f} s/step {r['samples_per_s']:8.2f} samples/s "
                    f"({r['timed_steps']} timed)  {mem(r)}"
                )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, help=f"Output folder: {RESULT_NAME} (the figures) and {LOG_NAME} (workers' logs)."
    )
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"Comma list of {', '.join(ARCHS)}.")
    p.add_argument("--budget-s", type=float, default=420.0, help="Wall-clock budget of the whole suite.")
    p.add_argument("--small", action="store_true", help="Tiny shapes of the same architectures (CPU test).")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available); cpu implies --small.")
    p.add_argument("--wheels", type=Path, help="Folder of wheels to pip-install (offline, --no-deps) before the run.")
    p.add_argument(
        "--work", type=Path, help="Scratch folder for models and data (default: /dev/shm when large enough)."
    )
    p.add_argument("--only", help="Comma list of measurement ids or kinds (infer, sft, grpo) to run.")
    p.add_argument("--new-tokens", type=int, help="Fixed output length of the inference measurements.")
    p.add_argument("--grpo-tokens", type=int, help="Fixed completion length of SC-GRPO (published: up to 512).")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak for MFU (default: the H200's on a GPU, none on CPU).")
    p.add_argument("--worker-job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_job:
        return args
    if args.out is None:
        p.error("--out is required")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in ARCHS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(ARCHS)}")
    args.only = {x.strip() for x in args.only.split(",")} if args.only else None
    return args


def resolve(args: argparse.Namespace) -> None:
    """Settings that need torch: imported only now, after the brought wheels are on the path (a typing_extensions
    that torch loaded first would shadow the newer one pydantic needs)."""
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.small = args.small or args.device == "cpu"
    st = Settings.small() if args.small else Settings()
    if args.new_tokens:
        st.new_tokens = args.new_tokens
    if args.grpo_tokens:
        st.grpo_tokens = args.grpo_tokens
    args.settings = st
    if args.peak_tflops:
        args.peak_flops, args.peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    elif args.device.startswith("cuda"):
        args.peak_flops, args.peak_source = PEAK_BF16_FLOPS, PEAK_SOURCE
    else:
        args.peak_flops, args.peak_source = None, "none on CPU (--peak-tflops sets one)"


def work_folder(args: argparse.Namespace) -> Path:
    """Scratch space for the models and data: /dev/shm when it has room (a 3B model is 7.5 GB), else /tmp."""
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return args.work
    shm = Path("/dev/shm")
    big = shm.is_dir() and shutil.disk_usage(shm).free > (4 if args.small else 40) * 2**30
    return Path(tempfile.mkdtemp(prefix="iadr1-gpu-suite-", dir=shm if big else None))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker_job:
        worker(args)
        return 0
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    own_work = args.work is None
    args.small = args.small or args.device == "cpu"
    args.work = work_folder(args)
    wheels = install_wheels(args.wheels, args.work / "site") if args.wheels else None
    resolve(args)
    suite = Suite(args)
    suite.result["wheels"] = wheels
    if wheels and wheels.get("error"):
        suite.result["errors"].append(f"wheels: {wheels['error'][:300]}")
    result = suite.run()
    print(summary(result))
    print(
        f"{'complete' if result['complete'] else 'INCOMPLETE'} in {result['elapsed_s']:.0f} s: {args.out / RESULT_NAME}"
    )
    if own_work:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
