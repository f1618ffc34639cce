"""Pieces both training stages share: model loading for training, LoRA, resume, logs, the final save.

Kept out of `sft.py` and `grpo.py` so that those read top to bottom as the steps of one run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iadr1.errors import ConfigError
from iadr1.models.registry import Family, family_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Trainer, TrainerCallback

    from iadr1.train.config import _RunConfig

logger = logging.getLogger("iadr1.train")

LOG_HISTORY_FILENAME = "log_history.json"
LIVE_LOG_FILENAME = "log_history.jsonl"
ADAPTER_DIRNAME = "adapter"


def check_family(cfg: _RunConfig) -> Family:
    """The model's family (from its config.json); a family the project does not train is a ConfigError."""
    if not Path(cfg.model).is_dir():
        raise ConfigError(f"{cfg.model}: model folder not found (iadr1 trains local checkpoints, never hub names)")
    family = family_of(cfg.model)
    if not family.trainable:
        raise ConfigError(f"{cfg.model}: family {family.name!r} is supported for inference only, not training")
    if cfg.lora and not cfg.freeze_vision and cfg.lora_target is None:
        raise ConfigError(
            "with lora, the adapter decides what trains: choose modules with lora_target, not freeze_vision"
        )
    return family


def trl_args(trl_cls: type, kwargs: dict[str, Any]) -> Any:
    """Build TRL's SFTConfig/GRPOConfig; its ValueErrors (e.g. a generation batch that does not hold whole
    groups of completions for this number of processes) become one-line ConfigErrors."""
    try:
        return trl_cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{trl_cls.__name__}: {str(e).strip().splitlines()[0]}") from None


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def load_model_for_training(cfg: _RunConfig, family: Family) -> PreTrainedModel:
    """Load the checkpoint in float32 (the optimizer's master weights; bf16 runs as autocast or inside
    DeepSpeed, since pure-bf16 weights lose updates as small as lr 1e-6 x grad) and freeze the vision side
    when asked.

    Call it after the TRL config exists: under ZeRO-3 transformers then partitions the weights while loading.
    """
    import torch
    import transformers

    from iadr1.models.loading import freeze_modules

    if cfg.deepspeed and not torch.cuda.is_available() and torch.distributed.is_initialized():
        # On CPU, transformers sets up torch.distributed (gloo) itself but not DeepSpeed's communicator, which
        # ZeRO-3 needs while loading (it partitions weights as they load); on GPUs transformers does both.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = getattr(transformers, family.model_class).from_pretrained(cfg.model, **kwargs)
    if cfg.freeze_vision and not cfg.lora:
        frozen, trainable = freeze_modules(model, family)
        logger.info("vision tower and projector frozen: %d parameters frozen, %d trainable", frozen, trainable)
    return model


def lora_config(cfg: _RunConfig, family: Family):
    """PEFT's LoraConfig for the run, or None for a full fine-tune."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target or family.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def log_history_callback(output_dir: str | os.PathLike) -> TrainerCallback:
    """A callback appending each log entry to `<output_dir>/log_history.jsonl` as it happens (live curves; one
    line per log, so a long run costs the same per step). `log_history.json` is written whole at the end."""
    from transformers import TrainerCallback

    from iadr1.data.io import JsonlAppender

    path = Path(output_dir) / LIVE_LOG_FILENAME

    class LiveLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers' signature
            if state.is_world_process_zero and logs:
                with JsonlAppender(path, fsync=False) as out:
                    out.write({"step": state.global_step, **logs})

    return LiveLog()


def train(trainer: Trainer, cfg: _RunConfig) -> None:
    """Run `trainer.train`, resuming from the newest checkpoint in the output dir unless resume is off."""
    checkpoint = last_checkpoint(cfg.output_dir) if cfg.resume else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)


def save_final(trainer: Trainer, cfg: _RunConfig) -> Path:
    """Save an HF folder that transformers and vLLM load directly: weights, processor, chat template,
    generation config, plus `log_history.json`. A LoRA run saves its adapter under `adapter/` and the merged
    model at the top.
    """
    from iadr1.data.io import atomic_write_json

    out = Path(cfg.output_dir)
    if cfg.lora:
        adapter_dir = out / ADAPTER_DIRNAME
        trainer.save_model(str(adapter_dir))  # gathers ZeRO-3 shards; the processor is saved beside the adapter
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            from iadr1.train.merge import merge_adapter

            merge_adapter(adapter_dir, out, base=cfg.model)
    else:
        trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        atomic_write_json(out / LOG_HISTORY_FILENAME, trainer.state.log_history, indent=1)
    trainer.accelerator.wait_for_everyone()
    return out


def setup_logging() -> None:
    """INFO logs from iadr1 on the main process (transformers keeps its own verbosity)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[iadr1] %(message)s"))
        logger.addHandler(handler)
    rank = int(os.environ.get("RANK", "0"))
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
