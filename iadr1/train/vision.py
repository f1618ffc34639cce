"""Vision warm-up: teach a Qwen-family vision tower where defects are, from pixel masks, before PA-SFT.

    from iadr1.train.vision import VisionWarmupConfig, masked_images, warm_up_vision
    train = masked_images("data/meta.json", "data/images", split="train")
    result = warm_up_vision("model", train, "model_warm", VisionWarmupConfig(epochs=8))

Why: IAD-R1 post-trains VLMs whose vision encoders were pretrained on billions of images; a *random* tiny
model has no such encoder, and the PA-SFT loss alone (one verdict token per image) is far too weak a signal to
train one (docs/demo.md has the measurements: a random tower learns nothing usable in one PA-SFT pass). This
stage stands in for the pretrained encoder: the tower and its merger are trained so that each image token's
features say whether its patch of the image shows a defect, a dense signal (dozens of labels per image, from
the masks every anomaly dataset ships). A linear head reads the tokens during this stage only and is thrown
away; the saved checkpoint is the input checkpoint with new vision weights, loadable by every tool.

The loss per image: binary cross-entropy of every token against "at least `min_fraction` of my pixels are
masked" (positives weighted by `pos_weight`: defects are a few tokens of many), plus `image_loss` x the
cross-entropy of the image's top token against the image label (defective or not), plus `kind_loss` x the
cross-entropy of every defective token against the image's defect kind (the dataset's defect name, e.g. its
folder: `MaskedImage.kind`), so that the tokens also say *what* the defect is, not only that there is one,
plus `position_loss` x the cross-entropy of every token against its own 3x3-grid cell (the cell of the
location words), so that each token says *where* it is. Only a tower with absolute position embeddings
(Qwen3-VL) can learn that; the Qwen2-VL / Qwen2.5-VL towers' 2-D rotary attention is relative, and their
`position_accuracy` stays at chance (docs/demo.md has the measurement).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from iadr1.errors import ConfigError, DataError

WARMUP_REPORT = "vision_warmup.json"
_INDEX = "model.safetensors.index.json"


class VisionWarmupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    max_pixels: int | None = Field(None, description="Image pixel cap (use the one of training and inference).")
    seed: int = 0
    augment: bool = Field(True, description="Random flips and quarter turns, image and mask together.")
    pos_weight: float = Field(3.0, gt=0)
    image_loss: float = Field(0.5, ge=0)
    min_fraction: float = Field(0.02, gt=0, le=1, description="Masked share that makes a token defective.")
    kind_loss: float = Field(
        1.0,
        ge=0,
        description="Weight of the defect-kind cross-entropy on defective tokens; 0: defect / no defect only.",
    )
    position_loss: float = Field(
        0.5, ge=0, description="Weight of each token's 3x3-grid-cell cross-entropy (where it is); 0: none."
    )


@dataclass(frozen=True)
class MaskedImage:
    """An image, its defect mask (None for a normal image), its label and its defect kind (None: normal or
    unknown)."""

    image: Path
    mask: Path | None
    anomalous: bool
    kind: str | None = None


def masked_images(
    meta_json: str | os.PathLike, image_root: str | os.PathLike, split: str = "train"
) -> list[MaskedImage]:
    """The images of `split` in a meta.json, read as every stage reads one (`iadr1.data.meta`: AnomalyCLIP's
    split-less forms included; an entry's split is `split_of`). A defective image without a mask is a DataError:
    the warm-up needs to know where its defect is. A defective image's kind is its `specie_name` (the defect
    folder of the benchmark layouts)."""
    from iadr1.data.meta import read_meta, split_of

    root = Path(image_root)
    out: list[MaskedImage] = []
    for entries in read_meta(meta_json).values():
        for e in entries:
            if split_of(e) != split:
                continue
            if e.anomaly and not e.mask_path:
                raise DataError(f"{meta_json}: {e.img_path}: defective image without a mask_path")
            mask, kind = (root / e.mask_path, e.specie_name or None) if e.anomaly else (None, None)
            out.append(MaskedImage(root / e.img_path, mask, bool(e.anomaly), kind))
    if not out:
        raise DataError(f"{meta_json}: no images with split {split!r}")
    return out


def token_labels(mask: np.ndarray, grid_h: int, grid_w: int, patch: int, merge: int) -> np.ndarray:
    """The masked share of each image token, row-major over the merged grid ((grid_h/merge) x (grid_w/merge)).

    The processor resizes the image to (grid_h x patch) x (grid_w x patch) pixels and one token covers a square of
    merge x patch pixels of that; the mask is resized the same way (nearest) and averaged per square."""
    from PIL import Image

    h, w = grid_h * patch, grid_w * patch
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    unit = patch * merge
    return m.reshape(grid_h // merge, unit, grid_w // merge, unit).mean(axis=(1, 3)).reshape(-1)


def _load(items: Sequence[MaskedImage], max_pixels: int, factor: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images at the size PA-SFT and inference use them (`models.loading.load_image`, the one size rule), masks
    resized to match."""
    from PIL import Image, UnidentifiedImageError

    from iadr1.models.loading import load_image

    images, masks = [], []
    for it in items:
        try:
            img = np.asarray(load_image(it.image, max_pixels, factor))
            if it.mask is None:
                mask = np.zeros(img.shape[:2], bool)
            else:
                with Image.open(it.mask) as mk:
                    mask = np.asarray(mk.convert("L").resize(img.shape[1::-1], Image.NEAREST)) > 127
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{e.filename or it.image}: cannot read image ({type(e).__name__})") from None
        if it.anomalous and not mask.any():
            raise DataError(f"{it.mask}: empty mask for a defective image")
        images.append(img)
        masks.append(mask)
    return images, masks


