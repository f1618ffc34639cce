"""Per-image annotations: reasoning text, defect location and defect type; the one reader of annotations files.

An annotations file is JSON Lines (one object per line), a JSON list of objects, or a JSON object keyed by
image path (the key fills `image` when the value has none). Each object:

    {"image": "SYNTH/brick/train/scratch/003.png",        # the meta.json `img_path` (key `img_path` too)
     "reasoning": "A thin dark line crosses the bricks ...",  # required, the text inside <think>
     "location": "top left",                                  # anomalous images: required; normal: ignored
     "type": "Scratch"}                                       # anomalous images: required; normal: ignored

Extra fields are kept and ignored. Text fields are stripped and their whitespace runs collapsed to one space
(a newline inside a tag breaks the original's reward regexes), and may not contain `<` `>` (they would corrupt
the tag grammar). Two readers share these rules:
- `load_annotations` (build-data): a record that fails them is a `Problem`, not an exception: `build-data` skips and
  reports it (or fails with `--strict`); so is a JSON Lines record that repeats a key;
- `load_defects` (eval's ground truth): only `image`, `location` and `type` are read (no `reasoning` needed), and a
  bad or repeated record is a `DataError`: a score must not rest on a guess.
A file that is not JSON at all, or a JSON file with a key repeated in one object (JSON would keep the last one
silently), is a `DataError` for both. Images are named by meta path or by test key (docs/convert.md, "Keys"); eval
maps them onto test keys with `iadr1.data.keys.KeyIndex`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iadr1.data.io import BadLine, iter_records, safe_relpath
from iadr1.data.schemas import format_validation_error
from iadr1.errors import DataError

_SPACES = re.compile(r"\s+")


def clean_text(v: Any) -> Any:
    """An annotation's text as it is stored: whitespace runs collapsed, stripped; `<` or `>` is a ValueError."""
    if not isinstance(v, str):
        return v  # let pydantic report the wrong type
    text = _SPACES.sub(" ", v).strip()
    if "<" in text or ">" in text:
        raise ValueError("must not contain '<' or '>' (it would break the <think>/<location>/<type> tags)")
    return text


class Defect(BaseModel):
    """What an annotation says of a defect: which image, where the defect is, what kind it is (both optional)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, str_strip_whitespace=True)

    image: str = Field(min_length=1)
    location: str | None = None
    type: str | None = None

    @field_validator("image", mode="before")
    @classmethod
    def _image_path(cls, v: Any) -> Any:
        if not isinstance(v, str) or not v:
            return v
        try:
            return safe_relpath(v, what="image")
        except DataError as e:  # pydantic reports ValueError with the field name
            raise ValueError(str(e)) from None

    @field_validator("location", "type", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return clean_text(v)

    @field_validator("location", "type", mode="after")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


class Annotation(Defect):
    """One image's annotation for training: a `Defect` with its reasoning. `location` and `type` are required only
    for anomalous images (checked by the builder)."""

    reasoning: str = Field(min_length=1)

    @field_validator("reasoning", mode="before")
    @classmethod
    def _reasoning(cls, v: Any) -> Any:
        return clean_text(v)


@dataclass(frozen=True)
class Problem:
    """Something wrong with one input item: `kind` is a short fixed word (see `PROBLEM_KINDS`), `detail` one
    line."""

    kind: str
    item: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "item": self.item, "detail": self.detail}


# Every kind of problem the builder reports, with what it means (used by the report and the docs).
PROBLEM_KINDS: dict[str, str] = {
    "missing_image": "image file does not exist",
    "unreadable_image": "image file cannot be read (permissions, I/O error)",
    "empty_image": "image file has 0 bytes",
    "not_an_image": "file is not in an image format Pillow knows",
    "corrupt_image": "image fails to decode completely (truncated, bad data)",
    "malformed_annotation": "annotation record is invalid (wrong field type, missing field, bad characters)",
    "duplicate_annotation": "a second annotation for the same image (the first one is kept)",
    "missing_annotation": "anomalous image without a usable annotation (needs reasoning, location and type)",
    "no_reference": "no other readable normal image of the class to serve as the one-shot reference",
}


def image_problem_kind(detail: str) -> str:
    """Map `io.check_image`'s description to a problem kind."""
    for prefix, kind in (
        ("missing", "missing_image"),
        ("unreadable", "unreadable_image"),
        ("empty", "empty_image"),
        ("not an image", "not_an_image"),
    ):
        if detail.startswith(prefix):
            return kind
    return "corrupt_image"


def _raw_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(record key for messages, raw object) pairs, `img_path` read as `image`; JSON Lines lines that are not JSON
    (or repeat a key) come as `BadLine`s."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    records = iter_records(
        path, key_field="image", aliases=("img_path",), bad_lines=True, skip_torn_tail=False, what="annotations"
    )
    for key, raw in records:
        if isinstance(raw, dict) and "image" not in raw and "img_path" in raw:
            raw = {**raw, "image": raw["img_path"]}
        yield str(key), raw


def load_annotations(path: str | os.PathLike) -> tuple[dict[str, Annotation], list[Problem]]:
    """Read an annotations file into `{image path: Annotation}` plus the problems of the records skipped.

    A file that is missing or not JSON raises `DataError`; a bad record (or a bad JSON Lines line) becomes a
    `malformed_annotation` problem naming the file, record and field; a repeated image a
    `duplicate_annotation`.
    """
    path = Path(path)
    out: dict[str, Annotation] = {}
    problems: list[Problem] = []
    for key, raw in _raw_records(path):
        if isinstance(raw, BadLine):
            problems.append(Problem("malformed_annotation", f"{path.name}:{key}", f"{path}: record {key!r}: {raw.why}"))
            continue
        try:
            ann = Annotation.model_validate(raw)
        except ValidationError as e:
            item = raw.get("image") if isinstance(raw, dict) and isinstance(raw.get("image"), str) else None
            problems.append(
                Problem(
                    "malformed_annotation",
                    item or f"{path.name}:{key}",
                    format_validation_error(path, key, e),
                )
            )
            continue
        if ann.image in out:
            problems.append(
                Problem(
                    "duplicate_annotation",
                    ann.image,
                    f"{path}: record {key!r}: second annotation for this image",
                )
            )
            continue
        out[ann.image] = ann
    return out, problems


def load_defects(path: str | os.PathLike) -> dict[str, tuple[str | None, str | None]]:
    """Read an annotations file into `{image: (location, type)}` (eval's ground truth; `reasoning` is not needed).
    A bad record, a bad JSON Lines line or a second annotation for an image is a one-line `DataError` naming the file
    and the record."""
    path = Path(path)
    out: dict[str, tuple[str | None, str | None]] = {}
    for key, raw in _raw_records(path):
        if isinstance(raw, BadLine):
            raise DataError(f"{path}: {key}: {raw.why}")
        try:
            d = Defect.model_validate(raw)
        except ValidationError as e:
            raise DataError(format_validation_error(path, key, e)) from None
        if d.image in out:  # which of the two is the truth is not ours to guess
            raise DataError(f"{path}: record {key!r}: a second annotation for image {d.image!r}")
        out[d.image] = (d.location, d.type)
    return out
