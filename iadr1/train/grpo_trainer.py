"""`IADGRPOTrainer`: TRL's GRPOTrainer with the logs the method needs, exact resume and image counts.

Kept apart from `grpo.py` because importing TRL takes seconds: `iadr1 grpo` checks its options and records
first and imports this module only when training starts.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from trl import GRPOTrainer

from iadr1.train import common

COMPLETIONS_FILENAME = "completions.jsonl"


class IADGRPOTrainer(common.ExactResume, GRPOTrainer):
    """TRL's GRPOTrainer plus the two logs the method needs: the consistency rate and sample completions.

    Both hook into TRL's own channels (`_log_metric`, which TRL averages across processes and logging steps,
    and the completion table `_logs` that TRL fills for every generation batch), so the training step is
    untouched. It also hands LLaVA-OneVision its per-prompt image counts, which TRL does not pass on (below),
    and resumes with the checkpoint's weights (`common.ExactResume`).
    """

    def __init__(self, *args: Any, completions_to_log: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.completions_to_log = completions_to_log
        self._completions_path = Path(self.args.output_dir) / COMPLETIONS_FILENAME
        self._last_logged_step = -1
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base  # under a PEFT wrapper
        self._pass_image_counts = "batch_num_images" in inspect.signature(type(base).forward).parameters

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's prompt sampler, reseeded from (seed, epoch) at every epoch so that a resumed run sees the same
        prompts: TRL's sampler draws each epoch's order from one generator that a checkpoint does not save, so
        after an epoch boundary a resumed run would otherwise train on another order."""
        sampler = super()._get_train_sampler(dataset)
        generator = getattr(sampler, "generator", None)
        if generator is not None:
            seed = self.args.seed

            def set_epoch(epoch: int) -> None:  # the Trainer calls it at the start of every epoch
                generator.manual_seed(seed + int(epoch))

            sampler.set_epoch = set_epoch
        return sampler

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
