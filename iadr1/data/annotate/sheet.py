"""The contact sheet of an annotation run: a sample of images with what their annotations say, to check by eye.

Each panel shows the image with the 3x3 grid (dashed), the named cell (yellow frame) and the mask's outline (red),
the class, type and location above, and the reasoning below. Defective images first (three of four panels when
there are enough), drawn by a seeded sample so that two runs show the same images.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from iadr1.data.annotate.masks import GRID_WORDS, read_mask

PANEL_SIDE = 256  # pixels of the longest side of each thumbnail
COLUMNS = 4
TEXT_WIDTH = 48  # characters per line of the reasoning
TEXT_LINES = 7


def _sample(records: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    bad = [r for r in records if r.get("anomaly")]
    good = [r for r in records if not r.get("anomaly")]
    n_bad = min(len(bad), max(n - len(good), (3 * n) // 4))
    return rng.sample(bad, n_bad) + rng.sample(good, min(len(good), n - n_bad))


def contact_sheet(
    records: list[dict[str, Any]],
    root: Path,
    out: Path,
    masks: dict[str, str] | None = None,
    n: int = 12,
    seed: int = 0,
) -> Path | None:
    """Draw `n` sampled annotation records into the PNG `out` (None when there are none). `masks` maps an image
    path to its mask path (relative to `root`), for the outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    chosen = _sample(records, n, seed)
    if not chosen:
        return None
    rows = -(-len(chosen) // COLUMNS)
    cols = min(COLUMNS, len(chosen))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, rec in zip(axes.ravel(), chosen, strict=False):
        try:
            with Image.open(root / rec["image"]) as im:
                w, h = im.size
                thumb = im.convert("RGB")
                thumb.thumbnail((PANEL_SIDE, PANEL_SIDE))
        except OSError:
            ax.text(0.5, 0.5, f"cannot read\n{rec['image']}", ha="center", va="center", fontsize=7)
            continue
        tw, th = thumb.size
        ax.imshow(np.asarray(thumb), extent=(0, w, h, 0))
        for k in (1, 2):
            ax.axvline(w * k / 3, color="white", lw=0.6, ls="--", alpha=0.8)
            ax.axhline(h * k / 3, color="white", lw=0.6, ls="--", alpha=0.8)
        mask_rel = (masks or {}).get(rec["image"])
        if mask_rel:
            mask, _ = read_mask(root / mask_rel, (w, h))
            if mask is not None:
                small = mask.resize((tw, th), Image.Resampling.BOX)
                yy = np.linspace(0, h, th)
                xx = np.linspace(0, w, tw)
                ax.contour(xx, yy, np.asarray(small) > 63, levels=[0.5], colors="red", linewidths=1.0)
        loc = rec.get("location")
        if rec.get("anomaly") and loc in GRID_WORDS:
            i = GRID_WORDS.index(loc)
            r, c = divmod(i, 3)
            ax.add_patch(Rectangle((c * w / 3, r * h / 3), w / 3, h / 3, fill=False, ec="yellow", lw=1.6))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        head = f"{rec.get('class')} - {rec.get('type') or 'no type'} - {loc}" if rec.get("anomaly") else (
            f"{rec.get('class')} - normal"
        )  # fmt: skip
        ax.set_title(f"{head}\n{Path(rec['image']).name} ({rec.get('source')})", fontsize=7)
        lines = textwrap.wrap(str(rec.get("reasoning", "")), TEXT_WIDTH)
        if len(lines) > TEXT_LINES:
            lines = [*lines[: TEXT_LINES - 1], lines[TEXT_LINES - 1][: TEXT_WIDTH - 3] + "..."]
        ax.text(0.0, -0.03, "\n".join(lines), transform=ax.transAxes, fontsize=6, va="top", ha="left")
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
