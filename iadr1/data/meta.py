"""meta.json, the one reader and writer, and the one split rule (docs/convert.md, "meta.json").

A meta.json lists a dataset's images, AnomalyCLIP style: `{class: [MetaEntry]}`, paths relative to the data root.
iadr1 adds a `split` field per entry (`train`, `test`, `template`). A meta.json without it still works: AnomalyCLIP's
`{"train": {...}, "test": {...}}` form gives each entry the split it sits under, and otherwise `split_of` guesses
it from the path. Every stage that reads a meta (convert, build-data, the vision warm-up) reads it with `read_meta`
and asks `split_of` for an entry's split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from iadr1.data.io import atomic_write_text, read_json, safe_relpath, without_gc
from iadr1.data.schemas import MetaEntry, validate_record
from iadr1.errors import DataError

Meta = dict[str, list[MetaEntry]]
SPLITS = ("train", "test", "template")

# One C-encoder call per record: `json.dumps(indent=4)` runs Python's pure-Python encoder, 10x slower at 50k records.
ENCODER = json.JSONEncoder(ensure_ascii=False)


def split_of(entry: MetaEntry) -> str:
    """The entry's split: its `split` field, else guessed from the path (`template` or `train` folder, else test)."""
    extra = entry.__pydantic_extra__  # direct: pydantic's attribute fallback costs more than the rest of this
    split = extra.get("split") if extra else None
    if split:
        return str(split).lower()
    parts = [p.lower() for p in entry.img_path.split("/")]
    if "template" in parts:
        return "template"
    return "train" if "train" in parts else "test"


def check_meta_path(rel: str, what: str) -> str:
    """`safe_relpath` with a fast path: a plain `a/b/c.png` needs only string tests (50k paths per run)."""
    if (
        rel
        and rel[0] != "/"
        and rel[1:2] != ":"
        and not any(bad in rel for bad in ("..", "\\", "//", "/./"))
        and not rel.startswith("./")
    ):
        return rel
    if not rel:
        raise DataError(f"{what} is empty")
    return safe_relpath(rel, None, what)


@without_gc
def read_meta(path: str | os.PathLike) -> Meta:
    """Load a meta.json `{class: [entries]}`, or AnomalyCLIP's `{"train": {...}, "test": {...}}` form.

    In the split form each entry gets `split` from the top-level key it sits under (unless it has one). Paths are
    checked: an absolute path or one that climbs out with `..` is a `DataError` naming the file and record.
    """
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: meta.json is an object {{class: [entries]}}, got {type(obj).__name__}")
    groups: list[tuple[str | None, dict]] = [(None, obj)]
    if obj and set(obj) <= {"train", "test"} and all(isinstance(v, dict) for v in obj.values()):
        groups = list(obj.items())
    meta: Meta = {}
    for split, classes in groups:
        for cls, items in classes.items():
            if not isinstance(items, list):
                raise DataError(f"{path}: class {cls!r}: expected a list of entries, got {type(items).__name__}")
            out = meta.setdefault(cls, [])
            for i, item in enumerate(items):
                where = f"{split}/{cls}[{i}]" if split else f"{cls}[{i}]"
                if split and isinstance(item, dict) and "split" not in item:
                    item = {**item, "split": split}
                entry = validate_record(MetaEntry, item, path, where)
                try:
                    entry.img_path = check_meta_path(entry.img_path, "img_path")
                    if entry.mask_path:
                        entry.mask_path = check_meta_path(entry.mask_path, "mask_path")
                except DataError as e:
                    raise DataError(f"{path}: record {where!r}: {e}") from None
                out.append(entry)
    return meta


@without_gc
def write_meta(meta: Meta, path: str | os.PathLike) -> Path:
    """Write a meta dict as meta.json, atomically, one entry per line (the `split` field of each entry is kept)."""
    parts = []
    for cls, entries in meta.items():
        rows = ",\n        ".join(ENCODER.encode(_meta_dict(e)) for e in entries)
        parts.append(
            f"    {ENCODER.encode(cls)}: [\n        {rows}\n    ]" if entries else f"    {ENCODER.encode(cls)}: []"
        )
    return atomic_write_text(path, "{\n" + ",\n".join(parts) + "\n}\n" if parts else "{}\n")


def _meta_dict(e: MetaEntry) -> dict:
    # Fields then extras, as `to_json` gives, without pydantic's serializer (3x faster, same JSON).
    extra = e.__pydantic_extra__
    return {**e.__dict__, **extra} if extra else dict(e.__dict__)
