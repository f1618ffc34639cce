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

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl import GRPOTrainer

from iadr1.train import common
from iadr1.train.config import GRPORunConfig, save_config
from iadr1.train.data import build_dataset, image_factor, read_grpo_rows

if TYPE_CHECKING:
    from transformers import TrainerCallback

COMPLETIONS_FILENAME = "completions.jsonl"


class IADGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer plus the two logs the method needs: the consistency rate and sample completions.

    Both hook into TRL's own channels (`_log_metric`, which TRL averages across processes and logging steps,
    and the completion table `_logs` that TRL fills for every generation batch), so the training step is
    untouched. It also hands LLaVA-OneVision its per-prompt image counts, which TRL does not pass on (below).
    """

    def __init__(self, *args: Any, completions_to_log: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.completions_to_log = completions_to_log
        self._completions_path = Path(self.args.output_dir) / COMPLETIONS_FILENAME
        self._last_logged_step = -1
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base  # under a PEFT wrapper
        self._pass_image_counts = "batch_num_images" in inspect.signature(type(base).forward).parameters

    def _get_per_token_logps_and_entropies(  # noqa: ANN001 - TRL's signature
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        *args,
        batch_num_images=None,
        **kwargs,
    ):
        """TRL's log-prob pass, with each chunk's `batch_num_images` given to models that take it.

        LLaVA-OneVision tiles a lone image into an any-resolution grid but not the images of a multi-image
        prompt, and reads which is which from `batch_num_images`. TRL 1.x neither forwards that processor
        output nor keeps it for the loss pass, and without it the model tiles every image (then fails on the
        token count of one-shot prompts). TRL does pass `num_images` per prompt and calls the model once per
        chunk of `batch_size` prompts, in order: a forward pre-hook feeds each call its slice.
        """
        num_images = kwargs.get("num_images")
        call = (model, input_ids, attention_mask, logits_to_keep, batch_size, *args)
        if not self._pass_image_counts or num_images is None:
            return super()._get_per_token_logps_and_entropies(*call, **kwargs)
        import torch

        step = batch_size or input_ids.size(0)
        chunks = iter([num_images[s : s + step] for s in range(0, input_ids.size(0), step)])

        def add_counts(module, call_args, call_kwargs):  # noqa: ANN001
            call_kwargs["batch_num_images"] = torch.tensor(next(chunks), device=input_ids.device)
            return call_args, call_kwargs

        handle = self.accelerator.unwrap_model(model).register_forward_pre_hook(add_counts, with_kwargs=True)
        try:
            return super()._get_per_token_logps_and_entropies(*call, **kwargs)
        finally:
            handle.remove()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001 - TRL's
        from iadr1.answers import parse
        from iadr1.rewards import completion_text

        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        well_formed = [parse(completion_text(c)).well_formed for c in completions]
        self._log_metric("consistency_rate", sum(well_formed) / max(1, len(well_formed)))
        self._log_completion_extra("id", [x.get("id") for x in inputs])
        self._log_completion_extra("solution", [x.get("solution") for x in inputs])
        return rewards

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        step = self.state.global_step
        if not (self.model.training and self.accelerator.is_main_process and self.completions_to_log):
            return
        if step == self._last_logged_step or not self._logs["completion"]:
            return
        self._last_logged_step = step
        self._write_samples(step)

    def _write_samples(self, step: int) -> None:
        from iadr1.data.io import JsonlAppender
        from iadr1.rewards import completion_text

        n = min(self.completions_to_log, len(self._logs["completion"]))
        extra = self._logs["extra"]
        with JsonlAppender(self._completions_path, fsync=False) as out:
            for i in range(n):
                prompt = self._logs["prompt"][i]
                out.write(
                    {
                        "step": step,
                        "id": extra["id"][i] if len(extra["id"]) > i else None,
                        "prompt": completion_text([m for m in prompt if m.get("role") == "user"][-1:]),
                        "completion": completion_text(self._logs["completion"][i]),
                        "solution": extra["solution"][i] if len(extra["solution"]) > i else None,
                        "rewards": {name: vals[i] for name, vals in self._logs["rewards"].items()},
                        "advantage": self._logs["advantages"][i],
                    }
                )


def run_grpo(
    cfg: GRPORunConfig,
    callbacks: Sequence[TrainerCallback] = (),
    reward_funcs: Sequence[Callable[..., list[float | None]]] | None = None,
) -> Path:
    """Train, save the model folder to `cfg.output_dir` and return it.

    `reward_funcs` replaces the rewards named in `cfg.rewards` with callables (weights from `cfg.rewards` when
    the counts match, else 1 each); `callbacks` are extra transformers `TrainerCallback`s.
    """
    from trl import GRPOConfig

    from iadr1.models.loading import load_processor
    from iadr1.rewards import get_reward_funcs

    common.setup_logging()

    # --- 1. Check the model, the rewards and every record before anything heavy happens ---------------------
    family = common.check_family(cfg)
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
    args = common.trl_args(GRPOConfig, {**cfg.to_trl_kwargs(), "reward_weights": weights})
    if args.process_index == 0:
        save_config(cfg)

    # --- 3. Processor, model (vision side frozen), dataset --------------------------------------------------
    # Images are resized in the dataset to sizes every processor of this checkpoint keeps as they are, so that
    # vLLM's rollouts (which load the processor from the checkpoint) and training see the same pixels.
    processor = load_processor(cfg.model)
    model = common.load_model_for_training(cfg, family)
    dataset = build_dataset(rows, cfg.max_pixels, image_factor(processor))

    # --- 4. Trainer: the reference model for the KL term is the input checkpoint, frozen --------------------
    trainer = IADGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=common.lora_config(cfg, family),
        callbacks=[common.log_history_callback(cfg.output_dir), *callbacks],
        completions_to_log=cfg.completions_to_log,
    )

    # --- 5. Train (resuming from the last checkpoint in output_dir), save -----------------------------------
    common.train(trainer, cfg)
    return common.save_final(trainer, cfg)
