"""Inference with transformers: batched `generate` with left padding, on any device (CPU, CUDA, MPS).

The prompts are exactly the vLLM backend's (the same chat template through `render_prompt`), so greedy fp32
completions agree token for token (tested). Images are sized by training's rule at the cap the model was trained
with (`resolve_max_pixels`), and the processor is the checkpoint's, unchanged, as in training: for an
iadr1-trained model the pixel values equal training's (tested). The images of the next batch are decoded and sized
by a pool of threads while the current one generates (`iadr1.infer.prefetch`).

P(yes) is exact here: the softmax mass of every yes-token of the vocabulary (" Yes", "yes", ...) against every
no-token, at the step where the answer word starts; P(defect) likewise, every token that starts the defect branch's
tag against every token that starts the normal branch's, at the decision position (`iadr1.infer.base`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from iadr1.infer.base import (
    Backend,
    GenerationOptions,
    Request,
    Result,
    answer_position,
    decision_position,
    decision_side,
    decision_style,
    normalize_piece,
    prefetch_images,
    resolve_max_pixels,
    sized_images,
)
from iadr1.infer.prefetch import resolve_workers
from iadr1.models.loading import image_factor, load_model, load_processor, render_prompt
from iadr1.models.registry import family_of

if TYPE_CHECKING:
    from transformers import BatchFeature


class TransformersBackend(Backend):
    """`model.generate` over batches of `batch_size` requests (left-padded).

    `max_pixels=None` takes the cap the model was trained with, if iadr1 trained it (`self.notes` says so), else
    the processor's own limits; `self.max_pixels` is the cap used.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str | os.PathLike,
        options: GenerationOptions | None = None,
        *,
        batch_size: int = 8,
        dtype: str = "auto",
        device: str | None = None,
        max_pixels: int | None = None,
        attn_implementation: str | None = None,
        image_workers: int | None = None,
    ):
        import torch
        from transformers import set_seed

        self.options = options or GenerationOptions()
        self.batch_size = max(1, int(batch_size))
        # Threads that decode and resize images ahead of the model (`iadr1.infer.prefetch`); 0: inline.
        self.image_workers = resolve_workers(image_workers)
        set_seed(self.options.seed)
        self.max_pixels, note = resolve_max_pixels(model_path, max_pixels)
        self.notes = (note,) if note else ()
        self.processor = load_processor(model_path)
        self.image_factor = image_factor(family_of(model_path), self.processor)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = load_model(model_path, dtype=dtype, device=device, **extra)
        self.device = self.model.device
        self.dtype = next(self.model.parameters()).dtype
        self.tokenizer = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self._eos.add(self.tokenizer.eos_token_id)
        self._answer_ids: tuple[list[int], list[int]] | None = None
        self._decision_ids: tuple[list[int], list[int]] | None = None
        self._vocab_texts: list[str] | None = None
        self._torch = torch

    # --- P(yes) ----------------------------------------------------------------------------------------------
    def _yes_no_ids(self) -> tuple[list[int], list[int]]:
        """Every vocabulary id whose text is the yes (resp. no) word, in any case or spacing; built once."""
        if self._answer_ids is None:
            from iadr1.infer.base import _CHOICES

            yes_word, no_word = _CHOICES[self.options.prompt_style]
            words = [normalize_piece(t) if len(t) <= 8 else "" for t in self._vocab()]
            self._answer_ids = (
                [i for i, w in enumerate(words) if w == yes_word],
                [i for i, w in enumerate(words) if w == no_word],
            )
        return self._answer_ids

    def _vocab(self) -> list[str]:
        if self._vocab_texts is None:
            self._vocab_texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return self._vocab_texts

    def _branch_ids(self) -> tuple[list[int], list[int]]:
        """Every vocabulary id that starts the defect (resp. normal) branch's tag (`decision_side`); built once."""
        if self._decision_ids is None:
            style = self.options.prompt_style
            sides = [decision_side(t, style) if len(t) <= 16 else None for t in self._vocab()]
            self._decision_ids = tuple([i for i, v in enumerate(sides) if v == b] for b in (1, 0))  # type: ignore[assignment]
        return self._decision_ids

    def _ratio(self, logits: tuple, row: int, pos: int | None, ids: tuple[list[int], list[int]]) -> float | None:
        if pos is None or pos >= len(logits):
            return None
        probs = self._torch.softmax(logits[pos][row].float(), dim=-1)
        p_a, p_b = probs[ids[0]].sum().item(), probs[ids[1]].sum().item()
        return p_a / (p_a + p_b) if p_a + p_b > 0 else None

    def _scores(self, ids: list[int], logits: tuple, row: int) -> tuple[float | None, float | None]:
        """(P(yes), P(defect)) of one generated row."""
        style = self.options.prompt_style
        pieces = self.tokenizer.batch_decode([[t] for t in ids])
        p_yes = self._ratio(logits, row, answer_position(pieces, style), self._yes_no_ids())
        if not decision_style(style):
            return p_yes, p_yes
        return p_yes, self._ratio(logits, row, decision_position(pieces, style), self._branch_ids())

    # --- generation --------------------------------------------------------------------------------------------
    def inputs(self, batch: list[Request], images: list[list] | None = None) -> BatchFeature:
        """The model inputs of a batch (token ids, pixel values, image grids), on the model's device and dtype.
        `images`: each request's `sized_images`, when read ahead (else read here)."""
        torch = self._torch
        prompts = [render_prompt(self.processor, list(r.segments), r.system) for r in batch]
        if images is None:
            images = [sized_images(r, self.options, self.max_pixels, self.image_factor) for r in batch]
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True).to(self.device)
        for k, v in inputs.items():  # pixel values come as fp32; the vision tower runs in the model dtype
            if torch.is_tensor(v) and v.is_floating_point():
                inputs[k] = v.to(self.dtype)
        return inputs

    def _run_batch(self, batch: list[tuple[Request, Any]]) -> list[Result]:
        """Answer a batch of (request, future of its images)."""
        torch = self._torch
        t0 = time.perf_counter()
        inputs = self.inputs([r for r, _ in batch], [images.result() for _, images in batch])
        opts = self.options
        sampling = {"do_sample": True, "temperature": opts.temperature, "top_p": opts.top_p}
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=opts.max_new_tokens,
                return_dict_in_generate=True,
                output_logits=opts.logprobs,
                **(sampling if opts.temperature > 0 else {"do_sample": False}),
            )
        n_in = inputs["input_ids"].shape[1]
        elapsed = time.perf_counter() - t0
        results = []
        for row in range(len(batch)):
            ids = out.sequences[row, n_in:].tolist()
            n_gen = next((i + 1 for i, t in enumerate(ids) if t in self._eos), len(ids))
            ids = [t for t in ids[:n_gen] if t not in self._eos]
            p_yes, p_defect = self._scores(ids, out.logits, row) if opts.logprobs else (None, None)
            results.append(
                Result(
                    raw=self.tokenizer.decode(ids, skip_special_tokens=True),
                    p_yes=p_yes,
                    p_defect=p_defect,
                    latency_s=elapsed,
                    prompt_tokens=int(inputs["attention_mask"][row].sum()),
                    completion_tokens=n_gen,
                    token_ids=ids,
                )
            )
        return results

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result]]:
        # Images are decoded and sized by `image_workers` threads ahead of the model, a batch or more ahead.
        prepared = prefetch_images(
            requests,
            self.options,
            self.max_pixels,
            self.image_factor,
            self.image_workers,
            ahead=max(self.batch_size, 2 * self.image_workers),
        )
        try:
            while batch := list(islice(prepared, self.batch_size)):
                yield from self._answer(batch)
        finally:
            prepared.close()

    def _answer(self, batch: list[tuple[Request, Any]]) -> Iterator[tuple[Request, Result]]:
        try:
            results = self._run_batch(batch)
        except Exception as e:  # one bad request must not sink its batch: retry them one by one
            if len(batch) == 1:
                yield batch[0][0], Result(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                return
            for pair in batch:
                yield from self._answer([pair])
            return
        yield from zip([r for r, _ in batch], results, strict=True)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()
