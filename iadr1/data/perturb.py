"""Image perturbations for robustness runs (`iadr1 infer --perturb`): what a detector sees on the shop floor.

Each perturbation is a small pure function of a decoded image, applied at the image's own resolution, right after
decoding and before any resizing to a model's pixel cap (docs/infer.md, "Robustness: --perturb"):

- `lowlight:SCALE,OFFSET`: every pixel `p -> p * SCALE + OFFSET`, rounded, clipped to 0..255; RobustMAD's low
  light is `lowlight:0.6,-10` (the default: `lowlight` alone);
- `blur:K`: horizontal motion blur, a 1xK box kernel (the mean of K pixels of a row; beyond the edges the border
  pixel repeats); RobustMAD's is `blur:12` (the default);
- `jpeg:Q`: re-encoded as JPEG at quality Q (1..100) and decoded again;
- `noise:SIGMA`: additive Gaussian noise of standard deviation SIGMA x 255 (SIGMA in 0..1), rounded, clipped; seeded.

A spec string is `NAME` or `NAME:ARG,ARG`; `parse` turns it into a `Perturbation`, whose `spec` is the canonical
string (`lowlight` -> `lowlight:0.6,-10`, `jpeg:030` -> `jpeg:30`). Several perturbations compose in the order given.

The noise of an image is seeded by `image_seed(seed, data)`, a SHA-256 of the run seed and the image file's bytes:
the same image gets the same noise whatever the order, the batching, the backend, or where the data folder lies,
and a reference image shared by many queries is perturbed the same way in each.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iadr1.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# RobustMAD's reference settings (brightness x0.6 - 10; a 12-pixel horizontal motion blur).
LOWLIGHT_DEFAULT = (0.6, -10.0)
BLUR_DEFAULT = 12


@dataclass(frozen=True)
class _Kind:
    """One perturbation name: its argument names, defaults (None: required), types and the check of its values."""

    args: tuple[str, ...]
    defaults: tuple[float, ...] | None
    integer: tuple[bool, ...]
    check: Callable[[tuple[float, ...]], str | None]
    usage: str


def _lowlight_check(a: tuple[float, ...]) -> str | None:
    scale, offset = a
    if not 0 <= scale <= 10:
        return f"SCALE {_num(scale)} is out of range (0..10)"
    if not -255 <= offset <= 255:
        return f"OFFSET {_num(offset)} is out of range (-255..255)"
    return None


_KINDS: dict[str, _Kind] = {
    "lowlight": _Kind(
        ("SCALE", "OFFSET"), LOWLIGHT_DEFAULT, (False, False), _lowlight_check, "lowlight:SCALE,OFFSET (e.g. 0.6,-10)"
    ),
    "blur": _Kind(
        ("K",),
        (BLUR_DEFAULT,),
        (True,),
        lambda a: None if 1 <= a[0] <= 1024 else f"K {_num(a[0])} is out of range (1..1024 pixels)",
        "blur:K (kernel width in pixels, e.g. 12)",
    ),
    "jpeg": _Kind(
        ("Q",),
        None,
        (True,),
        lambda a: None if 1 <= a[0] <= 100 else f"Q {_num(a[0])} is out of range (1..100)",
        "jpeg:Q (quality 1..100, e.g. 30)",
    ),
    "noise": _Kind(
        ("SIGMA",),
        None,
        (False,),
        lambda a: None if 0 <= a[0] <= 1 else f"SIGMA {_num(a[0])} is out of range (0..1, a fraction of 255)",
        "noise:SIGMA (a fraction of 255, e.g. 0.05)",
    ),
}
NAMES = tuple(_KINDS)


def _num(x: float) -> str:
    """A number in its shortest exact form: 12, -10, 0.6 (never 12.0 or 0.6000000001)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: `name` (`lowlight`, `blur`, `jpeg`, `noise`) and its numeric `args`, checked."""

    name: str
    args: tuple[float, ...]

    @property
    def spec(self) -> str:
        """The canonical spec string (`lowlight:0.6,-10`): what run manifests and predictions record."""
        return f"{self.name}:{','.join(_num(a) for a in self.args)}"

    @property
    def seeded(self) -> bool:
        """Whether the result depends on a seed (noise)."""
        return self.name == "noise"

    def __str__(self) -> str:
        return self.spec

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """This perturbation applied to `image` (`rng`: the noise's generator; a fresh seed-0 one if None)."""
        return apply(image, [self], rng=rng)


def parse(spec: str | Perturbation) -> Perturbation:
    """The `Perturbation` of a spec string `NAME[:ARG,ARG]`; a `ConfigError` of one line naming the spec for an
    unknown name, a wrong number or kind of arguments, or a value out of range."""
    if isinstance(spec, Perturbation):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"perturbation {spec!r}: a string NAME[:ARGS] is expected ({', '.join(NAMES)})")
    text = spec.strip()
    name, sep, rest = text.partition(":")
    name = name.strip().lower()
    kind = _KINDS.get(name)
    if kind is None:
        raise ConfigError(f"perturbation {spec!r}: unknown name {name!r} (known: {', '.join(NAMES)})")
    parts = [p.strip() for p in rest.split(",")] if sep else []
    if not parts:
        if kind.defaults is None:
            raise ConfigError(f"perturbation {spec!r}: {name} needs {len(kind.args)} argument(s): {kind.usage}")
        values = kind.defaults
    else:
        if len(parts) != len(kind.args):
            raise ConfigError(
                f"perturbation {spec!r}: {name} takes {len(kind.args)} argument(s), got {len(parts)}: {kind.usage}"
            )
        out: list[float] = []
        for arg, text_value, integer in zip(kind.args, parts, kind.integer, strict=True):
            try:
                value = int(text_value) if integer else float(text_value)
            except ValueError:
                what = "an integer" if integer else "a number"
                raise ConfigError(
                    f"perturbation {spec!r}: {arg} must be {what}, got {text_value!r}: {kind.usage}"
                ) from None
            if not math.isfinite(value):
                raise ConfigError(f"perturbation {spec!r}: {arg} must be finite, got {text_value!r}")
            out.append(value)
        values = tuple(out)
    problem = kind.check(values)
    if problem:
        raise ConfigError(f"perturbation {spec!r}: {problem}")
    return Perturbation(name, tuple(int(v) if i else float(v) for v, i in zip(values, kind.integer, strict=True)))


