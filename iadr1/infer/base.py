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
from typing import Any

from iadr1.data.perturb import Perturbation, load_image
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
    p_defect: float | None = None  # the decision score (`p_defect_from_steps`)
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
    # Applied to every image (query and references) right after decoding, in order, at the image's own size
    # (`iadr1.data.perturb.load_image`, the one image reader of the backends); noise is seeded from `seed`.
    perturb: tuple[Perturbation, ...] = ()


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


def request_images(r: Request, options: GenerationOptions) -> list:
    """The images of a request as the model is to see them (PIL, RGB, slot order): decoded, then perturbed by
    `options.perturb` at their own size (`iadr1.data.perturb.load_image`). Every backend reads images here."""
    return [load_image(p, options.perturb, options.seed) for p in r.images]


def sized_images(r: Request, options: GenerationOptions, max_pixels: int | None, factor: int) -> list:
    """`request_images`, each then sized by training's rule (`iadr1.models.loading.fit_image`): what the local
    backends hand to the processor."""
    from iadr1.models.loading import fit_image

    return [fit_image(im, max_pixels, factor) for im in request_images(r, options)]


def prefetch_images(
    requests: Iterable[Request],
    options: GenerationOptions,
    max_pixels: int | None,
    factor: int,
    workers: int,
    ahead: int | None = None,
) -> Iterator[tuple[Request, Any]]:
    """(request, future of its `sized_images`) in request order, decoded and resized by `workers` threads at most
    `ahead` requests beyond the one the backend is at (`iadr1.infer.prefetch`; 0 workers: inline, at
    `result()`). `future.result()` raises what reading the images raised, as an inline call would."""
    from iadr1.infer.prefetch import prefetch

    return prefetch(requests, lambda r: sized_images(r, options, max_pixels, factor), workers, ahead)


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


# ---------------------------------------------------------------------------------------------------------------
# P(defect): the decision score, read where the reply decides (docs/deploy.md, "An operating point")
# ---------------------------------------------------------------------------------------------------------------
# In the iadr1 grammar the reply decides at the first tag after </think>: <location> (a defect, location and type
# follow) or <answer> (normal). By the time <answer> is written the model has committed, so P(yes) there is nearly
# 0 or 1; P(defect) is the doubt at the decision. Styles without such a fork decide at the answer word: P(defect) is
# P(yes) there.
_DECISION = {"iadr1": ("</think>", "location", "answer")}


def decision_style(style: PromptStyle) -> bool:
    """Whether `style` decides before its answer word (P(defect) is then read at its own position)."""
    return style in _DECISION


def decision_position(pieces: Sequence[str], style: PromptStyle) -> int | None:
    """Index of the generated token where the reply forks between a defect and a normal answer: the first token
    after the closing think tag that carries a letter (the tag's name; a bare `<` before it is shared by both
    forks). For styles without a fork (`decision_style` false), the answer word's position. None if the reply never
    gets there."""
    if style not in _DECISION:
        return answer_position(pieces, style)
    anchor = _DECISION[style][0]
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        at = text.find(anchor)
        if at >= 0 and any(ch.isalpha() for ch in text[at + len(anchor) :]):
            return i
    return None


def decision_word(text: str) -> str | None:
    """The tag name a token can start at the decision position, lower-cased: `<location>`, `location`, `<loc`
    and ` Loc` give "location"-like letters; a token with anything but the tag's letters, spaces and angle brackets
    (`a.`, `</`, `the`) gives None."""
    core = text.strip().lstrip("<").rstrip(">")
    return core.lower() if core.isalpha() and core.isascii() else None


def decision_side(text: str, style: PromptStyle) -> int | None:
    """1 when the token starts the defect branch's tag, 0 the normal branch's, None for any other token."""
    word = decision_word(text)
    if word is None or style not in _DECISION:
        return None
    _, defect, normal = _DECISION[style]
    for side, tag in ((1, defect), (0, normal)):
        if tag.startswith(word) or word.startswith(tag):
            return side
    return None


def p_defect_from_candidates(
    candidates: Mapping[str, float] | Iterable[tuple[str, float]], style: PromptStyle
) -> float | None:
    """P(defect) = p(defect-tag tokens) / (p(defect-tag tokens) + p(normal-tag tokens)) at the decision position;
    for styles without a fork, P(yes) (`p_yes_from_candidates`). None when neither branch appears."""
    if style not in _DECISION:
        return p_yes_from_candidates(candidates, style)
    pairs = candidates.items() if isinstance(candidates, Mapping) else candidates
    mass = [0.0, 0.0]
    for text, logprob in pairs:
        side = decision_side(text, style)
        if side is not None:
            mass[side] += math.exp(logprob)
    total = mass[0] + mass[1]
    return mass[1] / total if total > 0 else None


def p_defect_from_steps(
    pieces: Sequence[str],
    candidates_at: Callable[[int], Mapping[str, float] | Iterable[tuple[str, float]]],
    style: PromptStyle,
) -> float | None:
    """P(defect) at the decision position of a generated sequence (`candidates_at(i)` gives that step's logprobs)."""
    pos = decision_position(pieces, style)
    return None if pos is None else p_defect_from_candidates(candidates_at(pos), style)


def scores_from_steps(
    pieces: Sequence[str],
    candidates_at: Callable[[int], Mapping[str, float] | Iterable[tuple[str, float]]],
    style: PromptStyle,
) -> tuple[float | None, float | None]:
    """(P(yes), P(defect)) of a generated sequence, for backends that see top-k logprobs per step."""
    return p_yes_from_steps(pieces, candidates_at, style), p_defect_from_steps(pieces, candidates_at, style)
