"""The embedded demo dataset: tiles of real photographs with synthetic defects drawn at known places.

`make_dataset(out_dir)` writes a complete small benchmark that every later stage can use, with no download:

    OUT/images/SYNTH/<cls>/train/good/0000.png           normal training images
    OUT/images/SYNTH/<cls>/train/<specie>/0003.png       defective training images (annotated)
    OUT/images/SYNTH/<cls>/test/good/0050.png            held-out normal test images
    OUT/images/SYNTH/<cls>/test/<specie>/0051.png        held-out defective test images
    OUT/images/SYNTH/<cls>/ground_truth/<specie>/0003_mask.png   defect masks (255 = defect), train and test
    OUT/images/SYNTH/<cls>/template/0070.png             normal references for k-shot prompts
    OUT/meta.json  OUT/test_SYNTH_format.json  OUT/annotations.jsonl  OUT/synthetic.json
    OUT/sft_0shot.json  OUT/sft_1shot.json  OUT/grpo_0shot.json  OUT/grpo_1shot.json  OUT/build_report.json

Two steps. `draw_images` draws the image tree (images, masks) and returns the annotations; image numbers run
on across the splits of a class (masks are matched to images by file stem), in the released benchmark's folder
layout. `assemble_dataset` then builds the files with the functions the CLI runs: `iadr1 convert`'s
(`scan_layout("folder", OUT/images, "SYNTH")`, `write_meta`, `key_scheme`, `build_test_records`) and
`iadr1 build-data`'s (`build_data`, on the `train` split only). Paths in every file are relative to
`OUT/images` (the image root).

Tiles are cut from photographs that ship inside scikit-image (brick, grass and gravel textures; coins, with
each tile centred on one coin found by segmentation), tinted per class and jittered (crop scale, flips,
brightness). Train, test and template tiles come from disjoint parts of each photograph (coins: disjoint
coins). Each defective tile gets one of eight defects, one per category of the SC-GRPO type reward
(docs/method.md §4), with random size and contrast; the annotation's location is the 3x3-grid cell of the
mask's centroid and its reasoning describes what was drawn. Everything is a function of the seed: two runs
write byte-identical files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from iadr1.data.annotate.defect_names import DEFECT_NAMES
from iadr1.data.annotate.masks import GRID_WORDS, grid_location, size_word, where_phrase  # noqa: F401 (re-exported)
from iadr1.data.annotate.reasoning import NORMAL_ENDINGS, defect_verdict
from iadr1.errors import ConfigError

DATASET = "SYNTH"
CLASSES: tuple[str, ...] = ("brick", "grass", "gravel", "coins")

# The eight kinds drawn (folder names), one per category of the type reward; their types and the 3x3 grid words
# come from the annotator (`iadr1.data.annotate`), the one owner of those rules.
SPECIES: tuple[str, ...] = (
    "scratch", "hole", "stain", "crack", "missing_part", "deformation", "foreign_object", "abrasion",
)  # fmt: skip
DEFECT_TYPES: dict[str, str] = {s: DEFECT_NAMES[s] for s in SPECIES}  # type: ignore[misc]

_TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (1.08, 0.72, 0.58),
    "grass": (0.74, 1.02, 0.56),
    "gravel": (1.0, 0.96, 0.88),
    "coins": (1.06, 0.98, 0.82),
}
_INTROS: dict[str, tuple[str, ...]] = {
    "brick": (
        "The image shows a brick wall with regular rows of bricks and mortar joints.",
        "This is a close view of a brick surface: bricks separated by straight mortar lines.",
    ),
    "grass": (
        "The image shows a dense grass texture made of thin blades.",
        "This is a close view of grass: many thin, similar blades in a random arrangement.",
    ),
    "gravel": (
        "The image shows a gravel surface made of many small stones.",
        "This is a close view of gravel: small rounded stones of similar size packed together.",
    ),
    "coins": (
        "The image shows a coin lying on a dark background.",
        "This is a close view of a single coin with its round rim and embossed surface.",
    ),
}
_COIN_INTRO_NORMAL_EXTRA = "Its outline is complete and round."


# ------------------------------------------------------------------------------------------------------------
# Source photographs
# ------------------------------------------------------------------------------------------------------------
@cache
def _photo(name: str) -> np.ndarray:
    """The grayscale photograph as float32 in [0, 1] (scikit-image ships these files; no download)."""
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0


@lru_cache(maxsize=1)
def _coin_mask() -> np.ndarray:
    """Where the coins are in `skimage.data.coins()`: a watershed on Sobel edges from dark/bright seeds."""
    from scipy import ndimage as ndi
    from skimage import filters, segmentation

    img = (_photo("coins") * 255).astype(np.uint8)
    markers = np.zeros(img.shape, np.int32)
    markers[img < 30] = 1
    markers[img > 150] = 2
    return ndi.binary_fill_holes(segmentation.watershed(filters.sobel(img), markers) == 2)


@lru_cache(maxsize=1)
def _coins() -> tuple[tuple[float, float, float], ...]:
    """(row, col, diameter) of each coin, in reading order."""
    from skimage import measure

    lab = measure.label(_coin_mask())
    regions = [r for r in measure.regionprops(lab) if r.area > 400]
    regions.sort(key=lambda r: (round(r.centroid[0] / 40), r.centroid[1]))  # row by row, stable
    return tuple((float(r.centroid[0]), float(r.centroid[1]), float(r.equivalent_diameter_area)) for r in regions)


def _split_code(split: str) -> int:
    return {"train": 0, "test": 1, "template": 2}[split]


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(a, (size, size), order=1, anti_aliasing=a.shape[0] > size, preserve_range=True).astype(np.float32)


def _texture_tile(cls: str, split: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A gray tile from the split's part of the photograph (train: left 5/8; test, template: right 3/8)."""
    photo = _photo(cls)
    h, w = photo.shape
    x0, x1 = (0, w * 5 // 8) if split == "train" else (w * 5 // 8, w)
    hi = min(x1 - x0, size * 4 // 3)  # crop scale jitter; large sizes upsample the narrow test part
    side = int(rng.integers(min(max(size * 5 // 6, 48), hi), hi + 1))
    r = int(rng.integers(0, h - side + 1))
    c = int(rng.integers(x0, x1 - side + 1))
    tile = photo[r : r + side, c : c + side]
    tile = np.rot90(tile, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    return _resize(np.ascontiguousarray(tile), size), None


def _coin_tile(split: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A gray tile centred (with jitter) on one coin, and its mask; every 4th coin is kept for test."""
    coins = _coins()
    pool = [c for i, c in enumerate(coins) if (i % 4 == 3) == (split != "train")]
    cy, cx, d = pool[int(rng.integers(0, len(pool)))]
    photo, cmask = _photo("coins"), _coin_mask()
    h, w = photo.shape
    side = int(round(d * rng.uniform(1.45, 1.75)))
    r = int(round(cy + rng.uniform(-0.08, 0.08) * side - side / 2))
    c = int(round(cx + rng.uniform(-0.08, 0.08) * side - side / 2))
    r, c = min(max(r, 0), h - side), min(max(c, 0), w - side)
    tile, m = photo[r : r + side, c : c + side], cmask[r : r + side, c : c + side].astype(np.float32)
    # Keep only the coin the tile is centred on, so defects land on it (neighbours may show at the border).
    from skimage import measure

    lab = measure.label(m > 0.5)
    centre_label = lab[int(cy) - r, int(cx) - c] if 0 <= int(cy) - r < side and 0 <= int(cx) - c < side else 0
    m = (lab == centre_label).astype(np.float32) if centre_label else m
    k = int(rng.integers(0, 4))
    tile, m = np.rot90(tile, k), np.rot90(m, k)
    if rng.random() < 0.5:
        tile, m = tile[:, ::-1], m[:, ::-1]
    return _resize(np.ascontiguousarray(tile), size), _resize(np.ascontiguousarray(m), size) > 0.5


def _colorize(gray: np.ndarray, cls: str, rng: np.random.Generator) -> np.ndarray:
    tint = np.array(_TINTS[cls], np.float32) * rng.uniform(0.94, 1.06, 3).astype(np.float32)
    gain = rng.uniform(0.85, 1.15)
    offset = rng.uniform(-0.04, 0.04)
    return np.clip(gray[..., None] * tint * gain + offset, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# Drawing helpers
# ------------------------------------------------------------------------------------------------------------
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _stroke_alpha(points: np.ndarray, size: int, width: float) -> np.ndarray:
    """Anti-aliased coverage of a polyline given by dense (row, col) points, `width` pixels wide."""
    from scipy import ndimage as ndi

    grid = np.ones((size, size), bool)
    p = np.round(points).astype(int)
    keep = (p[:, 0] >= 0) & (p[:, 0] < size) & (p[:, 1] >= 0) & (p[:, 1] < size)
    grid[p[keep, 0], p[keep, 1]] = False
    dist = ndi.distance_transform_edt(grid)
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0).astype(np.float32)


def _blob(size: int, cy: float, cx: float, r: float, rng: np.random.Generator, elong: float = 1.0) -> np.ndarray:
    """A soft irregular blob in [0, 1]: an elliptical falloff roughened by smoothed noise (>0.5 = inside)."""
    from scipy import ndimage as ndi

    yy, xx = _grid(size)
    th = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(th) + dy * np.sin(th)) / (r * elong)
    v = (-dx * np.sin(th) + dy * np.cos(th)) / r
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=max(r / 3, 1.0))
    noise = np.clip(noise / (noise.std() + 1e-6), -1.5, 1.5)
    q = np.sqrt(u * u + v * v) * (1.0 + 0.25 * noise)
    f = np.clip(1.5 - q, 0.0, 1.0).astype(np.float32)
    # Keep the one piece around the centre: noise can raise stray specks far away, which would not read as one
    # defect.
    lab, _ = ndi.label(f > 0)
    centre = lab[min(max(int(cy), 0), size - 1), min(max(int(cx), 0), size - 1)]
    return f * (lab == centre) if centre else f


def _blend(img: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return (img * (1 - a) + top * a).astype(np.float32)


def _local_mean(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sel = img[mask] if mask.any() else img.reshape(-1, 3)
    return sel.mean(axis=0)


def _strength_word(c: float) -> str:
    return "faint" if c < 0.55 else "clearly visible"


# ------------------------------------------------------------------------------------------------------------
# The eight defects. Each returns (image, mask, description); the description is part of the reasoning text.
# `c` in [0.35, 1] is the contrast, `s` in [0.7, 1.3] the size factor; (cy, cx) the centre chosen by the
# caller.
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Ctx:
    cls: str
    size: int
    rng: np.random.Generator
    obj: np.ndarray | None  # coin mask for object classes, else None
    cy: float
    cx: float
    c: float
    s: float


def _scratch(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    n, rng = k.size, k.rng
    length = n * rng.uniform(0.28, 0.5) * k.s
    th = rng.uniform(0, np.pi)
    u = np.array([np.sin(th), np.cos(th)])
    p0, p1 = np.array([k.cy, k.cx]) - u * length / 2, np.array([k.cy, k.cx]) + u * length / 2
    bend = np.array([-u[1], u[0]]) * rng.uniform(-0.12, 0.12) * length
    t = np.linspace(0, 1, int(length * 4) + 8)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ((p0 + p1) / 2 + bend) + t**2 * p1
    width = rng.uniform(1.0, 2.0) * max(n / 96, 0.75)
    alpha = _stroke_alpha(pts, n, width)
    bright = rng.random() < 0.6
    base = _local_mean(img, alpha > 0.3)
    color = np.clip(base + (0.55 if bright else -0.5) * k.c, 0, 1) if bright else base * (1 - 0.75 * k.c)
    out = _blend(img, np.broadcast_to(color, img.shape), alpha)
    deg = np.degrees(th) % 180
    direction = "vertically" if deg < 22 or deg > 158 else ("horizontally" if 68 < deg < 112 else "diagonally")
    shape = "slightly curved" if abs(bend).max() > 0.06 * length else "straight"
    desc = (
        f"a thin {'bright' if bright else 'dark'} {shape} line about {int(length)} pixels long "
        f"runs {direction} "
        f"across the surface; it is {_strength_word(k.c)} and cuts through the normal pattern like a scratch"
    )
    return out, alpha > 0.3, desc


def _hole(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    n, rng = k.size, k.rng
    r = n * rng.uniform(0.05, 0.1) * k.s
    yy, xx = _grid(n)
    th = rng.uniform(0, np.pi)
    ry = r * rng.uniform(0.7, 1.0)
    dy, dx = yy - k.cy, xx - k.cx
    u = (dx * np.cos(th) + dy * np.sin(th)) / r
    v = (-dx * np.sin(th) + dy * np.cos(th)) / ry
    q = np.sqrt(u * u + v * v)
    inside = np.clip((1 - q) * r + 0.5, 0, 1).astype(np.float32)
    rim = np.clip(1.0 - np.abs(q - 1.0) * r / 1.2, 0, 1).astype(np.float32)
    depth = np.clip(0.04 + 0.1 * (dy / (r + 1e-6)), 0, 0.2)[..., None]  # a little light on the far wall
    base = _local_mean(img, inside > 0.5)
    dark = base * (1 - k.c) * 0.5 + depth
    out = _blend(img, np.broadcast_to(base * 1.25 + 0.05, img.shape).clip(0, 1), rim * 0.6 * k.c)
    out = _blend(out, np.broadcast_to(dark, img.shape) if dark.ndim == 1 else dark, inside)
    mask = inside > 0.5
    desc = (
        f"a {size_word(mask.mean())} round dark opening with a lighter rim goes into the material; "
        "the surface texture is interrupted there, as by a hole"
    )
    return out, mask, desc


_STAIN_COLORS = {
    "brownish": (0.36, 0.22, 0.1),
    "dark, oily": (0.07, 0.07, 0.08),
    "yellowish": (0.78, 0.68, 0.2),
    "rust-coloured": (0.58, 0.27, 0.1),
    "bluish": (0.2, 0.3, 0.6),
}


def _stain(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    n, rng = k.size, k.rng
    f = _blob(n, k.cy, k.cx, n * rng.uniform(0.08, 0.15) * k.s, rng, elong=rng.uniform(1.0, 1.6))
    # Only colours that differ from the surface: a rust stain on red brick would be a defect no one can see.
    base = _local_mean(img, f > 0.5)
    names = [n for n, col in _STAIN_COLORS.items() if np.abs(np.array(col) - base).sum() > 0.45]
    names = names or [max(_STAIN_COLORS, key=lambda n: np.abs(np.array(_STAIN_COLORS[n]) - base).sum())]
    name = names[int(rng.integers(0, len(names)))]
    alpha = np.clip(f * 1.6 - 0.3, 0, 1) * (0.4 + 0.5 * k.c)
    out = _blend(img, np.broadcast_to(np.array(_STAIN_COLORS[name], np.float32), img.shape), alpha)
    mask = f > 0.5
    desc = (
        f"an irregular {name} patch with soft edges discolours a {size_word(mask.mean())} area; "
        f"it is {_strength_word(k.c)} and looks like contamination on top of the surface"
    )
    return out, mask, desc


def _crack(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    n, rng = k.size, k.rng
    half = n * rng.uniform(0.14, 0.26) * k.s
    th0 = rng.uniform(0, 2 * np.pi)
    paths = []
    for sign in (1, -1):
        th, p, pts = th0 + (0 if sign == 1 else np.pi), np.array([k.cy, k.cx]), []
        for _ in range(int(half / 0.5)):
            th += rng.normal(0, 0.18)
            p = p + 0.5 * np.array([np.sin(th), np.cos(th)])
            pts.append(p)
        paths.append(np.array(pts))
    main = np.concatenate([paths[1][::-1], [[k.cy, k.cx]], paths[0]])
    # One side branch from a random point of the main line.
    start = main[int(rng.integers(len(main) // 4, 3 * len(main) // 4))]
    th = th0 + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    br, p = [], start
    for _ in range(int(half * 0.6 / 0.5)):
        th += rng.normal(0, 0.2)
        p = p + 0.5 * np.array([np.sin(th), np.cos(th)])
        br.append(p)
    alpha = np.maximum(
        _stroke_alpha(main, n, rng.uniform(1.1, 2.0) * max(n / 96, 0.75)),
        _stroke_alpha(np.array(br), n, 1.0 * max(n / 96, 0.75)),
    )
    base = _local_mean(img, alpha > 0.3)
    out = _blend(img, np.broadcast_to(base * (1 - 0.85 * k.c), img.shape), alpha)
    mask = alpha > 0.3
    desc = (
        f"a jagged dark line about {int(2 * half)} pixels long zigzags through the material "
        "and splits into a "
        "branch; the material is broken along it, like a crack"
    )
    return out, mask, desc


def _missing_part(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    """Textures: a chip cut out of the tile's edge nearest the centre; coins: a piece cut off the rim."""
    from skimage.draw import polygon

    n, rng = k.size, k.rng
    bg = np.array([0.1, 0.1, 0.11], np.float32) * rng.uniform(0.7, 1.6)
    noise = rng.normal(0, 0.015, img.shape).astype(np.float32)
    if k.obj is not None:
        ys, xs = np.nonzero(k.obj)
        oy, ox = ys.mean(), xs.mean()
        radius = np.sqrt(k.obj.sum() / np.pi)
        d = np.array([k.cy - oy, k.cx - ox])
        if np.linalg.norm(d) < 1:  # the point is the coin's centre: any direction will do
            a = rng.uniform(0, 2 * np.pi)
            d = np.array([np.sin(a), np.cos(a)])
        d = d / np.linalg.norm(d)
        yy, xx = _grid(n)
        proj = (yy - oy) * d[0] + (xx - ox) * d[1]
        cut = radius * rng.uniform(0.95 - 0.35 * k.s, 1.05 - 0.35 * k.s)
        mask = k.obj & (proj > cut)
        if mask.sum() < 12:  # a tiny sliver is not a visible defect: cut deeper
            mask = k.obj & (proj > radius * 0.55)
        bgc = _local_mean(img, ~k.obj)
        out = img.copy()
        out[mask] = np.clip(bgc + noise[mask], 0, 1)
        desc = (
            f"a {size_word(mask.mean())} piece of the coin's rim is missing: "
            "the round outline is cut off by a "
            "straight edge and the dark background shows where metal should be"
        )
        return out, mask, desc
    # Nearest tile edge to the chosen point decides where the chip is.
    dists = {"top": k.cy, "bottom": n - 1 - k.cy, "left": k.cx, "right": n - 1 - k.cx}
    side = min(dists, key=dists.__getitem__)
    along = k.cx if side in ("top", "bottom") else k.cy
    depth = n * rng.uniform(0.1, 0.2) * k.s + dists[side]
    width = n * rng.uniform(0.18, 0.32) * k.s
    # A ragged outline: points along a half-ellipse into the tile, each pushed in or out at random.
    t = np.linspace(0, np.pi, int(rng.integers(9, 15)))
    a = np.concatenate([[along - width / 2], along - np.cos(t[1:-1]) * width / 2, [along + width / 2]])
    b = np.concatenate([[-1.0], np.sin(t[1:-1]) * depth * rng.uniform(0.55, 1.15, len(t) - 2), [-1.0]])
    if side in ("bottom", "right"):
        b = n - b - 1
    rr, cc = polygon(b, a, (n, n)) if side in ("top", "bottom") else polygon(a, b, (n, n))
    mask = np.zeros((n, n), bool)
    mask[rr, cc] = True
    out = img.copy()
    out[mask] = np.clip(bg + noise[mask], 0, 1)
    desc = (
        f"a {size_word(mask.mean())} piece is missing at the {side} edge: "
        f"the {k.cls} pattern stops at a ragged "
        "outline and a flat dark background shows through the gap"
    )
    return out, mask, desc


def _deformation(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    from skimage.transform import swirl

    n, rng = k.size, k.rng
    radius = n * rng.uniform(0.3, 0.45) * k.s
    strength = rng.uniform(4.0, 7.0) * (0.7 + 0.3 * k.c) * rng.choice([-1, 1])
    out = swirl(img, center=(k.cx, k.cy), strength=strength, radius=radius, mode="reflect", order=1)
    yy, xx = _grid(n)
    rho = np.sqrt((yy - k.cy) ** 2 + (xx - k.cx) ** 2)
    turn = abs(strength) * np.exp(-rho / (radius / 5 * np.log(2)))
    # The defect is where pixels moved visibly: by 3 px or more at 96 px (the tail of the swirl is invisible).
    mask = 2 * rho * np.abs(np.sin(np.minimum(turn, np.pi) / 2)) >= max(2.0, 3.0 * n / 96)
    what = "the coin's outline and relief" if k.obj is not None else f"the {k.cls} pattern"
    desc = (
        f"{what} is twisted into a swirl over a {size_word(mask.mean())} area, so the shape is bent and "
        "distorted instead of regular"
    )
    return out.astype(np.float32), mask, desc


_OBJECT_COLORS = {
    "blue": (0.15, 0.3, 0.85),
    "white": (0.93, 0.93, 0.9),
    "black": (0.05, 0.05, 0.06),
    "orange": (0.95, 0.5, 0.08),
    "green": (0.15, 0.7, 0.3),
}


def _foreign_object(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    from skimage.draw import polygon

    n, rng = k.size, k.rng
    r = n * rng.uniform(0.06, 0.11) * k.s
    sides = int(rng.integers(4, 8))
    ang = np.sort(rng.uniform(0, 2 * np.pi, sides))
    elong = rng.uniform(1.0, 2.2)
    rot = rng.uniform(0, np.pi)
    rad = r * rng.uniform(0.7, 1.1, sides)
    py0, px0 = rad * np.sin(ang), rad * np.cos(ang) * elong
    py = k.cy + py0 * np.cos(rot) + px0 * np.sin(rot)
    px = k.cx - py0 * np.sin(rot) + px0 * np.cos(rot)
    rr, cc = polygon(py, px, (n, n))
    mask = np.zeros((n, n), bool)
    mask[rr, cc] = True
    if mask.sum() < 6:
        mask[int(k.cy) - 1 : int(k.cy) + 2, int(k.cx) - 1 : int(k.cx) + 2] = True
    name = list(_OBJECT_COLORS)[int(rng.integers(0, len(_OBJECT_COLORS)))]
    yy, xx = _grid(n)
    shade = 0.85 + 0.3 * ((yy - k.cy) * 0.4 + (xx - k.cx) * 0.6) / (2 * r)  # light from the top left
    color = np.clip(np.array(_OBJECT_COLORS[name], np.float32) * shade[..., None], 0, 1)
    shadow = np.roll(mask, (2, 2), axis=(0, 1)) & ~mask
    out = img.copy()
    out[shadow] *= 0.6
    a = mask.astype(np.float32) * (0.55 + 0.45 * k.c)
    out = _blend(out, color, a)
    shape = "elongated" if elong > 1.5 else "compact"
    desc = (
        f"a small {shape} {name} object that does not belong to the {k.cls} lies on the surface and casts a "
        "shadow; it is a foreign object"
    )
    return out, mask, desc


def _abrasion(img: np.ndarray, k: _Ctx) -> tuple[np.ndarray, np.ndarray, str]:
    from scipy import ndimage as ndi

    n, rng = k.size, k.rng
    f = _blob(n, k.cy, k.cx, n * rng.uniform(0.09, 0.16) * k.s, rng, elong=rng.uniform(1.4, 2.2))
    blurred = np.stack([ndi.gaussian_filter(img[..., i], rng.uniform(1.5, 2.5)) for i in range(3)], -1)
    yy, xx = _grid(n)
    th = rng.uniform(0, np.pi)
    scuffs = 0.5 + 0.5 * np.sin((xx * np.cos(th) + yy * np.sin(th)) * rng.uniform(1.2, 2.0))
    worn = np.clip(blurred * 0.8 + 0.2 * blurred.mean(-1, keepdims=True) + 0.12 + 0.08 * scuffs[..., None], 0, 1)
    alpha = np.clip(f * 1.6 - 0.3, 0, 1) * (0.5 + 0.5 * k.c)
    out = _blend(img, worn, alpha)
    mask = f > 0.5
    desc = (
        f"a {size_word(mask.mean())} worn patch is lighter and blurred, with fine parallel scuff marks; "
        "the surface texture is rubbed away there, as by abrasion"
    )
    return out.astype(np.float32), mask, desc


_DRAW: dict[str, Callable[[np.ndarray, _Ctx], tuple[np.ndarray, np.ndarray, str]]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "missing_part": _missing_part,
    "deformation": _deformation,
    "foreign_object": _foreign_object,
    "abrasion": _abrasion,
}


# ------------------------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One generated image. `clean` is the same tile without the defect (same noise), for checks and tests."""

    cls: str
    split: str
    index: int
    specie: str  # "good" or a key of DEFECT_TYPES
    image: np.ndarray  # float32 HxWx3 in [0, 1]
    clean: np.ndarray
    mask: np.ndarray  # bool HxW, all False for normal images
    reasoning: str
    location: str | None = None
    type: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def anomalous(self) -> bool:
        return self.specie != "good"


def make_sample(
    cls: str,
    split: str,
    index: int,
    specie: str,
    size: int = 96,
    seed: int = 0,
    contrast: tuple[float, float] = (0.35, 1.0),
    scale: tuple[float, float] = (0.7, 1.3),
) -> Sample:
    """Generate one image of `cls` (normal when `specie` is "good"); a pure function of its arguments.

    A defect's strength and size are drawn uniformly from `contrast` and `scale` (relative units, 1.0 a
    clearly visible defect of medium size); raise their lower ends for easier data (the demo preset).
    """
    if cls not in _TINTS:
        raise ConfigError(f"unknown synthetic class {cls!r}; choose from {', '.join(CLASSES)}")
    rng = np.random.default_rng([seed, _split_code(split), CLASSES.index(cls), index])
    gray, obj = _coin_tile(split, size, rng) if cls == "coins" else _texture_tile(cls, split, size, rng)
    base = _colorize(gray, cls, rng)
    intro = _INTROS[cls][int(rng.integers(0, len(_INTROS[cls])))]
    # Sensor noise and a slight blur shared by `clean` and `image`, so that their difference is the defect
    # only.
    noise = rng.normal(0, rng.uniform(0.005, 0.02), base.shape).astype(np.float32)
    blur = rng.uniform(0.0, 0.6)

    def finish(x: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        if blur > 0.2:
            x = np.stack([ndi.gaussian_filter(x[..., i], blur) for i in range(3)], -1)
        return np.clip(x + noise, 0.0, 1.0).astype(np.float32)

    clean = finish(base)
    if specie == "good":
        extra = f" {_COIN_INTRO_NORMAL_EXTRA}" if cls == "coins" else ""
        ending = NORMAL_ENDINGS[int(rng.integers(0, len(NORMAL_ENDINGS)))]
        return Sample(cls, split, index, specie, clean, clean, np.zeros((size, size), bool), f"{intro}{extra} {ending}")
    if specie not in _DRAW:
        raise ConfigError(f"unknown defect {specie!r}; choose from {', '.join(SPECIES)}")

    contrast, scale = float(rng.uniform(*contrast)), float(rng.uniform(*scale))
    best: tuple[float, np.ndarray, np.ndarray, str, float, float] | None = None
    # A defect drawn where it cannot be seen (a swirl inside a flat brick face) would be a wrong label: redraw
    # at another place until the masked pixels change visibly, keeping the most visible attempt.
    for _ in range(_PLACEMENT_TRIES):
        cy, cx = _centre(specie, obj, size, rng)
        ctx = _Ctx(cls, size, rng, obj, cy, cx, c=contrast, s=scale)
        drawn, mask, desc = _DRAW[specie](base, ctx)
        if not mask.any():
            continue
        visible = float(np.abs(drawn - base).mean(-1)[mask].mean())
        if best is None or visible > best[0]:
            best = (visible, drawn, mask, desc, cy, cx)
        if visible >= _MIN_VISIBLE:
            break
    if best is None:  # cannot happen with the sizes used; guard so that a defect never has an empty mask
        raise AssertionError(f"empty mask for {cls}/{specie} #{index}")
    _, drawn, mask, desc, cy, cx = best
    image = finish(drawn)
    loc = grid_location(mask)
    reasoning = f"{intro} {where_phrase(loc).capitalize()}, {desc}. {defect_verdict(DEFECT_TYPES[specie])}"
    params = {"cy": cy, "cx": cx, "contrast": contrast, "scale": scale}
    return Sample(cls, split, index, specie, image, clean, mask, reasoning, loc, DEFECT_TYPES[specie], params)


_PLACEMENT_TRIES = 12
_MIN_VISIBLE = 0.04  # mean absolute change of the masked pixels, on the 0..1 scale


def _centre(specie: str, obj: np.ndarray | None, size: int, rng: np.random.Generator) -> tuple[float, float]:
    """Where a defect goes: a random point of a random 3x3 cell; on a coin, a point of the coin (its rim for
    deformations, so the outline bends), except foreign objects, which may lie anywhere."""
    if obj is not None and specie != "foreign_object" and obj.any():
        inner = _erode(obj, max(2, size // 16))
        if specie == "missing_part":
            region = obj
        elif specie == "deformation":
            region = obj & ~_erode(obj, max(2, size // 10))
        else:
            region = inner
        ys, xs = np.nonzero(region if region.any() else obj)
        j = int(rng.integers(0, ys.size))
        return float(ys[j]) + rng.uniform(-0.5, 0.5), float(xs[j]) + rng.uniform(-0.5, 0.5)
    cells = [i for i in range(9) if not (specie == "missing_part" and i == 4)]
    cell = cells[int(rng.integers(0, len(cells)))]
    return (cell // 3 + rng.uniform(0.25, 0.75)) * size / 3, (cell % 3 + rng.uniform(0.25, 0.75)) * size / 3


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.binary_erosion(mask, iterations=r)


# ------------------------------------------------------------------------------------------------------------
# Plans and the dataset on disk
# ------------------------------------------------------------------------------------------------------------
def _per_class(n: int, classes: tuple[str, ...]) -> list[int]:
    """Split `n` images over the classes as evenly as possible (earlier classes take the remainder)."""
    q, r = divmod(n, len(classes))
    return [q + (i < r) for i in range(len(classes))]


def plan_split(
    split: str,
    n: int,
    defect_rate: float,
    seed: int,
    classes: tuple[str, ...] = CLASSES,
    defects: tuple[str, ...] = SPECIES,
) -> list[tuple[str, str]]:
    """(class, specie) for each image of a split: per class exactly rate x count defective (half rounded up),
    kinds cycling through `defects` in a seeded order, positions shuffled by the seed."""
    out: list[tuple[str, str]] = []
    for ci, (cls, k) in enumerate(zip(classes, _per_class(n, classes), strict=True)):
        rng = np.random.default_rng([seed, _split_code(split), 1000 + ci])
        n_bad = int(k * defect_rate + 0.5) if split != "template" else 0  # half up: 2 x 0.25 gives 1, not 0
        kinds = list(rng.permutation(len(defects)))
        species = ["good"] * (k - n_bad) + [defects[kinds[i % len(defects)]] for i in range(n_bad)]
        order = rng.permutation(k)
        out.extend((cls, species[j]) for j in order)
    return out


@dataclass
class SyntheticDataset:
    """Paths of a generated dataset. Image paths inside every file are relative to `image_root`."""

    root: Path
    image_root: Path
    dataset: str
    meta: Path
    test_file: Path
    annotations: Path
    sft_file: Path
    grpo_file: Path
    sft_1shot_file: Path
    grpo_1shot_file: Path
    report: Path
    info: Path | None = None  # synthetic.json: the options and counts (make_dataset)
    sft_val_file: Path | None = None
    grpo_val_file: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == bool:
        im = Image.fromarray(arr.astype(np.uint8) * 255, mode="L")
    else:
        im = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    im.save(path, format="PNG", optimize=False)  # PNG via zlib: same bytes for the same pixels


def make_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 200,
    n_test: int = 80,
    size: int = 96,
    defect_rate: float = 0.5,
    seed: int = 0,
    templates: int = 4,
    classes: tuple[str, ...] | list[str] = CLASSES,
    dataset: str = DATASET,
    val_fraction: float = 0.0,
    on_progress: Callable[[str, int, int], None] | None = None,
    contrast: tuple[float, float] = (0.35, 1.0),
    scale: tuple[float, float] = (0.7, 1.3),
    defects: tuple[str, ...] | list[str] = SPECIES,
) -> SyntheticDataset:
    """Write the demo dataset into `out_dir` (layout in the module docstring) and return its paths.

    `n_train`/`n_test` images are spread evenly over `classes`, a fraction `defect_rate` of each class's
    images defective (exactly rounded); `templates` normal references per class; `size` the square image side
    in pixels (at least 48); `contrast` and `scale` the ranges of defect strength and size (see
    `make_sample`); `defects` the kinds drawn (default all eight). Two steps: `draw_images` writes the image
    tree, `assemble_dataset` turns it into meta, test file and training files. `on_progress(stage, done,
    total)` is called as images are drawn and checked.
    """
    classes, defects = tuple(classes), tuple(defects)
    _check_options(classes, size, defect_rate, n_train, n_test, templates, defects, contrast, scale)
    root = Path(out_dir)
    image_root = root / "images"
    ds_dir = image_root / dataset
    if ds_dir.exists() and any(ds_dir.iterdir()):
        raise ConfigError(f"{ds_dir}: already exists and is not empty; choose a new output folder")

    plans = {
        "train": plan_split("train", n_train, defect_rate, seed, classes, defects),
        "test": plan_split("test", n_test, defect_rate, seed, classes, defects),
        "template": [(c, "good") for c in classes for _ in range(templates)],
    }
    for cls in classes:  # one-shot records pair each training image with another normal one of its class
        if sum(c == cls and s == "good" for c, s in plans["train"]) < 2:
            raise ConfigError(
                f"class {cls!r} gets fewer than 2 normal training images: raise n_train or lower defect_rate"
            )
    annotations = draw_images(image_root, plans, size, seed, contrast, scale, dataset, on_progress)
    ds = assemble_dataset(root, annotations, dataset, templates, seed, val_fraction, on_progress)

    from iadr1.data.io import atomic_write_json

    counts = {
        "train": len(plans["train"]),
        "train_anomalous": sum(s != "good" for _, s in plans["train"]),
        "test": len(plans["test"]),
        "test_anomalous": sum(s != "good" for _, s in plans["test"]),
        "templates": len(plans["template"]),
    }
    options = {
        "n_train": n_train,
        "n_test": n_test,
        "size": size,
        "defect_rate": defect_rate,
        "seed": seed,
        "templates": templates,
        "classes": list(classes),
        "val_fraction": val_fraction,
        "contrast": list(contrast),
        "scale": list(scale),
        "defects": list(defects),
    }
    info = {"dataset": dataset, "image_root": "images", "options": options, "counts": counts, "types": DEFECT_TYPES}
    ds.info = atomic_write_json(root / "synthetic.json", info, indent=2)
    ds.counts = counts
    return ds


def _check_options(
    classes: tuple[str, ...],
    size: int,
    defect_rate: float,
    n_train: int,
    n_test: int,
    templates: int,
    defects: tuple[str, ...],
    contrast: tuple[float, float],
    scale: tuple[float, float],
) -> None:
    """`make_dataset`'s option checks, each a one-line ConfigError."""
    if not classes or any(c not in _TINTS for c in classes) or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be distinct names from {', '.join(CLASSES)}, got {list(classes)}")
    if size < 48:
        raise ConfigError(f"size must be at least 48 pixels (defects must stay visible), got {size}")
    if not 0.0 <= defect_rate <= 1.0:
        raise ConfigError(f"defect_rate must be between 0 and 1, got {defect_rate}")
    if n_train < 2 * len(classes) or n_test < len(classes):
        raise ConfigError(f"need n_train >= {2 * len(classes)} and n_test >= {len(classes)} for {len(classes)} classes")
    if templates < 1:
        raise ConfigError(f"templates must be at least 1, got {templates}")
    if not defects or any(d not in SPECIES for d in defects) or len(set(defects)) != len(defects):
        raise ConfigError(f"defects must be distinct kinds from {', '.join(SPECIES)}, got {list(defects)}")
    for name, (lo, hi) in (("contrast", contrast), ("scale", scale)):
        if not 0.0 < lo <= hi:
            raise ConfigError(f"{name} must be a range (low, high) with 0 < low <= high, got {(lo, hi)}")
    if defect_rate >= 1.0:
        raise ConfigError("defect_rate 1.0 leaves no normal training image for one-shot references; use < 1")


def draw_images(
    image_root: Path,
    plans: dict[str, list[tuple[str, str]]],
    size: int = 96,
    seed: int = 0,
    contrast: tuple[float, float] = (0.35, 1.0),
    scale: tuple[float, float] = (0.7, 1.3),
    dataset: str = DATASET,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Draw the images of `plans` ({split: [(class, specie)]}, splits train, test, template) into the
    released benchmark's folder layout under `image_root / dataset`, with a mask beside each defect, and return
    the annotation of every train and test image (`{image, reasoning[, location, type]}`, the annotations
    file's records). Image numbers run on across the splits of a class: masks are matched by file stem."""
    ds_dir = image_root / dataset
    total = sum(len(p) for p in plans.values())
    next_index: dict[str, int] = {}
    annotations: list[dict[str, Any]] = []
    done = 0
    for split in ("train", "test", "template"):
        seen: dict[str, int] = {}
        for cls, specie in plans.get(split, []):
            i_split = seen[cls] = seen.get(cls, -1) + 1
            idx = next_index[cls] = next_index.get(cls, -1) + 1
            smp = make_sample(cls, split, i_split, specie, size, seed, contrast, scale)
            folder = "template" if split == "template" else f"{split}/{specie}"
            rel = f"{dataset}/{cls}/{folder}/{idx:04d}.png"
            _save_png(image_root / rel, smp.image)
            if smp.anomalous:
                _save_png(ds_dir / cls / "ground_truth" / specie / f"{idx:04d}_mask.png", smp.mask)
            if split != "template":
                ann: dict[str, Any] = {"image": rel, "reasoning": smp.reasoning}
                if smp.anomalous:
                    ann |= {"location": smp.location, "type": smp.type}
                annotations.append(ann)
            done += 1
            if on_progress:
                on_progress("drawing images", done, total)
    return annotations


def assemble_dataset(
    root: Path,
    annotations: list[dict[str, Any]],
    dataset: str = DATASET,
    templates: int = 4,
    seed: int = 0,
    val_fraction: float = 0.0,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SyntheticDataset:
    """Turn the image tree `root/images/<dataset>` and its `annotations` into a benchmark, with the functions
    the CLI runs: meta.json as `iadr1 convert --layout folder` scans it, the test file of the test split as
    `iadr1 convert --test-file` writes it (`templates` similar and random references from template/), and
    the zero- and one-shot training files of the train split as `iadr1 build-data --split train --strict`
    builds them. Returns the paths (`info` and `counts` are the caller's)."""
    from iadr1.data.build import BuildConfig, build_data
    from iadr1.data.convert import build_test_records, scan_layout, write_test_file
    from iadr1.data.io import atomic_write_jsonl
    from iadr1.data.keys import key_scheme
    from iadr1.data.meta import write_meta

    image_root = root / "images"
    meta = scan_layout("folder", image_root, dataset)
    meta_path = write_meta(meta, root / "meta.json")
    ann_path = atomic_write_jsonl(root / "annotations.jsonl", annotations)
    keys = key_scheme(meta, image_root, dataset, "folder")
    test_path = write_test_file(
        build_test_records(meta, image_root, templates=templates, seed=seed, dataset=keys.dataset, workers=1),
        root / f"test_{dataset}_format.json",
    )
    result = build_data(
        meta_path,
        ann_path,
        image_root,
        root,
        BuildConfig(shots=[0, 1], seed=seed, val_fraction=val_fraction, splits=["train"], strict=True, workers=1),
        on_progress=on_progress,
    )
    f = result.files
    return SyntheticDataset(
        root=root,
        image_root=image_root,
        dataset=dataset,
        meta=meta_path,
        test_file=test_path,
        annotations=ann_path,
        sft_file=f["sft_0shot"].path,
        grpo_file=f["grpo_0shot"].path,
        sft_1shot_file=f["sft_1shot"].path,
        grpo_1shot_file=f["grpo_1shot"].path,
        report=result.report_path,
        sft_val_file=f["sft_0shot_val"].path if "sft_0shot_val" in f else None,
        grpo_val_file=f["grpo_0shot_val"].path if "grpo_0shot_val" in f else None,
    )