def token_cells(grid_h: int, grid_w: int) -> np.ndarray:
    """The 3x3-grid cell (0..8, row by row, the cells of the location words) of each token of a grid_h x grid_w
    token grid, row-major: the cell holding the token's centre."""
    rows = np.minimum(((np.arange(grid_h) + 0.5) * 3 / grid_h).astype(int), 2)
    cols = np.minimum(((np.arange(grid_w) + 0.5) * 3 / grid_w).astype(int), 2)
    return (rows[:, None] * 3 + cols[None, :]).reshape(-1)


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips / quarter turns of an HxW(xC) array."""
    a = np.rot90(a, k % 4)
    return np.ascontiguousarray(a[:, ::-1] if k >= 4 else a)


class _Batcher:
    """Turns images + masks + kinds into (pixel_values, grid_thw, per-token labels, image labels, per-token kind
    indices, per-token grid cells) with the model's own image processor, so that the tokens are the ones the
    language model will see. A token's kind index is its image's (`kinds[i]`, an index into the run's kind
    list) where the token is defective, -1 (ignored) elsewhere and for images of unknown kind."""

    def __init__(self, processor: Any, min_fraction: float) -> None:
        self.ip = processor.image_processor
        self.patch = int(self.ip.patch_size)
        self.merge = int(self.ip.merge_size)
        self.min_fraction = min_fraction

    def __call__(self, images: list[np.ndarray], masks: list[np.ndarray], kinds: Sequence[int]):
        import torch
        from PIL import Image

        enc = self.ip(images=[Image.fromarray(x) for x in images], return_tensors="pt")
        grid = enc["image_grid_thw"]
        labels = [
            token_labels(m, int(g[1]), int(g[2]), self.patch, self.merge) >= self.min_fraction
            for m, g in zip(masks, grid, strict=True)
        ]
        kind = np.concatenate([np.where(lab, k, -1) for lab, k in zip(labels, kinds, strict=True)])
        cells = np.concatenate([token_cells(int(g[1]) // self.merge, int(g[2]) // self.merge) for g in grid])
        tokens = torch.tensor(np.concatenate(labels), dtype=torch.float32)
        image = torch.tensor([bool(m.any()) for m in masks], dtype=torch.float32)
        return enc["pixel_values"], grid, tokens, image, torch.tensor(kind, dtype=torch.long), torch.tensor(cells)


def _scores(model: Any, head: Any, n_kinds: int, pixel_values: Any, grid: Any) -> tuple[Any, list[Any], Any, Any]:
    """Token defect logits (all images concatenated), each image's slice of them, the tokens' kind logits
    (tokens x `n_kinds`) and grid-cell logits (tokens x 9, or no columns): the head's columns in that order."""
    import torch

    feats = model.model.get_image_features(pixel_values, grid).pooler_output
    out = head(torch.cat(list(feats)))
    logits = out[:, 0]
    return logits, list(torch.split(logits, [len(f) for f in feats])), out[:, 1 : 1 + n_kinds], out[:, 1 + n_kinds :]


