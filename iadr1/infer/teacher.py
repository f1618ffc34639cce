"""The teacher of `iadr1 annotate --reasoner model`: an inference backend (`make_backend`) asked the annotator's
prompts (`iadr1.data.annotate.run.TeacherPrompt`).

A retried prompt carries the reason its reply was refused, so even a backend with a fixed sampling seed (vLLM's
sampling parameters are set when the engine starts) answers it anew; the openai backend also gets a new seed per
round."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from iadr1.data.annotate.run import AnnotateConfig, Teacher, TeacherPrompt
from iadr1.infer.base import Request
from iadr1.infer.runner import InferConfig, make_backend


def teacher_config(cfg: AnnotateConfig) -> InferConfig:
    """The inference options of the teacher, from the annotator's (the backend options `infer` has)."""
    return InferConfig(
        model=str(cfg.model), test_file=cfg.meta, image_root=cfg.image_root or cfg.meta.parent, out=cfg.out.parent,
        backend=cfg.backend, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
        logprobs=False, base_url=cfg.base_url, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
        retries=cfg.retries, timeout_s=cfg.timeout_s, max_pixels=cfg.max_pixels, batch_size=cfg.batch_size,
        device=cfg.device,
    )  # fmt: skip


@contextmanager
def open_teacher(cfg: AnnotateConfig) -> Iterator[Teacher]:
    """Load the backend once and yield the `Teacher` callable `annotate` asks; the engine is closed on exit."""
    with make_backend(teacher_config(cfg)) as backend:
        base = backend.options

        def ask(prompts: list[TeacherPrompt], attempt: int) -> Iterator[tuple[str, str | None, str | None]]:
            backend.options = replace(base, seed=base.seed + attempt)
            requests = [Request(p.key, p.segments, tuple(Path(i) for i in p.images), p.system) for p in prompts]
            for req, res in backend.generate(requests):
                yield req.key, res.raw, res.error

        yield ask
