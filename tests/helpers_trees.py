"""Writers of small fake dataset trees (MVTec, VisA, KolektorSDD, DAGM, the released folder layout) for tests.

Images are tiny synthetic PNG/JPG/BMP files made with PIL; an image's gray level can be chosen so that tests can
predict which references are the most similar, or (`textured=True`) each image is a distinct random texture, so that
content checks (the build report's overlap) can tell every image from every other.
"""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(value: int | np.ndarray = 128, size: int = 8, fmt: str = "PNG") -> bytes:
    """Encode a `size`x`size` gray image of one `value` (or the given uint8 array) as `fmt`."""
    arr = np.full((size, size), value, np.uint8) if np.isscalar(value) else np.asarray(value, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, value: int | np.ndarray = 128, size: int = 8) -> Path:
    """Write an image whose format follows the suffix (.png, .jpg, .bmp)."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(path.suffix.lower(), "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(value, size, fmt))
    return path


def texture(key: str, size: int = 32) -> np.ndarray:
    """A random gray texture, the same for the same `key`, different (by content) for different keys."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    coarse = rng.integers(0, 256, (size // 4, size // 4)).astype(np.uint8)
    return np.kron(coarse, np.ones((4, 4), np.uint8))  # 4x4 blocks: structure a 9x8 thumbnail still sees


def make_mvtec(
    root: Path,
    classes: dict[str, dict[str, dict[str, int]]] | None = None,
    masks: bool = True,
    template: dict[str, int] | None = None,
    textured: bool = False,
) -> Path:
    """`root/<cls>/{train,test}/<specie>/NNN.png`, masks `ground_truth/<specie>/NNN_mask.png` for defects.

    `classes` maps class -> split -> specie -> count; `template` maps class -> number of `template/` images;
    `textured`: every image a distinct 32x32 texture instead of a flat gray level.
    """
    classes = classes or {
        "bottle": {"train": {"good": 3}, "test": {"good": 2, "broken": 2}},
        "screw": {"train": {"good": 2}, "test": {"good": 1, "scratch": 1, "hole": 1}},
    }
    for cls, splits in classes.items():
        for split, species in splits.items():
            for specie, n in species.items():
                for i in range(n):
                    rel = f"{cls}/{split}/{specie}/{i:03d}.png"
                    write_image(root / rel, texture(rel) if textured else 20 * i + 10)
                    if masks and split == "test" and specie != "good":
                        write_image(root / cls / "ground_truth" / specie / f"{i:03d}_mask.png", 255)
    for cls, n in (template or {}).items():
        for i in range(n):
            write_image(root / cls / "template" / f"{i:03d}.png", 200 + i)
    return root


