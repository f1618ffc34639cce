"""PA-SFT: supervised fine-tuning on chain-of-thought answers, with TRL's `SFTTrainer`.

    from iadr1.train.config import SFTRunConfig
    from iadr1.train.sft import run_sft
    out = run_sft(SFTRunConfig(model="ckpt/qwen2-vl-2b", dataset="data/sft.jsonl", output_dir="runs/sft"))

Records become prompt/completion pairs, so TRL's vision collator puts the loss on the answer tokens only. The
vision tower and projector are frozen by default, as published. Launch it on several GPUs or machines with
`accelerate launch`, `torchrun` or `deepspeed` (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from iadr1.train import common
from iadr1.train.config import SFTRunConfig, save_config
from iadr1.train.data import build_dataset, read_sft_rows

if TYPE_CHECKING:
    from transformers import TrainerCallback


def run_sft(cfg: SFTRunConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train, save the model folder to `cfg.output_dir` and return it.

    `callbacks` are extra transformers `TrainerCallback`s (a progress bar, live curves). Each log entry is
    appended to `<output_dir>/log_history.jsonl` as it happens; `log_history.json` holds them all at the end.
    """
    common.setup_logging()

    # --- 1. Check the model and every record before anything heavy happens ----------------------------------
    family = common.preflight(cfg)
    rows = read_sft_rows(cfg.dataset, cfg.image_root, cfg.resolved_system_prompt())
    common.logger.info("%d PA-SFT records from %s; model family %s", len(rows), cfg.dataset, family.name)

    # --- 2. TRL config first: under DeepSpeed ZeRO-3 it must exist before the model is loaded ---------------
    from trl import SFTConfig, SFTTrainer

    from iadr1.models.loading import image_factor, load_processor

    args = common.trl_args(SFTConfig, cfg.to_trl_kwargs())
    if args.process_index == 0:
        save_config(cfg)

    # --- 3. Every image decoded once; processor, model (vision side frozen), dataset ------------------------
    rows = common.checked_rows(rows, cfg, args)
    processor = load_processor(cfg.model)
    model = common.load_model_for_training(cfg, family)
    dataset = build_dataset(rows, cfg.max_pixels, image_factor(family, processor))

    # --- 4. Trainer -----------------------------------------------------------------------------------------
    trainer = common.with_exact_resume(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=common.lora_config(cfg, family),
        callbacks=[common.log_history_callback(cfg.output_dir), common.warn_learn_nothing_callback(), *callbacks],
    )

    # --- 5. Train (resuming from the last checkpoint in output_dir), save -----------------------------------
    common.train(trainer, cfg)
    return common.save_final(trainer, cfg)
