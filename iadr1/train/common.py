"""Pieces both training stages share: model loading for training, LoRA, resume, logs, the final save.

Kept out of `sft.py` and `grpo.py` so that those read top to bottom as the steps of one run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iadr1.errors import ConfigError, DataError
from iadr1.models.registry import Family, family_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Trainer, TrainerCallback

    from iadr1.train.config import _RunConfig

logger = logging.getLogger("iadr1.train")

LOG_HISTORY_FILENAME = "log_history.json"
IMAGE_CHECK_FILENAME = "image_check.json"
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


def preflight(cfg: _RunConfig) -> Family:
    """The checks that need neither torch nor TRL, so that a typo costs a second, not a model load: the model
    folder and its family, the dataset file, the image root."""
    family = check_family(cfg)
    if not Path(cfg.dataset).is_file():
        raise ConfigError(f"{cfg.dataset}: dataset file not found")
    if cfg.image_root is not None and not Path(cfg.image_root).is_dir():
        raise ConfigError(f"{cfg.image_root}: image root folder not found")
    return family


def checked_rows(rows: list[dict[str, Any]], cfg: _RunConfig, args: Any) -> list[dict[str, Any]]:
    """Decode every training image once (`train.data.check_images`) on the main process only; under a launcher
    the other ranks wait and read its verdict (`<output_dir>/image_check.json`), so all drop the same records.

    Call it after the TRL config exists (that sets up the processes) and before the model loads.
    """
    import json

    from iadr1.data.io import atomic_write_json
    from iadr1.train.data import RECORD_KEY, check_images

    path = Path(cfg.output_dir) / IMAGE_CHECK_FILENAME
    # Global (not per-node) main first: the other ranks read rank 0's verdict, which on several machines needs
    # the output folder on a shared file system (as checkpoints do anyway).
    with args.main_process_first(local=False, desc="checking training images"):
        if args.process_index == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            checked = len({p for r in rows for p in r["images"]})
            try:
                kept, problems = check_images(rows, skip_bad=cfg.skip_bad_images)
            except DataError as e:  # the other ranks fail with the same line, not a missing-file traceback
                atomic_write_json(path, {"images_checked": checked, "error": str(e)})
                raise
            atomic_write_json(path, {"images_checked": checked, "skipped": problems})
        else:
            verdict = json.loads(path.read_text())
            if "error" in verdict:
                raise DataError(verdict["error"])
            problems = verdict["skipped"]
            dropped = {p["record"] for p in problems}
            kept = [r for r in rows if r[RECORD_KEY] not in dropped]
    if problems:
        records = sorted({p["record"] for p in problems})
        logger.warning(
            "skipped %d record(s) with a bad image (listed in %s), e.g. %s: %s",
            len(records),
            path,
            problems[0]["image"],
            problems[0]["problem"],
        )
    return kept


def warn_learn_nothing_callback(zero_spread_steps: int = 0) -> TrainerCallback:
    """Warnings for settings that make a run learn nothing, as soon as they show.

    - At the start: a learning rate that never leaves warm-up (warm-up steps >= the run's steps).
    - SC-GRPO (`zero_spread_steps` > 0): every group's completions scored alike (TRL's `frac_reward_zero_std`
      of 1) for that many logged steps in a row; all advantages are then 0 and no weight moves.
    """
    from transformers import TrainerCallback

    class LearnNothing(TrainerCallback):
        def __init__(self) -> None:
            self.flat = 0
            self.warned = False

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
            warmup = args.get_warmup_steps(state.max_steps) if state.max_steps > 0 else 0
            if state.max_steps > 0 and warmup >= state.max_steps:
                logger.warning(
                    "warm-up is %d steps but the run has %d: the learning rate never reaches its peak "
                    "(lower warmup_steps or raise max_steps)",
                    warmup,
                    state.max_steps,
                )

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            share = (logs or {}).get("frac_reward_zero_std")
            if not zero_spread_steps or share is None:
                return
            self.flat = self.flat + 1 if share >= 1.0 else 0
            if self.flat >= zero_spread_steps and not self.warned:
                self.warned = True
                logger.warning(
                    "SC-GRPO: for %d logged steps in a row every group of completions got the same reward, so "
                    "every advantage is 0 and nothing is learned. Make completions differ (raise temperature or "
                    "num_generations), check that the rewards can tell them apart, or start from a PA-SFT model.",
                    self.flat,
                )

    return LearnNothing()


def trl_args(trl_cls: type, kwargs: dict[str, Any]) -> Any:
    """Build TRL's SFTConfig/GRPOConfig; its ValueErrors (e.g. a generation batch that does not hold whole
    groups of completions for this number of processes) become one-line ConfigErrors."""
    try:
        return trl_cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{trl_cls.__name__}: {str(e).strip().splitlines()[0]}") from None


CHECKPOINT_PREFIX = "checkpoint-"


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (None: it is): its header must parse and its size match it."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name} is cut short"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError):
        return f"{path.name} is unreadable"
    return None if size == 8 + n + end else f"{path.name} is cut short ({size} of {8 + n + end} bytes)"


def _torch_file_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive) is not whole: a cut file has no readable central directory."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile):
        return f"{path.name} is cut short or unreadable"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` (a `checkpoint-N` the Trainer wrote) cannot be resumed from, or None when it is complete.

    A kill during a save leaves a folder without `trainer_state.json` (the Trainer writes it last) or with a
    torn weight or optimizer file; resuming from it would fail deep inside transformers or, worse, restore
    garbage. Weights are checked against their safetensors header, torch files against their zip directory.
    """
    import json

    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save was interrupted)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "trainer_state.json is torn"
    weights = sorted(folder.glob("*.safetensors"))
    deepspeed_state = (folder / "latest").is_file()
    if not weights and not deepspeed_state:
        return "no model weights"
    for f in weights:
        if why := _safetensors_problem(f):
            return why
    for name in ("optimizer.pt", "scheduler.pt"):
        f = folder / name
        if f.exists() and (why := _torch_file_problem(f)):
            return why
    if not deepspeed_state and not (folder / "optimizer.pt").is_file():
        return "no optimizer.pt"
    return None


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir`, or None.

    Incomplete ones (`checkpoint_problem`) are skipped with one warning line each, so a run killed while it
    saved resumes from the checkpoint before (or starts fresh when there is none).
    """
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = []
    for d in out.iterdir():
        step = d.name[len(CHECKPOINT_PREFIX) :]
        if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and step.isdigit():
            found.append((int(step), d))
    for _, d in sorted(found, reverse=True):
        why = checkpoint_problem(d)
        if why is None:
            return str(d)
        logger.warning("skipping %s: %s", d, why)
    return None


def _disk_to_memory_names(model: PreTrainedModel) -> dict[str, str]:
    """Map the weight names `save_pretrained` writes to the names of `model.state_dict()`.

    transformers 5 renames some families' weights between the file and the module tree (Qwen2-VL's
    `model.layers.*` on disk is `model.language_model.layers.*` in memory) and reverts the renaming when it
    saves. The Trainer's resume loads a checkpoint with a plain `load_state_dict`, so every key misses and
    the weights silently stay where they were. Reverting the model's own state dict the way a save does, and
    matching tensors by identity, gives the exact map (renamings keep the tensor objects).
    """
    from transformers.core_model_loading import revert_weight_conversion

    memory = model.state_dict()
    by_id = {id(t): k for k, t in memory.items()}
    return {disk: by_id[id(t)] for disk, t in revert_weight_conversion(model, dict(memory)).items() if id(t) in by_id}


def check_load(model: Any, missing: Any, unexpected: Any, where: str) -> None:
    """A weight-key mismatch is an error, not a warning to scroll past.

    The only keys allowed to be missing are parameters that share their storage with a loaded one (a tied
    `lm_head`): they come back with the weight they are tied to.
    """
    missing, unexpected = sorted(missing or ()), sorted(unexpected or ())
    if missing:
        tensors = model.state_dict()
        loaded = {tensors[k].data_ptr() for k in tensors if k not in set(missing)}
        missing = [k for k in missing if k not in tensors or tensors[k].data_ptr() not in loaded]
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        parts = [f"{len(missing)} missing ({show(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({show(unexpected)})"] if unexpected else []
        raise ConfigError(f"{where}: weight keys do not match the model: {'; '.join(parts)}")


def load_checkpoint_weights(model: PreTrainedModel, folder: str | os.PathLike) -> None:
    """Load a full-model `checkpoint-N` written by the Trainer into `model`, every key or an error."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("model*.safetensors"))
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f), device="cpu"))
    names = _disk_to_memory_names(model)
    result = model.load_state_dict({names.get(k, k): v for k, v in state.items()}, strict=False)
    check_load(model, result.missing_keys, result.unexpected_keys, str(folder))


class ExactResume:
    """Trainer mixin: resuming restores the checkpoint's weights (not only step, optimizer and data order).

    Full-model checkpoints are loaded through `load_checkpoint_weights` (names mapped, every key checked);
    LoRA adapters, DeepSpeed and FSDP checkpoints keep the Trainer's own loading, which reads them correctly.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = self.model if model is None else model
        full = any(Path(resume_from_checkpoint).glob("model*.safetensors"))
        if full and not self.is_deepspeed_enabled and not self.is_fsdp_enabled and not hasattr(target, "peft_config"):
            logger.info("loading weights from %s", resume_from_checkpoint)
            load_checkpoint_weights(target, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]


def with_exact_resume(trainer_cls: type) -> type:
    """`trainer_cls` with `ExactResume` in front (for TRL trainers used as they are, like SFTTrainer)."""
    return type(trainer_cls.__name__, (ExactResume, trainer_cls), {})


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
    model, info = getattr(transformers, family.model_class).from_pretrained(
        cfg.model, output_loading_info=True, **kwargs
    )
    check_load(model, info.get("missing_keys"), info.get("unexpected_keys"), cfg.model)
    if info.get("mismatched_keys"):
        raise ConfigError(f"{cfg.model}: weights of the wrong shape: {sorted(info['mismatched_keys'])[:3]}")
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
