"""From a defect mask to the facts an annotation needs: the 3x3-grid word, size, regions, extent (docs/annotate.md).

The one location rule of iadr1 (the synthetic dataset and `iadr1 annotate` both use it):

- a pixel is defective when its value is above half the mask's maximum (0/1, 0/255 and label images all work);
- regions are the 8-connected groups of defective pixels on the *working grid*: the mask max-pooled by a whole
  factor `f` so that its long side is at most `WORK_SIDE` pixels (f = 1 for masks up to that size). Two spots closer
  than `f` pixels are one region; at 1024 x 1024 that is 4 pixels, 0.4% of the side;
- the location is the grid cell ("top left" ... "bottom right", "center" in the middle; thirds of the height and
  width) of the centroid of the largest region (most defective pixels), computed from the full-resolution pixels: the
  working grid gives it to within f/2 pixels, and when that is closer than f pixels to a cell border it is computed
  again from the full-resolution pixels of the region, so the reduced size never changes the answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The 3x3 grid words the location reward understands (row-major, top-left first; docs/method.md §4).
GRID_WORDS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
WORK_SIDE = 256  # long side of the working grid regions are found on

# Size words by the share of the image the defect covers.
SMALL_BELOW = 0.015
MEDIUM_BELOW = 0.05


def size_word(area_fraction: float) -> str:
    """small (< 1.5% of the image), medium-sized (< 5%), large."""
    return "small" if area_fraction < SMALL_BELOW else ("medium-sized" if area_fraction < MEDIUM_BELOW else "large")


def where_phrase(location: str) -> str:
    """The phrase for a grid word: "in the center of the image", "in the top left part of the image"."""
    return "in the center of the image" if location == "center" else f"in the {location} part of the image"


@dataclass(frozen=True)
class MaskFacts:
    """What a mask says about a defect. `location` is the grid word of the largest region (module docstring);
    `regions` how many there are; `cells` every grid word the defect touches; `area_fraction` the share of the image
    all regions cover; `extent` a phrase for a largest region that spreads (None when it is compact), and `bbox` its
    bounding box."""

    location: str
    area_fraction: float
    regions: int
    cells: tuple[str, ...]
    extent: str | None
    bbox: tuple[float, float, float, float]  # top, left, bottom, right as fractions of the height and width

    @property
    def size(self) -> str:
        return size_word(self.area_fraction)

    def to_json(self) -> dict:
        d = asdict(self)
        d["area_fraction"] = round(self.area_fraction, 6)
        d["bbox"] = [round(v, 4) for v in self.bbox]
        d["cells"] = list(self.cells)
        return d


def binarize(values: np.ndarray) -> np.ndarray:
    """Defective pixels: values above half the mask's maximum (all False for an all-zero mask)."""
    a = np.asarray(values)
    if a.dtype == bool:
        return a
    if a.ndim == 3:  # a colour mask: any channel
        a = a.max(axis=2)
    top = a.max() if a.size else 0
    return a > top / 2 if top > 0 else np.zeros(a.shape, bool)


