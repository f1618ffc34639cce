"""`iadr1 sft`, `iadr1 grpo`, `iadr1 merge`: parse options, lay them over a recipe/config, call the core.

Every option left out keeps the value of the config file, then the recipe, then the published default
(`iadr1.train.config`). Multi-GPU and multi-node runs use the same commands under a launcher:

    accelerate launch --num_processes 8 -m iadr1 sft --recipe qwen2-vl-2b --model ... --deepspeed zero3
    torchrun --nproc_per_node 8 -m iadr1 grpo --config run.yaml
    deepspeed --num_gpus 8 --module iadr1 sft ...        # appends --local_rank=N, accepted here
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

# Options shared by `sft` and `grpo` (typer reads each default object; sharing them keeps one help text).
_CONFIG = typer.Option(
    None, "--config", "-c", help="YAML config (e.g. a saved iadr1_config.yaml); options override it."
)
_RECIPE = typer.Option(None, "--recipe", "-r", help="Packaged recipe, e.g. qwen2-vl-2b (see docs/training.md).")
_MODEL = typer.Option(None, "--model", "-m", help="Local checkpoint folder to train (never a hub name).")
_DATASET = typer.Option(None, "--dataset", "-d", help="Training records (.json or .jsonl).")
_IMAGE_ROOT = typer.Option(None, "--image-root", help="Folder the records' image paths are relative to.")
_OUTPUT_DIR = typer.Option(None, "--output-dir", "-o", help="Checkpoints, logs and the final model go here.")
_MAX_STEPS = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs).")
_EPOCHS = typer.Option(None, "--epochs", help="Training epochs.")
_LR = typer.Option(None, "--lr", help="Peak learning rate.")
_SEED = typer.Option(None, "--seed", help="Random seed.")
_BATCH = typer.Option(None, "--batch-size", help="Per-device micro-batch (GRPO: completions).")
_ACCUM = typer.Option(None, "--grad-accum", help="Gradient accumulation steps.")
_MAX_PIXELS = typer.Option(None, "--max-pixels", help="Resize images to at most this many pixels.")
_LORA = typer.Option(None, "--lora/--full", help="Train a LoRA adapter (merged at the end) or all weights.")
_FREEZE = typer.Option(
    None,
    "--freeze-vision/--train-vision",
    help="Freeze the vision tower and projector (default, as published).",
)
_GC = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.")
_DEEPSPEED = typer.Option(None, "--deepspeed", help="zero2, zero3 (shipped templates) or a DeepSpeed JSON file.")
_PRECISION = typer.Option(None, "--precision", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
_REPORT = typer.Option(None, "--report-to", help="none, tensorboard or wandb.")
_SAVE_STEPS = typer.Option(None, "--save-steps", help="Save a resumable checkpoint every this many optimizer steps.")
_SKIP_BAD = typer.Option(
    None,
    "--skip-bad-images/--no-skip-bad-images",
    help="Drop records whose image is missing or corrupt (listed in image_check.json) instead of failing.",
)
_RESUME = typer.Option(
    None, "--resume/--no-resume", help="Resume from the last checkpoint in the output dir (default: yes)."
)
_SYSTEM = typer.Option(None, "--system-prompt", help="System prompt for every record; 'grammar' = the grammar prompt.")
_SET = typer.Option(None, "--set", help="Any config option as KEY=VALUE (YAML value); repeatable.")
_PRINT = typer.Option(False, "--print-config", help="Print the resolved config and exit without training.")
# The `deepspeed` launcher appends --local_rank=N; transformers reads the rank from the environment.
_LOCAL_RANK = typer.Option(None, "--local_rank", "--local-rank", hidden=True)


def _overrides(options: dict[str, Any], cls: type) -> dict[str, Any]:
    """The command's options that are config fields (options are named as the fields; None = not given)."""
    return {k: v for k, v in options.items() if k in cls.model_fields}


def _resolve(
    cls: type, config: Path | None, recipe: str | None, overrides: dict[str, Any], sets: list[str] | None
) -> Any:
    """Defaults < recipe < --config file < --set KEY=VALUE < the named options given."""
    from iadr1.train.config import load_config, parse_set_options

    given = {k: v for k, v in overrides.items() if v is not None}
    return load_config(cls, config_file=config, recipe=recipe, overrides={**parse_set_options(sets), **given})


def _note_local_rank(local_rank: int | None) -> None:
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_config(cfg: Any) -> None:
    import yaml
    from rich.console import Console

    Console().print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False, end="")


def _done(stage: str, out: Path) -> None:
    if _is_main():
        from rich.console import Console

        Console().print(f"[bold green]{stage} done:[/] model saved to {out}", highlight=False)


