"""Importers of the standard anomaly-detection dataset layouts on disk, one function per layout.

Each importer walks a folder and returns a meta dict `{class: [MetaEntry, ...]}` (AnomalyCLIP style) whose
`img_path`/`mask_path` are POSIX paths relative to the folder it was given. Every entry carries one extra field,
`split`: `"train"` (normal references and training images), `"test"` (the images a test file is made of) or
`"template"` (a class's hand-picked normal references, the released benchmark's `<cls>/template/` folder).

Layouts (see docs/convert.md for the trees):
- `mvtec` (also MPDD, DTD-Synthetic, BTAD): `<cls>/train/good`, `<cls>/test/<specie>`, masks in
  `<cls>/ground_truth/<specie>/<name>_mask.png` (or `<name>.png`), optional `<cls>/template/`;
- `visa`: `split_csv/1cls.csv` with columns object, split, label, image, mask;
- `sdd` (KolektorSDD): `kosNN/PartK.jpg` with `PartK_label.bmp`, defective when the label has a non-zero pixel;
- `dagm` (DAGM 2007): `ClassN/{Train,Test}/NNNN.PNG` with masks `ClassN/{Train,Test}/Label/NNNN_label.PNG`;
- `folder`: the released benchmark layout `ROOT/NAME/<cls>/[test/]<specie>/<img>` (plus `<cls>/template/`,
  `<cls>/train/good/`), or with no class level `ROOT/NAME/test/<specie>/<img>`; paths start with `NAME/`.

Listing uses `os.scandir` and plain string joins (no `Path` per file) because a scan of 50,000 files must take
well under a second. The only images a scan opens are KolektorSDD's label images: every unreadable one is found, and
its image skipped into `bad_images` when the caller passes that dict (else they are one error naming them all).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

from iadr1.data.io import IMAGE_ERRORS, IMAGE_SUFFIXES, bad_images_message, image_problem, safe_relpath
from iadr1.data.keys import DEFECT_SPECIE, NORMAL_SPECIE
from iadr1.data.meta import SPLITS, Meta
from iadr1.data.schemas import MetaEntry
from iadr1.errors import DataError

# Folders inside a class folder that are not defect species in the folder layout without a `test/` level.
_RESERVED = {"train", "test", "template", "ground_truth"}


# ---------------------------------------------------------------------------------------------------------------------
# Listing helpers
# ---------------------------------------------------------------------------------------------------------------------
def _is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES


def _images(folder: str) -> list[str]:
    """Sorted names of the image files directly inside `folder` (hidden files skipped); [] if it is not a folder."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name[0] != "." and _is_image_name(e.name) and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def _subdirs(folder: str) -> list[str]:
    """Sorted names of the sub-folders of `folder` (hidden ones skipped); [] if it is not a folder."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name[0] != "." and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def _stem(name: str) -> str:
    dot = name.rfind(".")
    return name[:dot] if dot > 0 else name


def _mask_index(folder: str, suffixes: tuple[str, ...] = ("_mask", "_label")) -> dict[str, str]:
    """Map image stem -> mask file name for the masks in `folder` (`000_mask.png` and `000.png` both match `000`)."""
    index: dict[str, str] = {}
    for name in _images(folder):
        stem = _stem(name)
        for suf in suffixes:
            if stem.endswith(suf):
                index[stem[: -len(suf)]] = name  # the suffixed name wins over a bare one
                break
        else:
            index.setdefault(stem, name)
    return index


def _join(prefix: str, *parts: str) -> str:
    return "/".join((prefix, *parts)) if prefix else "/".join(parts)


def _entry(img: str, mask: str, cls: str, specie: str, anomaly: int, split: str) -> MetaEntry:
    return MetaEntry(img_path=img, mask_path=mask, cls_name=cls, specie_name=specie, anomaly=anomaly, split=split)


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: folder not found" if not root.exists() else f"{root}: is not a folder")


def _require_some(meta: Meta, layout: str, searched: Path, hint: str) -> Meta:
    if not any(meta.values()):
        raise DataError(f"no images found for layout {layout!r} in {searched} ({hint})")
    return meta


# ---------------------------------------------------------------------------------------------------------------------
# MVTec-style classes (mvtec, mpdd, dtd, and the class folders of the folder layout)
# ---------------------------------------------------------------------------------------------------------------------
def _scan_species(
    out: list[MetaEntry],
    base: str,
    rel: str,
    cls: str,
    split: str,
    species: list[str],
    gt_base: str,
    gt_rel: str,
) -> None:
    """Append the images of each `<base>/<specie>/` folder; defect masks come from `<gt_base>/<specie>/`.
    Normal images come first, as in the released test files."""
    for specie in sorted(species, key=lambda s: s.lower() != NORMAL_SPECIE):
        names = _images(os.path.join(base, specie))
        anomaly = 0 if specie.lower() == NORMAL_SPECIE else 1
        masks = _mask_index(os.path.join(gt_base, specie)) if anomaly and gt_base else {}
        for name in names:
            mask = masks.get(_stem(name))
            out.append(
                _entry(
                    _join(rel, specie, name),
                    _join(gt_rel, specie, mask) if mask else "",
                    cls,
                    specie,
                    anomaly,
                    split,
                )
            )


def _scan_class(cls_dir: str, rel: str, cls: str) -> list[MetaEntry]:
    """One class folder: `train/<specie>`, `test/<specie>` (or species directly when there is no `test/`),
    `template/` and `ground_truth/<specie>/` masks."""
    out: list[MetaEntry] = []
    gt = os.path.join(cls_dir, "ground_truth")
    gt_rel = _join(rel, "ground_truth")
    for name in _images(os.path.join(cls_dir, "template")):
        out.append(_entry(_join(rel, "template", name), "", cls, NORMAL_SPECIE, 0, "template"))
    train = os.path.join(cls_dir, "train")
    _scan_species(out, train, _join(rel, "train"), cls, "train", _subdirs(train), gt, gt_rel)
    test = os.path.join(cls_dir, "test")
    if os.path.isdir(test):
        _scan_species(out, test, _join(rel, "test"), cls, "test", _subdirs(test), gt, gt_rel)
    else:
        species = [d for d in _subdirs(cls_dir) if d not in _RESERVED]
        _scan_species(out, cls_dir, rel, cls, "test", species, gt, gt_rel)
    return out


def scan_mvtec(root: Path, dataset: str | None = None) -> Meta:
    """MVTec-AD, MPDD, DTD-Synthetic, BTAD: `ROOT/<cls>/{train,test}/<specie>/` with `ground_truth/` masks."""
    _require_dir(root)
    meta: Meta = {}
    for cls in _subdirs(str(root)):
        cls_dir = os.path.join(root, cls)
        if any(os.path.isdir(os.path.join(cls_dir, s)) for s in SPLITS):
            meta[cls] = _scan_class(cls_dir, cls, cls)
    return _require_some(meta, "mvtec", root, "expected <class>/train/good and <class>/test/<specie> folders")


# ---------------------------------------------------------------------------------------------------------------------
# The released benchmark's folder layout
# ---------------------------------------------------------------------------------------------------------------------
def scan_folder(root: Path, dataset: str | None = None) -> Meta:
    """`ROOT/NAME/<cls>/[test/]<specie>/<img>` (+ `template/`, `train/good/`), or `ROOT/NAME/test/<specie>/<img>`
    with no class level (the class is then NAME). Paths are relative to ROOT, so they start with `NAME/`."""
    if not dataset:
        raise DataError("the folder layout needs a dataset name: the folder under the root to scan (--dataset)")
    name = safe_relpath(dataset, root, "dataset name")
    if "/" in name:
        raise DataError(f"dataset name {dataset!r} must be a single folder name directly under {root}")
    _require_dir(root)
    ds = root / name
    _require_dir(ds)
    ds_s = str(ds)
    subdirs = _subdirs(ds_s)
    meta: Meta = {}
    # No class level: the dataset folder itself holds test/ (SDD), or holds species such as good/ directly.
    classless = "test" in subdirs or any(d.lower() == NORMAL_SPECIE and _images(os.path.join(ds_s, d)) for d in subdirs)
    if classless:
        meta[name] = _scan_class(ds_s, name, name)
    else:
        for cls in subdirs:
            if cls in _RESERVED:
                continue
            entries = _scan_class(os.path.join(ds_s, cls), _join(name, cls), cls)
            if entries:
                meta[cls] = entries
    return _require_some(meta, "folder", ds, "expected <class>/[test/]<specie>/<image> or test/<specie>/<image>")


# ---------------------------------------------------------------------------------------------------------------------
# VisA
# ---------------------------------------------------------------------------------------------------------------------
def scan_visa(root: Path, dataset: str | None = None) -> Meta:
    """VisA: rows of `split_csv/1cls.csv` (object, split, label, image, mask); label `normal` is good, else defect."""
    _require_dir(root)
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: file not found (the VisA layout is read from split_csv/1cls.csv)")
    meta: Meta = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"object", "split", "label", "image"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, 2):
            where = f"{csv_path}: line {line}"
            split = (row["split"] or "").strip().lower()
            if split not in ("train", "test"):
                raise DataError(f"{where}: split must be train or test, got {row['split']!r}")
            label = (row["label"] or "").strip().lower()
            anomaly = 0 if label in ("normal", NORMAL_SPECIE) else 1
            try:
                img = safe_relpath(row["image"].strip(), root, "image path")
                mask = (row.get("mask") or "").strip()
                mask = safe_relpath(mask, root, "mask path") if mask else ""
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
            if not os.path.isfile(os.path.join(root, img)):
                raise DataError(f"{where}: image not found: {root / img}")
            cls = row["object"].strip()
            meta.setdefault(cls, []).append(
                _entry(img, mask if anomaly else "", cls, NORMAL_SPECIE if not anomaly else label, anomaly, split)
            )
    return _require_some(meta, "visa", csv_path, "the CSV has no rows")


# ---------------------------------------------------------------------------------------------------------------------
# KolektorSDD
# ---------------------------------------------------------------------------------------------------------------------
def _label_has_defect(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.getbbox() is not None  # None when every pixel is zero
    except IMAGE_ERRORS as e:
        raise DataError(f"{path}: unreadable label image: {image_problem(e)}") from None


def scan_sdd(root: Path, dataset: str | None = None, bad_images: dict[str, str] | None = None) -> Meta:
    """KolektorSDD: `kosNN/PartK.jpg` + `kosNN/PartK_label.bmp`; every image is a test image of one class
    named after the dataset (the released SDD test set has no class level). An image whose label cannot be read
    is skipped into `bad_images` (`{img_path: "label file: problem"}`); without that dict, every such label is
    one `DataError`."""
    _require_dir(root)
    cls = dataset or root.name
    out: list[MetaEntry] = []
    bad: dict[str, str] = {}
    for folder in _subdirs(str(root)):
        names = _images(os.path.join(root, folder))
        stems = {_stem(n): n for n in names}
        for name in names:
            stem = _stem(name)
            if stem.endswith("_label"):
                continue
            label = stems.get(stem + "_label")
            if label is None:
                raise DataError(f"{root / folder / name}: no label image {stem}_label.bmp beside it")
            try:
                defect = _label_has_defect(os.path.join(root, folder, label))
            except DataError as e:
                bad[f"{folder}/{name}"] = str(e)
                continue
            out.append(
                _entry(
                    f"{folder}/{name}",
                    f"{folder}/{label}" if defect else "",
                    cls,
                    DEFECT_SPECIE if defect else NORMAL_SPECIE,
                    int(defect),
                    "test",
                )
            )
    if bad and bad_images is None:
        raise DataError(bad_images_message(list(bad.values())))
    if bad_images is not None:
        bad_images.update(bad)
    return _require_some({cls: out}, "sdd", root, "expected kosNN/PartK.jpg with PartK_label.bmp")


# ---------------------------------------------------------------------------------------------------------------------
# DAGM 2007
# ---------------------------------------------------------------------------------------------------------------------
def scan_dagm(root: Path, dataset: str | None = None) -> Meta:
    """DAGM 2007: `ClassN/{Train,Test}/NNNN.PNG`; an image with a mask in `Label/` (`NNNN_label.PNG`) is defective.
    `Train` images get split train (normal ones are the class's references), `Test` images split test."""
    _require_dir(root)
    meta: Meta = {}
    for cls in _subdirs(str(root)):
        cls_dir = os.path.join(root, cls)
        entries: list[MetaEntry] = []
        for sub in _subdirs(cls_dir):
            split = sub.lower()
            if split not in ("train", "test"):
                continue
            folder = os.path.join(cls_dir, sub)
            labels = _mask_index(os.path.join(folder, "Label"))
            for name in _images(folder):
                mask = labels.get(_stem(name))
                entries.append(
                    _entry(
                        f"{cls}/{sub}/{name}",
                        f"{cls}/{sub}/Label/{mask}" if mask else "",
                        cls,
                        DEFECT_SPECIE if mask else NORMAL_SPECIE,
                        1 if mask else 0,
                        split,
                    )
                )
        if entries:
            meta[cls] = entries
    return _require_some(meta, "dagm", root, "expected ClassN/Train and ClassN/Test folders of images")


LAYOUTS: dict[str, Callable[[Path, str | None], Meta]] = {
    "mvtec": scan_mvtec,
    "mpdd": scan_mvtec,
    "dtd": scan_mvtec,
    "visa": scan_visa,
    "sdd": scan_sdd,
    "dagm": scan_dagm,
    "folder": scan_folder,
}