def _cell(y: float, x: float, h: int, w: int) -> int:
    return min(int(y * 3 // h), 2) * 3 + min(int(x * 3 // w), 2)


def _near_border(v: float, n: int, margin: float) -> bool:
    return any(abs(v - n * k / 3) < margin for k in (1, 2))


def block_counts(im: Any, f: int) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
    """Defective pixels per f x f block (int32; edge blocks cover what is left) of a decoded 8-bit ("L") mask, and a
    maker of the full-resolution binary mask. Pillow's box reduction of the 0/255 mask does it in C (a strided numpy
    sum over a 1024 x 1024 mask costs 15x more); its average is rounded to an integer, exact for f <= 15
    (255 / f^2 > 1), within one pixel per block beyond."""
    # Above half the maximum (`binarize`'s rule), by a lookup table: the maximum from getextrema costs a tenth of
    # Pillow's histogram (0.2 vs 2 ms on 1024 x 1024), which was half of the whole function.
    top = im.getextrema()[1]
    binary = im.point([255 if v > top / 2 else 0 for v in range(256)])
    if f == 1:
        full = np.asarray(binary) > 127
        return full.astype(np.int32), lambda: full
    h, w = im.size[1], im.size[0]
    mean = np.asarray(binary.reduce(f), dtype=np.float64)
    bh = np.minimum(f, h - np.arange(mean.shape[0]) * f)[:, None]
    bw = np.minimum(f, w - np.arange(mean.shape[1]) * f)[None, :]
    return np.rint(mean * (bh * bw) / 255.0).astype(np.int32), lambda: np.asarray(binary) > 127


def mask_facts(mask: np.ndarray | Any) -> MaskFacts:
    """The facts of a mask: a 2-D array (binary or label values) or a decoded Pillow image (mode "L" or "1", as
    `read_mask` gives; the fast path). An empty mask is a `ValueError`: it has no location."""
    from PIL import Image
    from scipy import ndimage as ndi

    if isinstance(mask, np.ndarray):
        m = binarize(mask)
        if m.ndim != 2:
            raise ValueError(f"a mask is a 2-D array, got shape {m.shape}")
        im = Image.fromarray(m.view(np.uint8) * np.uint8(255))
    else:
        im = mask if mask.mode == "L" else mask.convert("L")
    w, h = im.size
    f = max(1, -(-max(h, w) // WORK_SIDE))
    counts, full_mask = block_counts(im, f)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("empty mask has no location")
    labels, n = ndi.label(counts > 0, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), weights=counts.ravel(), minlength=n + 1)
    sizes[0] = 0
    region = labels == int(np.argmax(sizes))
    ys, xs = np.nonzero(region)
    wts = counts[ys, xs].astype(np.float64)
    # Block centres in full-resolution pixel coordinates (pixel i covers [i, i+1), centroid of pixel centres).
    cy = float(((ys * f + (f - 1) / 2) * wts).sum() / wts.sum())
    cx = float(((xs * f + (f - 1) / 2) * wts).sum() / wts.sum())
    if f > 1 and (_near_border(cy + 0.5, h, f) or _near_border(cx + 0.5, w, f)):
        full = np.kron(region, np.ones((f, f), bool))[:h, :w] & full_mask()
        fy, fx = np.nonzero(full)
        cy, cx = float(fy.mean()), float(fx.mean())
    location = GRID_WORDS[_cell(cy + 0.5, cx + 0.5, h, w)]
    # The extent of the largest region (the other regions are counted, not measured); touched cells of all.
    rows = np.nonzero(region.any(axis=1))[0]
    cols = np.nonzero(region.any(axis=0))[0]
    top, bottom = rows[0] * f / h, min((rows[-1] + 1) * f, h) / h
    left, right = cols[0] * f / w, min((cols[-1] + 1) * f, w) / w
    by, bx = np.nonzero(counts)
    cell_rows = np.minimum((by * f + f / 2) * 3 // h, 2).astype(int)
    cell_cols = np.minimum((bx * f + f / 2) * 3 // w, 2).astype(int)
    touched = np.unique(cell_rows * 3 + cell_cols)
    return MaskFacts(
        location=location,
        area_fraction=total / (h * w),
        regions=int(n),
        cells=tuple(GRID_WORDS[c] for c in touched),
        extent=extent_phrase(top, left, bottom, right),
        bbox=(float(top), float(left), float(bottom), float(right)),
    )


def extent_phrase(top: float, left: float, bottom: float, right: float) -> str | None:
    """How far a defect spreads, from its bounding box (fractions of the height and width): "spans most of the
    image" (both sides > 2/3), "spans the width/height of the image" (one side > 2/3), "spans the left half" (more
    than a third wide and within a half), None for a compact defect."""
    bw, bh = right - left, bottom - top
    if bw > 2 / 3 and bh > 2 / 3:
        return "spans most of the image"
    if bw > 2 / 3:
        return "spans the width of the image"
    if bh > 2 / 3:
        return "spans the height of the image"
    halves = []
    if bh > 1 / 3:
        halves += ["top half"] if bottom <= 0.5 else (["bottom half"] if top >= 0.5 else [])
    if bw > 1 / 3:
        halves += ["left half"] if right <= 0.5 else (["right half"] if left >= 0.5 else [])
    if bh > 1 / 3 or bw > 1 / 3:
        return f"spans the {' and the '.join(halves)}" if halves else "spreads over more than one third of the image"
    return None


def grid_location(mask: np.ndarray) -> str:
    """The 3x3-grid word of a mask: `mask_facts(mask).location` (the module docstring's rule)."""
    return mask_facts(mask).location


# ------------------------------------------------------------------------------------------------------------
# Reading a mask file
# ------------------------------------------------------------------------------------------------------------
def read_mask(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> tuple[Any, tuple[str, str] | None]:
    """(decoded mask image, None), or (None, (problem kind, one-line detail)) for a mask file that cannot give a
    location: `missing_mask` (no file), `unreadable_mask` (not an image, truncated, I/O error), `mask_size` (not the
    image's (width, height)), `empty_mask` (no pixel above zero). `mask_facts` takes the image."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        return None, ("missing_mask", f"{p}: mask file not found")
    try:
        with Image.open(p) as im:
            if image_size is not None and im.size != tuple(image_size):
                w, h = image_size
                return None, ("mask_size", f"{p}: mask is {im.size[0]}x{im.size[1]}, the image {w}x{h}")
            if im.mode in ("L", "1"):
                im.load()
                out = im.convert("L") if im.mode == "1" else im.copy()
            else:  # 16-bit, float, palette or colour: the brightest channel, rescaled to 8 bits
                arr = np.asarray(im)
                arr = arr.max(axis=2) if arr.ndim == 3 else arr
                top = float(arr.max()) if arr.size else 0.0
                out = Image.fromarray((arr.astype(np.float64) * (255.0 / top) if top > 0 else arr * 0).astype(np.uint8))
    except (OSError, ValueError, SyntaxError) as e:
        return None, ("unreadable_mask", f"{p}: mask cannot be read ({type(e).__name__}: {e})")
    if out.getextrema()[1] == 0:
        return None, ("empty_mask", f"{p}: mask has no defective pixel")
    return out, None