def make_visa(root: Path) -> Path:
    """Two VisA classes and `split_csv/1cls.csv` (train normals, test normals and anomalies with masks)."""
    rows = ["object,split,label,image,mask"]
    for cls in ("candle", "pcb1"):
        for i in range(3):
            img = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / img, 50 + i, size=16)
            rows.append(f"{cls},{'train' if i < 2 else 'test'},normal,{img},")
        for i in range(2):
            img, mask = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG", f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / img, 200, size=16)
            write_image(root / mask, 255)
            rows.append(f"{cls},test,anomaly,{img},{mask}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_sdd(root: Path) -> Path:
    """KolektorSDD: `kos01/Part{0,1,2}.jpg` + `_label.bmp`; Part1 of each folder has a defect (non-zero label)."""
    for kos in ("kos01", "kos02"):
        for k in range(3):
            write_image(root / kos / f"Part{k}.jpg", 100 + k, size=16)
            label = np.zeros((16, 16), np.uint8)
            if k == 1:
                label[4:6, 4:6] = 255
            write_image(root / kos / f"Part{k}_label.bmp", label, size=16)
    return root


def make_dagm(root: Path) -> Path:
    """DAGM 2007: `Class1/{Train,Test}/NNNN.PNG`, masks `Label/NNNN_label.PNG` for the defective ones."""
    for split, (n, defective) in {"Train": (4, {1}), "Test": (3, {0})}.items():
        for i in range(n):
            write_image(root / "Class1" / split / f"{i:04d}.PNG", 60 + i)
            if i in defective:
                write_image(root / "Class1" / split / "Label" / f"{i:04d}_label.PNG", 255)
        (root / "Class1" / split / "Label").mkdir(parents=True, exist_ok=True)
        (root / "Class1" / split / "Label" / "Labels.txt").write_text("ignored\n")
    return root


def make_folder(root: Path, dataset: str = "MPDD", with_test_level: bool = True, template: int = 0) -> Path:
    """The released benchmark layout `root/<dataset>/<cls>/[test/]<specie>/NNN.png` (+ `train/good`, `template/`)."""
    for cls in ("bracket_black", "tubes"):
        base = root / dataset / cls
        test = base / "test" if with_test_level else base
        for i in range(3):
            write_image(test / "good" / f"{i:03d}.png", 30 + i)
        for i in range(2):
            write_image(test / "hole" / f"{i:03d}.png", 220)
        for i in range(5):
            write_image(base / "train" / "good" / f"{i:03d}.png", 40 * i)
        for i in range(template):
            write_image(base / "template" / f"{i:03d}.png", 100 + i)
    return root


def write_annotations(meta: dict, path: Path) -> Path:
    """An annotations JSONL for every anomalous image of a meta dict (reasoning, location, type)."""
    rows = [
        {"image": e.img_path, "reasoning": f"A dark mark on the {e.cls_name}.", "location": "center", "type": "Hole"}
        for entries in meta.values()
        for e in entries
        if e.anomaly
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- trees with masks drawn at known places (iadr1 annotate) ---------------------------------------------------------
def disc_mask(h: int, w: int, cell: int, radius: float = 0.06, value: int = 255) -> np.ndarray:
    """A uint8 mask with one disc (radius a fraction of the shorter side) at the centre of 3x3 grid `cell` (0..8)."""
    row, col = divmod(cell, 3)
    cy, cx = (row + 0.5) * h / 3, (col + 0.5) * w / 3
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), np.uint8)
    m[(yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= (radius * min(h, w)) ** 2] = value
    return m


def make_masked_mvtec(
    root: Path, classes: dict[str, dict[str, list[int]]], size: int = 48, normal: int = 2, mask_suffix: str = "_mask"
) -> Path:
    """An MVTec-AD / MPDD tree whose defect masks hold one disc in a known cell: `classes` maps class -> specie ->
    the grid cell (0..8) of each defective test image; `normal` good images in train/ and in test/ per class."""
    for cls, species in classes.items():
        for i in range(normal):
            write_image(root / cls / "train" / "good" / f"{i:03d}.png", texture(f"{cls}/train/{i}", size))
            write_image(root / cls / "test" / "good" / f"{i:03d}.png", texture(f"{cls}/test/{i}", size))
        for specie, cells in species.items():
            for i, cell in enumerate(cells):
                write_image(root / cls / "test" / specie / f"{i:03d}.png", texture(f"{cls}/{specie}/{i}", size))
                mask = disc_mask(size, size, cell, radius=0.1)
                write_image(root / cls / "ground_truth" / specie / f"{i:03d}{mask_suffix}.png", mask)
    return root


def make_masked_sdd(root: Path, cells: dict[str, int | None], size: int = 40) -> Path:
    """KolektorSDD: `kos01/PartK.jpg` + `PartK_label.bmp`, one per entry of `cells` (`PartK` -> grid cell of its
    defect disc, None for a defect-free part)."""
    for name, cell in cells.items():
        write_image(root / "kos01" / f"{name}.jpg", texture(name, size))
        label = disc_mask(size, size, cell, radius=0.12) if cell is not None else np.zeros((size, size), np.uint8)
        write_image(root / "kos01" / f"{name}_label.bmp", label)
    return root