def parse_all(specs: Iterable[str | Perturbation] | str | None) -> tuple[Perturbation, ...]:
    """`parse` of each spec, in order (a single string is one spec; None is none)."""
    if specs is None:
        return ()
    if isinstance(specs, str | Perturbation):
        specs = [specs]
    return tuple(parse(s) for s in specs)


def canonical(specs: Iterable[str | Perturbation] | str | None) -> list[str]:
    """The canonical spec strings of `specs` (checked), in order."""
    return [p.spec for p in parse_all(specs)]


def image_seed(seed: int, data: bytes | str) -> int:
    """The noise seed of one image: the first 8 bytes of SHA-256(run seed, the image file's bytes, or a key).
    Stable across processes and machines (unlike Python's salted `hash`)."""
    h = hashlib.sha256(f"iadr1-perturb:{int(seed)}:".encode())
    h.update(data.encode() if isinstance(data, str) else data)
    return int.from_bytes(h.digest()[:8], "big")


# ---------------------------------------------------------------------------------------------------------------
# The pure functions (uint8 arrays H x W [x C] in, same shape and dtype out)
# ---------------------------------------------------------------------------------------------------------------
def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half up and clip to 0..255 (float64 in)."""
    import numpy as np

    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def lowlight(a: np.ndarray, scale: float = LOWLIGHT_DEFAULT[0], offset: float = LOWLIGHT_DEFAULT[1]) -> np.ndarray:
    """Every pixel `p * scale + offset`, rounded half up, clipped to 0..255."""
    return _to_uint8(a.astype("float64") * scale + offset)


def blur(a: np.ndarray, k: int = BLUR_DEFAULT) -> np.ndarray:
    """Horizontal motion blur: the mean of a 1xK window of each row (columns x-K//2 .. x+K-1-K//2), the border
    pixel repeated beyond the edges, rounded half up. Exact integer arithmetic (a running sum)."""
    import numpy as np

    k = int(k)
    if k <= 1:
        return a.copy()
    left, right = k // 2, k - 1 - k // 2
    pad = [(0, 0)] * a.ndim
    pad[1] = (left, right)
    padded = np.pad(a.astype(np.int64), pad, mode="edge")
    csum = np.cumsum(padded, axis=1)
    zero = np.zeros_like(csum[:, :1])
    csum = np.concatenate([zero, csum], axis=1)
    window = csum[:, k:] - csum[:, :-k]  # sum of k pixels, one per output column
    return np.clip((window + k // 2) // k, 0, 255).astype(np.uint8)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image re-encoded as JPEG at `quality` and decoded again (same size and mode: L or RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert(image.mode)


def noise(a: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation `sigma * 255`, rounded half up, clipped to 0..255."""
    if sigma == 0:
        return a.copy()
    return _to_uint8(a.astype("float64") + rng.normal(0.0, sigma * 255.0, size=a.shape))


def apply(
    image: Image.Image,
    perturbations: Sequence[str | Perturbation] | str | None,
    seed: int = 0,
    *,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """`image` with `perturbations` applied in the order given (a new image; the input is not changed).

    Works at the image's own size, in its mode for L and RGB (any other mode is converted to RGB first). The noise
    draws from `rng`, else from `numpy.random.default_rng(seed)` (one generator for the whole chain).
    """
    import numpy as np
    from PIL import Image

    chain = parse_all(perturbations)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    if not chain:
        return image.copy()
    mode = image.mode
    generator = rng if rng is not None else np.random.default_rng(int(seed) % 2**64)
    current: Any = image
    for p in chain:
        if p.name == "jpeg":
            img = current if isinstance(current, Image.Image) else Image.fromarray(current, mode)
            current = jpeg(img, int(p.args[0]))
            continue
        a = np.asarray(current, dtype=np.uint8) if isinstance(current, Image.Image) else current
        if p.name == "lowlight":
            current = lowlight(a, p.args[0], p.args[1])
        elif p.name == "blur":
            current = blur(a, int(p.args[0]))
        elif p.name == "noise":
            current = noise(a, p.args[0], generator)
        else:  # pragma: no cover - parse knows only the names above
            raise ValueError(p.name)
    return current.copy() if isinstance(current, Image.Image) else Image.fromarray(current, mode)


def load_image(path: str | os.PathLike, perturbations: Sequence[Perturbation] = (), seed: int = 0) -> Image.Image:
    """The one way the inference backends read an image: decoded as RGB (`iadr1.data.io.load_rgb`), then
    perturbed at its own size. The noise seed is `image_seed(seed, file bytes)` (module docstring)."""
    from iadr1.data.io import load_rgb

    image = load_rgb(path)
    if not perturbations:
        return image
    chain = parse_all(perturbations)
    with open(path, "rb") as f:
        per_image = image_seed(seed, f.read()) if any(p.seeded for p in chain) else 0
    return apply(image, chain, per_image)


__all__ = [
    "BLUR_DEFAULT",
    "LOWLIGHT_DEFAULT",
    "NAMES",
    "Perturbation",
    "apply",
    "blur",
    "canonical",
    "image_seed",
    "jpeg",
    "load_image",
    "lowlight",
    "noise",
    "parse",
    "parse_all",
]
