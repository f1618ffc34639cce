"""`iadr1 sft`, `iadr1 grpo`, `iadr1 merge`: parse options, lay them over a recipe/config, call the core.

Every option left out keeps the value of the config file, then the recipe, then the published default
(`iadr1.train.config`). Multi-GPU and multi-node runs use the same commands under a launcher:

    accelerate launch --num_processes 8 -m iadr1 sft --recipe qwen2-vl-2b --model ... --deepspeed zero3
    torchrun --nproc_per_node 8 -m iadr1 grpo --config run.yaml
    deepspeed --num_gpus 8 --module iadr1 sft ...        # appends --local_rank=N, accepted here
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from iadr1.cli._options import Opt, config_command, warn_versions

# The options of `sft` and `grpo`, declared once; help texts are the config fields' descriptions
# (iadr1.train.config), so `--help`, the YAML config and the docs say the same thing.
_COMMON: list[Opt] = [
    Opt("config", ("--config", "-c"), Path, help="YAML config (e.g. a saved iadr1_config.yaml); options override it."),
    Opt("recipe", ("--recipe", "-r"), str, help="Packaged recipe, e.g. qwen2-vl-2b or demo (docs/training.md)."),
    Opt("model", ("--model", "-m"), str),
    Opt("dataset", ("--dataset", "-d"), Path),
    Opt("image_root", ("--image-root",), Path),
    Opt("output_dir", ("--out", "--output-dir", "-o"), Path),
    Opt("max_steps", ("--max-steps",), int),
    Opt("epochs", ("--epochs",), float),
    Opt("lr", ("--lr",), float),
    Opt("seed", ("--seed",), int),
    Opt("batch_size", ("--batch-size",), int),
    Opt("grad_accum", ("--grad-accum",), int),
    Opt("max_pixels", ("--max-pixels",), int),
    Opt("lora", ("--lora/--full",), bool),
    Opt("freeze_vision", ("--freeze-vision/--train-vision",), bool),
    Opt("gradient_checkpointing", ("--gradient-checkpointing/--no-gradient-checkpointing",), bool),
    Opt("deepspeed", ("--deepspeed",), str),
    Opt("precision", ("--precision",), str),
    Opt("report_to", ("--report-to",), str),
    Opt("resume", ("--resume/--no-resume",), bool),
    Opt("save_steps", ("--save-steps",), int),
    Opt("skip_bad_images", ("--skip-bad-images/--no-skip-bad-images",), bool),
    Opt("system_prompt", ("--system-prompt",), str),
]
_SFT: list[Opt] = [Opt("max_length", ("--max-length",), int)]
_GRPO: list[Opt] = [
    Opt("rewards", ("--reward",), list[str]),
    Opt("num_generations", ("--num-generations", "-G"), int),
    Opt("beta", ("--beta",), float),
    Opt("temperature", ("--temperature",), float),
    Opt("max_completion_length", ("--max-completion-length",), int),
    Opt("vllm", ("--vllm",), str),
]
_TAIL: list[Opt] = [
    Opt("set_", ("--set",), list[str], help="Any config option as KEY=VALUE (YAML value); repeatable."),
    Opt("print_config", ("--print-config",), bool, help="Print the resolved config and exit without training."),
    # The `deepspeed` launcher appends --local_rank=N; transformers reads the rank from the environment.
    Opt("local_rank", ("--local_rank", "--local-rank"), int, hidden=True),
]


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_config(cfg: Any) -> None:
    import yaml

    # Plain stdout: a rich console would wrap long paths and break the YAML for `> run.yaml`.
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _done(stage: str, out: Path) -> None:
    if _is_main():
        from rich.console import Console

        Console().print(f"[bold green]{stage} done:[/] model saved to {out}", highlight=False)


def _run_stage(stage: str, values: dict[str, Any]) -> None:
    """Defaults < recipe < --config file < --set KEY=VALUE < the named options given; then train."""
    from iadr1.config import parse_set_options
    from iadr1.train.config import GRPORunConfig, SFTRunConfig, load_config

    cls = SFTRunConfig if stage == "sft" else GRPORunConfig
    if values.get("local_rank") is not None:
        os.environ.setdefault("LOCAL_RANK", str(values["local_rank"]))
    named = {k: v for k, v in values.items() if v is not None and k in cls.model_fields}
    cfg = load_config(
        cls,
        config_file=values.get("config"),
        recipe=values.get("recipe"),
        settings=parse_set_options(values.get("set_")),
        overrides=named,
    )
    if values.get("print_config"):
        _print_config(cfg)
        return
    if _is_main():
        warn_versions(stage)
    if stage == "sft":
        from iadr1.train.sft import run_sft

        _done("PA-SFT", run_sft(cfg))
    else:
        from iadr1.train.grpo import run_grpo

        _done("SC-GRPO", run_grpo(cfg))


def _stage_command(stage: str, cls_name: str, extra: list[Opt], doc: str):
    from iadr1.train import config

    return config_command(
        getattr(config, cls_name),
        [*_COMMON, *extra, *_TAIL],
        lambda **values: _run_stage(stage, values),
        stage,
        doc,
    )


sft = _stage_command(
    "sft",
    "SFTRunConfig",
    _SFT,
    "PA-SFT: fine-tune on chain-of-thought answers (loss on the answer only); save an HF model folder.",
)
grpo = _stage_command(
    "grpo",
    "GRPORunConfig",
    _GRPO,
    "SC-GRPO: reinforcement learning with the accuracy + consistency rewards; save an HF model folder.",
)


def merge(
    adapter: Path = typer.Argument(..., help="LoRA adapter folder (adapter_config.json + weights)."),
    output_dir: Path = typer.Option(..., "--out", "--output-dir", "-o", help="Where the merged model folder goes."),
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
