"""The image-key convention from `iadr1 convert` on: the one owner of what a key says and how its two forms map.

An image has two names (docs/convert.md, "Keys, the dataset prefix and the image root"):
- its **meta path**, the meta.json `img_path`, relative to the folder `convert --root` was given: for the `folder`
  layout that folder holds the dataset folder, so meta paths start with the dataset name (`MPDD/tubes/test/hole/0.png`);
  for the other layouts it is the dataset folder itself, so meta paths start at the class (`tubes/test/hole/0.png`);
- its **test key**, the key of a benchmark test file (and the `image` of a prediction): always the dataset name, then
  the path inside the dataset folder (`MPDD/tubes/test/hole/0.png`), as in the released test files.

Annotations and training records use meta paths; test files and predictions use test keys. A command that reads ground
truth in the other form maps it with `KeyIndex`, which finds a path of either form among keys of either form. The
dataset, class and defect kind (specie) of a test key are read by `dataset_and_class` and `specie_of`, and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from iadr1.errors import ConfigError

if TYPE_CHECKING:
    from iadr1.data.schemas import MetaEntry

NORMAL_SPECIE = "good"  # the specie of every normal image
DEFECT_SPECIE = "defect"  # the specie of a defect whose kind no folder names (SDD, DAGM; keys without `test/`)
NO_GROUP = "default"  # dataset and class of a key with no folder at all
# A second component that is a split folder means the dataset has no class level (`SDD/test/good/0.png`).
_SPLIT_FOLDERS = frozenset({"test", "train"})


def dataset_and_class(key: str) -> tuple[str, str]:
    """Dataset and class of a test key: the first component, and the second unless it is `test`/`train` (a dataset
    with no class level, as `SDD/test/good/0.png`: the class is the dataset). A key with no folder: `default`."""
    parts = key.split("/")
    if len(parts) == 1:
        return NO_GROUP, NO_GROUP
    cls = parts[1] if len(parts) >= 3 and parts[1] not in _SPLIT_FOLDERS else parts[0]
    return parts[0], cls


def folder_specie(key: str) -> str | None:
    """The folder under the first `test/` (any case) of a key (`MPDD/bracket/test/scratch/0.png` -> `scratch`), None
    when no folder lies between `test/` and the file name (DAGM's `Class1/Test/0000.PNG`) or there is no `test/`."""
    parts = key.split("/")
    for i in range(1, len(parts) - 2):
        if parts[i].lower() == "test":
            return parts[i + 1]
    return None


def specie_of(key: str, anomalous: bool) -> str:
    """The defect kind of a test image: `good` for a normal image; for a defective one the folder under `test/`
    (`folder_specie`), else `defect`."""
    if not anomalous:
        return NORMAL_SPECIE
    return folder_specie(key) or DEFECT_SPECIE


def without_dataset(key: str) -> str:
    """A test key without its dataset name: the path inside the dataset folder (a meta path of a non-folder layout)."""
    return key.partition("/")[2]


class KeyIndex:
    """Finds an image among `keys` (meta paths or test keys) from a path of either form.

    `find(path)`: `path` itself when it is a key; else `path` without its dataset name (a test key looked up among
    meta paths that start at the class); else the one key that is `path` with a dataset name before it (a meta path
    looked up among test keys). None when there is no such key, or several (`a/0.png` with keys `D1/a/0.png` and
    `D2/a/0.png`). `keys` is kept as given (a dict works: no copy of a million keys).
    """

    def __init__(self, keys: Collection[str]) -> None:
        self._keys = keys
        self._by_rest: dict[str, str | None] | None = None  # built on the first path that needs it

    def find(self, path: str) -> str | None:
        keys = self._keys
        if path in keys:
            return path
        rest = without_dataset(path)
        if rest in keys:
            return rest
        if self._by_rest is None:
            by_rest: dict[str, str | None] = {}
            for k in keys:
                r = without_dataset(k)
                by_rest[r] = None if r in by_rest else k  # None: two datasets hold this path, say neither
            self._by_rest = by_rest
        return self._by_rest.get(path)


def key_prefix(meta: dict[str, list[MetaEntry]], root: str | Path, dataset: str | None) -> str:
    """The text put before every meta path to make a test key ("" or `NAME/`).

    No `dataset`: none (the paths already start with the dataset name). With `dataset`: none if every path already
    starts with `dataset/` and `root` is not itself named `dataset` (a folder-layout meta), else `dataset/`.
    """
    if not dataset:
        return ""
    name = dataset.strip("/")
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"dataset name {dataset!r} must be one folder name (no '/')")
    head = name + "/"
    if Path(root).name != name and all(e.img_path.startswith(head) for es in meta.values() for e in es):
        return ""
    return head


@dataclass(frozen=True)
class KeyScheme:
    """How the meta paths of one dataset become test keys: `prefix + img_path`; `name` is the dataset name every key
    starts with; `image_root` the folder the keys resolve against (it must hold a folder `name`)."""

    prefix: str
    name: str
    image_root: Path
    dataset: str | None  # the `dataset` argument of `key_prefix` (and `build_test_records`) that gives `prefix`

    @property
    def resolvable(self) -> bool:
        """Whether `image_root` holds the dataset folder, so that inference finds the images by their keys."""
        return (self.image_root / self.name).is_dir()


def key_scheme(
    meta: dict[str, list[MetaEntry]],
    root: str | Path,
    dataset: str | None = None,
    layout: str | None = None,
    source: str | os.PathLike | None = None,
) -> KeyScheme:
    """The test keys of a meta scanned from (`layout`) or read for (`layout` None) the data root `root`.

    `folder` layout: the meta paths are the keys (they start with the dataset name); image root `root`. Other
    layouts: `dataset` (default: the name of `root`, the dataset folder) + `/` + meta path; image root the parent of
    `root`. A meta read from a file: as `key_prefix(meta, root, dataset)`; without `dataset` its paths must all start
    with one name, else a `ConfigError` (naming `source`, the meta.json) asks for `--dataset`.
    """
    root = Path(root)
    if layout is not None:
        dataset = None if layout == "folder" else (dataset or root.resolve().name)
    prefix = key_prefix(meta, root, dataset)
    if prefix:
        return KeyScheme(prefix, prefix.rstrip("/"), root.resolve().parent, dataset)
    heads = {e.img_path.split("/", 1)[0] for es in meta.values() for e in es}
    if len(heads) != 1:
        shown = ", ".join(sorted(heads)[:3]) + (", ..." if len(heads) > 3 else "")
        where = f"{source}: the" if source is not None else "the meta"
        raise ConfigError(
            f"{where} paths start with several names ({shown}), not one dataset name; pass --dataset NAME "
            "to prefix the keys (ROOT is then the dataset folder itself)"
        )
    return KeyScheme("", next(iter(heads)), root, dataset)