def sft(
    config: Path | None = _CONFIG,
    recipe: str | None = _RECIPE,
    model: str | None = _MODEL,
    dataset: Path | None = _DATASET,
    image_root: Path | None = _IMAGE_ROOT,
    output_dir: Path | None = _OUTPUT_DIR,
    max_steps: int | None = _MAX_STEPS,
    epochs: float | None = _EPOCHS,
    lr: float | None = _LR,
    seed: int | None = _SEED,
    batch_size: int | None = _BATCH,
    grad_accum: int | None = _ACCUM,
    max_pixels: int | None = _MAX_PIXELS,
    lora: bool | None = _LORA,
    freeze_vision: bool | None = _FREEZE,
    gradient_checkpointing: bool | None = _GC,
    deepspeed: str | None = _DEEPSPEED,
    precision: str | None = _PRECISION,
    report_to: str | None = _REPORT,
    resume: bool | None = _RESUME,
    save_steps: int | None = _SAVE_STEPS,
    skip_bad_images: bool | None = _SKIP_BAD,
    system_prompt: str | None = _SYSTEM,
    max_length: int | None = typer.Option(None, "--max-length", help="Truncate sequences (default: never)."),
    set_: list[str] | None = _SET,
    print_config: bool = _PRINT,
    local_rank: int | None = _LOCAL_RANK,
) -> None:
    """PA-SFT: fine-tune on chain-of-thought answers (loss on the answer only); save an HF model folder."""
    from iadr1.train.config import SFTRunConfig

    overrides = _overrides(locals(), SFTRunConfig)
    _note_local_rank(local_rank)
    cfg = _resolve(SFTRunConfig, config, recipe, overrides, set_)
    if print_config:
        _print_config(cfg)
        return
    from iadr1.train.sft import run_sft

    _done("PA-SFT", run_sft(cfg))


def grpo(
    config: Path | None = _CONFIG,
    recipe: str | None = _RECIPE,
    model: str | None = _MODEL,
    dataset: Path | None = _DATASET,
    image_root: Path | None = _IMAGE_ROOT,
    output_dir: Path | None = _OUTPUT_DIR,
    max_steps: int | None = _MAX_STEPS,
    epochs: float | None = _EPOCHS,
    lr: float | None = _LR,
    seed: int | None = _SEED,
    batch_size: int | None = _BATCH,
    grad_accum: int | None = _ACCUM,
    max_pixels: int | None = _MAX_PIXELS,
    lora: bool | None = _LORA,
    freeze_vision: bool | None = _FREEZE,
    gradient_checkpointing: bool | None = _GC,
    deepspeed: str | None = _DEEPSPEED,
    precision: str | None = _PRECISION,
    report_to: str | None = _REPORT,
    resume: bool | None = _RESUME,
    save_steps: int | None = _SAVE_STEPS,
    skip_bad_images: bool | None = _SKIP_BAD,
    system_prompt: str | None = _SYSTEM,
    reward: list[str] | None = typer.Option(
        None,
        "--reward",
        help="Reward name or module:function, optionally =WEIGHT; repeatable (default: accuracy + consistency).",
    ),
    num_generations: int | None = typer.Option(None, "--num-generations", "-G", help="Completions per prompt."),
    beta: float | None = typer.Option(None, "--beta", help="KL coefficient (0.04 as published)."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature."),
    max_completion_length: int | None = typer.Option(None, "--max-completion-length", help="Tokens per completion."),
    vllm: str | None = typer.Option(None, "--vllm", help="auto, off, colocate, or server (`trl vllm-serve`)."),
    set_: list[str] | None = _SET,
    print_config: bool = _PRINT,
    local_rank: int | None = _LOCAL_RANK,
) -> None:
    """SC-GRPO: reinforcement learning with the accuracy + consistency rewards; save an HF model folder."""
    from iadr1.train.config import GRPORunConfig

    overrides = {**_overrides(locals(), GRPORunConfig), "rewards": reward or None}
    _note_local_rank(local_rank)
    cfg = _resolve(GRPORunConfig, config, recipe, overrides, set_)
    if print_config:
        _print_config(cfg)
        return
    from iadr1.train.grpo import run_grpo

    _done("SC-GRPO", run_grpo(cfg))


def merge(
    adapter: Path = typer.Argument(..., help="LoRA adapter folder (adapter_config.json + weights)."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where the merged model folder goes."),
    base: str | None = typer.Option(None, "--base", help="Base model folder (default: the one the adapter records)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the base's), float32, bfloat16 or float16."),
) -> None:
    """Merge a LoRA adapter into its base model and save a full HF model folder. Refuses a quantized base."""
    from iadr1.errors import ConfigError
    from iadr1.train.merge import merge_adapter

    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    out = merge_adapter(adapter, output_dir, base=base, dtype=dtype)
    _done("merge", out)