def evaluate_tower(
    model: Any, head: Any, n_kinds: int, batcher: _Batcher, images, masks, kinds, batch_size: int = 64
) -> dict[str, Any]:
    """Image-level accuracy (top token > 0), AUROC (top token's logit) and token accuracy of the warm-up head;
    with kinds, `kind_accuracy`: the share of defective images of known kind whose top token's kind is right;
    with cells, `position_accuracy`: the share of tokens that name their own grid cell (chance: about 11)."""
    import torch

    top, y_img, tok_right, tok_n, kind_right, kind_n, cell_right = [], [], 0, 0, 0, 0, 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pv, grid, tok, img, _, cells = batcher(
                images[i : i + batch_size], masks[i : i + batch_size], kinds[i : i + batch_size]
            )
            logits, per_image, kind_logits, cell_logits = _scores(model, head, n_kinds, pv, grid)
            tok_right += int(((logits > 0).float() == tok).sum())
            tok_n += len(tok)
            if cell_logits.shape[1]:
                cell_right += int((cell_logits.argmax(1) == cells).sum())
            top += [float(s.max()) for s in per_image]
            y_img += img.bool().tolist()
            if kind_logits.shape[1]:
                start = 0
                for s, k in zip(per_image, kinds[i : i + batch_size], strict=True):
                    if k >= 0:
                        kind_n += 1
                        kind_right += int(int(kind_logits[start + int(s.argmax())].argmax()) == k)
                    start += len(s)
    from iadr1.ranking import grouped_auroc_aupr

    y, s = np.array(y_img, bool), np.array(top)
    auroc = float(grouped_auroc_aupr(np.zeros(len(y), np.int64), 1, y, s)[0][0])  # NaN when a class is missing
    return {
        "accuracy": round(100 * float(((s > 0) == y).mean()), 2),
        "auroc": None if np.isnan(auroc) else round(100 * auroc, 2),
        "token_accuracy": round(100 * tok_right / max(tok_n, 1), 2),
        "kind_accuracy": round(100 * kind_right / kind_n, 2) if kind_n else None,
        "position_accuracy": round(100 * cell_right / max(tok_n, 1), 2) if head.out_features > 1 + n_kinds else None,
        "images": len(images),
    }


