"""The one interface every inference backend implements, and what they share (requests, results, P(yes)).

A backend turns `Request`s (text segments with image slots, plus the image files) into `Result`s, yielding each
result as soon as it is ready so that the runner can append it to disk at once. Backends never see unreadable
images: the runner checks every image first and records the problem itself. The local backends size images
with training's rule (`iadr1.models.loading.fit_image`) at the cap `resolve_max_pixels` picks.
"""

from __future__ import annotations

import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iadr1.errors import ConfigError
from iadr1.prompts import PromptStyle


@dataclass(frozen=True)
class Request:
    """One query: the user turn as segments (`None` = next image), and the image files in slot order.

    The last image is always the query image; the ones before it are the k normal references.
    """

    key: str
    segments: tuple[str | None, ...]
    images: tuple[Path, ...]
    system: str | None = None

    def __post_init__(self) -> None:
        n_slots = sum(s is None for s in self.segments)
        if n_slots != len(self.images):
            raise ValueError(f"{self.key}: {n_slots} image slots but {len(self.images)} images")


@dataclass
class Result:
    """What a backend returns for one request. `error` set means no usable reply (recorded, not raised)."""

    raw: str | None = None
    p_yes: float | None = None
    latency_s: float | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_ids: list[int] | None = field(default=None, repr=False)  # generated ids (local backends; for parity)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options shared by all backends. `temperature=0` is greedy (the published setting)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    prompt_style: PromptStyle = "iadr1"
    logprobs: bool = True  # compute P(yes) where the backend can


class Backend(ABC):
    """An inference engine. Use as a context manager; `generate` yields (request, result) as results arrive."""

    name: str = "backend"
    # One-line notes for the user about settings the backend chose itself (vLLM's max_model_len, the image cap
    # saved with the model); the runner passes them on to the run's output.
    notes: tuple[str, ...] = ()

    @abstractmethod
    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result]]:
        """Run all requests, yielding each (request, result) pair as soon as it is ready (any order)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the engine (GPU memory, threads)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# The image cap: the one the model was trained with, unless one is given
# ---------------------------------------------------------------------------------------------------------------
_CHECKPOINT = re.compile(r"checkpoint-\d+")


def trained_max_pixels(model_path: str | os.PathLike) -> tuple[int, Path] | None:
    """(cap, file) for a checkpoint trained by iadr1: `max_pixels` of the `iadr1_config.yaml` that `iadr1 sft` and
    `grpo` save beside the weights (for a `checkpoint-N` folder, in the run folder above it); None for any other
    checkpoint. A cap that is not a positive integer is a `ConfigError` naming the file."""
    from iadr1.config import read_yaml
    from iadr1.train.config import CONFIG_FILENAME

    folder = Path(model_path)
    candidates = [folder / CONFIG_FILENAME]
    if _CHECKPOINT.fullmatch(folder.name):  # saved mid-run: the run's config is in the output folder above
        candidates.append(folder.parent / CONFIG_FILENAME)
    for path in candidates:
        if not path.is_file():
            continue
        value = read_yaml(path).get("max_pixels")
        if value is None:
            return None  # a config that records no cap: the model's size rule is unknown, as for a hub checkpoint
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{path}: max_pixels must be a positive integer, got {value!r}")
        return value, path
    return None


def resolve_max_pixels(model_path: str | os.PathLike, max_pixels: int | None) -> tuple[int | None, str | None]:
    """The image cap a local backend uses, and a line for the run's output when it is not simply the one given.

    A given `max_pixels` wins. Else the cap the model was trained with (`trained_max_pixels`), so that inference
    sees the pixels training saw; else None: the processor's own limits, as before for checkpoints not trained
    by iadr1 (published checkpoints give the published results).
    """
    trained = trained_max_pixels(model_path) if Path(model_path).is_dir() else None
    if trained is None:
        return max_pixels, None
    cap, path = trained
    if max_pixels is None:
        return cap, f"max_pixels {cap}: the image cap this model was trained with ({path}; --max-pixels to change)"
    if max_pixels != cap:
        return max_pixels, f"max_pixels {max_pixels} (--max-pixels), not the {cap} this model was trained with ({path})"
    return max_pixels, None


# ---------------------------------------------------------------------------------------------------------------
# P(yes): the model's probability of answering yes, read at the position where the answer word starts
# ---------------------------------------------------------------------------------------------------------------
_ANCHOR = {"iadr1": "<answer>", "anomaly_r1": "<answer>", "baseline": "", "api": ""}
_CHOICES = {"iadr1": ("yes", "no"), "baseline": ("yes", "no"), "api": ("yes", "no"), "anomaly_r1": ("a", "b")}
_LETTERS_ONLY = re.compile(r"[^a-z]")


def normalize_piece(text: str) -> str:
    """A token's text reduced to lowercase letters (" Yes" -> "yes", "B." -> "b")."""
    return _LETTERS_ONLY.sub("", text.lower())


def answer_position(pieces: Sequence[str], style: PromptStyle) -> int | None:
    """Index of the generated token that starts the answer word, or None if the reply never gets there.

    Tagged styles: the first token after `<answer>` that is not whitespace. Untagged styles (baselines): the first
    token that is not whitespace.
    """
    anchor = _ANCHOR[style]
    text = ""
    armed = anchor == ""
    for i, piece in enumerate(pieces):
        if armed and piece.strip():
            return i
        text += piece
        if not armed and text.rstrip().endswith(anchor):
            armed = True
    return None


def p_yes_from_candidates(
    candidates: Mapping[str, float] | Iterable[tuple[str, float]], style: PromptStyle
) -> float | None:
    """P(yes) = p(yes tokens) / (p(yes tokens) + p(no tokens)) at the answer position.

    `candidates` are (token text, logprob) pairs (or a mapping): the top-k of vLLM/OpenAI, or every yes/no
    token of the vocabulary (transformers). " Yes", "yes" and "YES" all count as yes. For the Anomaly-R1 letter
    style the "yes" option is A and "no" is B. None when neither appears.
    """
    yes_word, no_word = _CHOICES[style]
    pairs = candidates.items() if isinstance(candidates, Mapping) else candidates
    p_yes = p_no = 0.0
    for text, logprob in pairs:
        word = normalize_piece(text)
        if word == yes_word:
            p_yes += math.exp(logprob)
        elif word == no_word:
            p_no += math.exp(logprob)
    total = p_yes + p_no
    return p_yes / total if total > 0 else None


def p_yes_from_steps(
    pieces: Sequence[str],
    candidates_at: Callable[[int], Mapping[str, float] | Iterable[tuple[str, float]]],
    style: PromptStyle,
) -> float | None:
    """P(yes) at the answer position of a generated sequence (`candidates_at(i)` gives that step's logprobs)."""
    pos = answer_position(pieces, style)
    return None if pos is None else p_yes_from_candidates(candidates_at(pos), style)
