"""Per-image annotations for building PA-SFT / SC-GRPO data: reasoning text, defect location and defect type.

An annotations file is JSON Lines (one object per line), a JSON list of objects, or a JSON object keyed by
image path (the key fills `image` when the value has none). Each object:

    {"image": "SYNTH/brick/train/scratch/003.png",        # the meta.json `img_path` (key `img_path` too)
     "reasoning": "A thin dark line crosses the bricks ...",  # required, the text inside <think>
     "location": "top left",                                  # anomalous images: required; normal: ignored
     "type": "Scratch"}                                       # anomalous images: required; normal: ignored

Extra fields are kept and ignored. Text fields are stripped and their whitespace runs collapsed to one space
(a newline inside a tag breaks the original's reward regexes), and may not contain `<` `>` (they would corrupt
the tag grammar). A record that fails these checks is a `Problem`, not an exception: `build-data` skips and
reports it (or fails with `--strict`); so is a JSON Lines record that repeats a key. A file that is not JSON at all,
or a JSON file with a key repeated in one object (JSON would keep the last one silently), is a `DataError`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iadr1.data.io import DuplicateKeyError, loads_json, read_json, safe_relpath
from iadr1.data.schemas import format_validation_error
from iadr1.errors import DataError

_SPACES = re.compile(r"\s+")


def _clean_text(v: Any) -> Any:
    if not isinstance(v, str):
        return v  # let pydantic report the wrong type
    text = _SPACES.sub(" ", v).strip()
    if "<" in text or ">" in text:
        raise ValueError("must not contain '<' or '>' (it would break the <think>/<location>/<type> tags)")
    return text


class Annotation(BaseModel):
    """One image's annotation. `location` and `type` are required only for anomalous images (checked by the
    builder)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, str_strip_whitespace=True)

    image: str = Field(min_length=1)
    reasoning: str = Field(min_length=1)
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

    @field_validator("reasoning", "location", "type", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _clean_text(v)

    @field_validator("location", "type", mode="after")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


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


def _raw_records(path: Path) -> list[tuple[str, Any]]:
    """(record key for messages, raw object) pairs; JSON Lines lines that are not JSON become `_BadLine`s."""
    if path.suffix == ".jsonl":
        out: list[tuple[str, Any]] = []
        try:
            f = open(path, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        with f:
            try:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        out.append((f"line {lineno}", loads_json(line)))
                    except DuplicateKeyError as e:
                        out.append((f"line {lineno}", _BadLine(str(e))))
                    except json.JSONDecodeError as e:
                        out.append((f"line {lineno}", _BadLine(f"malformed JSON: {e.msg}")))
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        return out
    obj = read_json(path)
    if isinstance(obj, list):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return [
            (
                k,
                ({"image": k, **v} if isinstance(v, dict) and "image" not in v and "img_path" not in v else v),
            )
            for k, v in obj.items()
        ]
    raise DataError(
        f"{path}: annotations must be a JSON list, a JSON object keyed by image, or JSON Lines; "
        f"got {type(obj).__name__}"
    )


@dataclass(frozen=True)
class _BadLine:
    why: str


def load_annotations(path: str | os.PathLike) -> tuple[dict[str, Annotation], list[Problem]]:
    """Read an annotations file into `{image path: Annotation}` plus the problems of the records skipped.

    A file that is missing or not JSON raises `DataError`; a bad record (or a bad JSON Lines line) becomes a
    `malformed_annotation` problem naming the file, record and field; a repeated image a
    `duplicate_annotation`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out: dict[str, Annotation] = {}
    problems: list[Problem] = []
    for key, raw in _raw_records(path):
        if isinstance(raw, _BadLine):
            problems.append(Problem("malformed_annotation", f"{path.name}:{key}", f"{path}: record {key!r}: {raw.why}"))
            continue
        if isinstance(raw, dict) and "image" not in raw and "img_path" in raw:
            raw = {**raw, "image": raw["img_path"]}
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