def warm_up_vision(
    model_dir: str | os.PathLike,
    train: Sequence[MaskedImage],
    out_dir: str | os.PathLike,
    cfg: VisionWarmupConfig | None = None,
    held_out: Sequence[MaskedImage] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the vision tower and merger of the Qwen-family checkpoint `model_dir` on `train` (module
    docstring), save the checkpoint with the new vision weights into `out_dir`, and return the history (also
    written to `out_dir/vision_warmup.json`). `held_out` images are scored after every epoch (reported only:
    nothing is chosen on them). `on_epoch(epoch, stats)` is called after each epoch (progress display)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from iadr1.data.io import atomic_write_json
    from iadr1.models.loading import image_factor, load_processor
    from iadr1.models.registry import family_of

    cfg = cfg or VisionWarmupConfig()
    family = family_of(model_dir)
    if not family.dynamic_resolution:  # per-token labels need the Qwen patch grid
        raise ConfigError(f"{model_dir}: the vision warm-up supports the Qwen families, not {family.name}")
    if not train:
        raise DataError("vision warm-up: no training images")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    processor = load_processor(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    visual = model.model.visual
    for p in model.parameters():
        p.requires_grad_(False)
    for p in visual.parameters():
        p.requires_grad_(True)
    hidden = model.config.text_config.hidden_size
    # The kinds are the training images' defect names; a held-out kind not among them is scored as unknown.
    kind_names = sorted({it.kind for it in train if it.anomalous and it.kind}) if cfg.kind_loss else []
    index = {k: i for i, k in enumerate(kind_names)}

    def kinds_of(items: Sequence[MaskedImage]) -> list[int]:
        return [index.get(it.kind, -1) if it.anomalous and it.kind else -1 for it in items]

    n_kinds = len(kind_names)
    head = torch.nn.Linear(hidden, 1 + n_kinds + (9 if cfg.position_loss else 0))
    batcher = _Batcher(processor, cfg.min_fraction)
    factor = image_factor(family, processor)
    images, masks = _load(train, cfg.max_pixels, factor)
    kinds = kinds_of(train)
    held = (*_load(held_out, cfg.max_pixels, factor), kinds_of(held_out)) if held_out else None

    params = [*visual.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = -(-len(images) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    pos_weight = torch.tensor(cfg.pos_weight)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if held is not None:  # the random tower, for comparison
        visual.eval()
        history.append(
            {"epoch": 0, "loss": None, "seconds": 0.0, "held_out": evaluate_tower(model, head, n_kinds, batcher, *held)}
        )
    for epoch in range(1, cfg.epochs + 1):
        visual.train()
        losses = []
        for idx in np.array_split(rng.permutation(len(images)), steps_per_epoch):
            ks = rng.integers(0, 8, len(idx)) if cfg.augment else np.zeros(len(idx), int)
            pv, grid, tok, img, tok_kind, cells = batcher(
                [_dihedral(images[i], k) for i, k in zip(idx, ks, strict=True)],
                [_dihedral(masks[i], k) for i, k in zip(idx, ks, strict=True)],
                [kinds[i] for i in idx],
            )
            logits, per_image, kind_logits, cell_logits = _scores(model, head, n_kinds, pv, grid)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, tok, pos_weight=pos_weight)
            if cfg.image_loss:
                top = torch.stack([s.max() for s in per_image])
                loss = loss + cfg.image_loss * torch.nn.functional.binary_cross_entropy_with_logits(top, img)
            if kind_names and bool((tok_kind >= 0).any()):
                loss = loss + cfg.kind_loss * torch.nn.functional.cross_entropy(kind_logits, tok_kind, ignore_index=-1)
            if cfg.position_loss:
                loss = loss + cfg.position_loss * torch.nn.functional.cross_entropy(cell_logits, cells)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        visual.eval()
        stats: dict[str, Any] = {
            "epoch": epoch,
            "loss": round(float(np.mean(losses)), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if held is not None:
            stats["held_out"] = evaluate_tower(model, head, n_kinds, batcher, *held)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch, stats)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out)
    # Everything else (processor, tokenizer, chat template, generation config) is the source's, byte for byte:
    # re-saving a loaded processor need not give the same bytes.
    for src in Path(model_dir).iterdir():
        if src.is_file() and src.suffix != ".safetensors" and src.name not in ("config.json", _INDEX):
            shutil.copy2(src, out / src.name)
    result = {
        "model": str(out),
        "source": str(model_dir),
        "config": json.loads(cfg.model_dump_json()),
        "train_images": len(images),
        "kinds": kind_names,
        "history": history,
        "final": history[-1].get("held_out"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / WARMUP_REPORT, result, indent=1)
    return result
