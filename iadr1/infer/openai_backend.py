"""Inference through any OpenAI-compatible chat endpoint: OpenAI (GPT-4.1 / 4o family), Qwen-VL-MAX (DashScope's
compatible mode), a `vllm serve` endpoint, Anthropic's OpenAI-compatible route for Claude.

Images are resized to fit `max_side` pixels (512 in the published comparison) and sent inline as base64 data
URLs with their MIME type (PNG and JPEG kept as they are; other formats re-encoded as PNG). Requests run with
bounded concurrency; each has a timeout and is retried with exponential back-off (honouring `Retry-After`) on
429, 5xx, timeouts, connection errors and refusals (the published runs retried refusals too).

The API key is read from the environment variable named by `api_key_env` and never written anywhere: error
messages are scrubbed of it before they reach a prediction file or a log.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from iadr1.errors import ConfigError
from iadr1.infer.base import Backend, GenerationOptions, Request, Result, request_images, scores_from_steps

_SOURCE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}
# What a refusal looks like when the API does not flag it (`message.refusal`, finish_reason "content_filter").
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i (?:can(?:no|')t|cannot|am unable to|'m unable to) "
    r"(?:help|assist|comply|provide|analy[sz]e|process|view|see))",
    re.IGNORECASE,
)


class RefusalError(Exception):
    """The model declined to answer (retried like a transient error)."""


def encode_image(path: str | os.PathLike, max_side: int | None = 512) -> tuple[str, str]:
    """Return (MIME type, base64 data) of an image resized to fit `max_side` (aspect kept; never enlarged).

    PNG and JPEG files that need no resizing are sent byte for byte; other formats (BMP, TIFF, ...) that vision
    APIs reject are re-encoded as PNG.
    """
    from PIL import Image

    path = Path(path)
    with Image.open(path) as im:
        fmt = (im.format or "").upper()
        needs_resize = max_side is not None and max(im.size) > max_side
        if fmt in _SOURCE_MIME and not needs_resize:
            return _SOURCE_MIME[fmt], base64.b64encode(path.read_bytes()).decode("ascii")
        im.load()
        out_fmt = fmt if fmt in _SOURCE_MIME else "PNG"
        img = im.convert("RGB") if out_fmt == "JPEG" or im.mode not in ("RGB", "RGBA", "L") else im.copy()
    if needs_resize:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format=out_fmt, **({"quality": 95} if out_fmt == "JPEG" else {}))
    return _SOURCE_MIME[out_fmt], base64.b64encode(buf.getvalue()).decode("ascii")


def encode_decoded(img: Any, max_side: int | None = 512) -> tuple[str, str]:
    """(MIME type, base64 data) of a decoded PIL image resized to fit `max_side`, as PNG: lossless, so that a
    perturbed image (`--perturb`) reaches the model exactly as perturbed (a `jpeg:Q` one with its artefacts)."""
    from PIL import Image

    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "image/png", base64.b64encode(buf.getvalue()).decode("ascii")


def build_messages(r: Request, max_side: int | None, options: GenerationOptions | None = None) -> list[dict[str, Any]]:
    """The chat messages of a request: text parts and `image_url` data-URL parts, interleaved in slot order. With
    perturbations (`options.perturb`), each image is decoded and perturbed at its own size (`request_images`), then
    resized to fit `max_side` and sent as PNG; without, the files are sent as `encode_image` says."""
    perturbed = iter(request_images(r, options)) if options is not None and options.perturb else None
    images = iter(r.images)
    content: list[dict[str, Any]] = []
    for seg in r.segments:
        if seg is None:
            path = next(images)
            if perturbed is None:
                mime, data = encode_image(path, max_side)
            else:
                mime, data = encode_decoded(next(perturbed), max_side)
            content.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        elif seg:
            content.append({"type": "text", "text": seg})
    messages: list[dict[str, Any]] = [{"role": "system", "content": r.system}] if r.system else []
    messages.append({"role": "user", "content": content})
    return messages


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIBackend(Backend):
    """Chat completions against an OpenAI-compatible server with retries, back-off and bounded concurrency."""

    name = "openai"

    def __init__(
        self,
        model: str,
        options: GenerationOptions | None = None,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_side: int | None = 512,
    ):
        try:
            import openai
        except ImportError:
            raise ConfigError("--backend openai needs the `openai` package: pip install 'iadr1[api]'") from None
        self.options = options or GenerationOptions(max_new_tokens=600)
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if not key:
            if not _is_loopback(self.base_url):
                raise ConfigError(
                    f"the API key is read from the environment variable {api_key_env or '(none given)'}, "
                    "which is not set (use --api-key-env NAME)"
                )
            key = "EMPTY"  # a local `vllm serve` needs no key
        self._secrets = [key] if key != "EMPTY" else []
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_side = max_side
        self._openai = openai
        # Our own retry loop (SDK retries off): it also retries refusals, and its back-off is configurable.
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout_s, max_retries=0)
        self._rng = random.Random(self.options.seed)
        self.sleep = time.sleep  # back-off waits (tests replace it to record the delays)
        self._lock = threading.Lock()

    # --- safety --------------------------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """Remove the API key (and the key-like prefixes providers echo back) from a message."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
            if len(secret) > 12:  # providers echo masked keys such as "sk-abc1****wxyz"
                text = text.replace(secret[:8], "***").replace(secret[-4:], "***")
        return text

    # --- one request ---------------------------------------------------------------------------------------------
    def _delay(self, attempt: int, retry_after: float | None) -> float:
        with self._lock:
            jitter = self._rng.uniform(0.0, 0.25)
        base = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        if retry_after is not None:
            base = min(self.backoff_max_s, max(base, retry_after))
        return base * (1.0 + jitter)

    def _call(self, messages: list[dict[str, Any]]) -> tuple[str, float | None, float | None, int | None, int | None]:
        opts = self.options
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": opts.max_new_tokens}
        kwargs["temperature"] = opts.temperature
        if opts.temperature > 0:
            kwargs["top_p"] = opts.top_p
        if opts.seed is not None:
            kwargs["seed"] = opts.seed
        if opts.logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = 20
        resp = self.client.chat.completions.create(**kwargs)
        if not resp.choices:
            raise RefusalError("empty reply (no choices)")
        choice = resp.choices[0]
        msg = choice.message
        text = msg.content or ""
        refusal = getattr(msg, "refusal", None)
        if refusal or choice.finish_reason == "content_filter" or not text.strip() or _REFUSAL.match(text):
            raise RefusalError(refusal or text or f"finish_reason={choice.finish_reason}")
        p_yes = p_defect = None
        content_lp = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_lp:
            pieces = [t.token for t in content_lp]

            def candidates(i: int) -> list[tuple[str, float]]:
                return [(c.token, c.logprob) for c in (content_lp[i].top_logprobs or [])]

            p_yes, p_defect = scores_from_steps(pieces, candidates, opts.prompt_style)
        usage = resp.usage
        return text, p_yes, p_defect, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)

    def _run_one(self, r: Request) -> Result:
        t0 = time.perf_counter()
        try:
            messages = build_messages(r, self.max_side, self.options)
        except Exception as e:
            return Result(error=f"cannot encode image: {type(e).__name__}: {e}", latency_s=0.0)
        openai = self._openai
        last = ""
        raw: str | None = None
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                text, p_yes, p_defect, n_in, n_out = self._call(messages)
                return Result(
                    raw=text,
                    p_yes=p_yes,
                    p_defect=p_defect,
                    latency_s=time.perf_counter() - t0,
                    prompt_tokens=n_in,
                    completion_tokens=n_out,
                )
            except RefusalError as e:
                raw, last = str(e), f"refused: {str(e)[:200]}"
            except openai.APIStatusError as e:
                if e.status_code != 429 and e.status_code < 500:  # 400, 401, 404...: retrying cannot help
                    return Result(error=self.redact(f"HTTP {e.status_code}: {_api_message(e)}"), latency_s=_since(t0))
                last = f"HTTP {e.status_code}: {_api_message(e)}"
                retry_after = _retry_after(e)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                self.sleep(self._delay(attempt, retry_after))
        error = self.redact(f"gave up after {self.retries + 1} attempts; last: {last}")
        return Result(raw=self.redact(raw) if raw else None, error=error, latency_s=_since(t0))

    # --- many requests -------------------------------------------------------------------------------------------
    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result]]:
        it = iter(requests)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="iadr1-api") as pool:
            running: dict[Future, Request] = {}
            # At most 2x concurrency requests in memory (encoded images), the pool running `concurrency` of them.
            for r in it:
                running[pool.submit(self._run_one, r)] = r
                if len(running) >= 2 * self.concurrency:
                    break
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    r = running.pop(fut)
                    yield r, fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        running[pool.submit(self._run_one, nxt)] = nxt

    def close(self) -> None:
        self.client.close()


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _api_message(e: Any) -> str:
    """The server's own error message (the SDK's `message` prefixes "Error code: N - ")."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(getattr(e, "message", e))


def _retry_after(e: Any) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError, TypeError):
        return None
