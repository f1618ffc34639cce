"""File input/output: atomic writes, resumable JSONL appends, JSON reading with one-line errors, path safety,
image checks."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from iadr1.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`.

    A crash mid-write leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 4) -> Path:
    """Write `obj` as JSON atomically (UTF-8, non-ASCII kept as is)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    """Write rows as JSON Lines atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class JsonlAppender:
    """Append one JSON object per line and flush it to disk at once, so a killed run loses at most the line in flight.

    Use as a context manager. A torn last line left by a previous crash is cut off on open, so the file stays valid.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._f = None

    def __enter__(self) -> JsonlAppender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, row: Any) -> None:
        assert self._f is not None, "use JsonlAppender as a context manager"
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _truncate_torn_tail(path: Path) -> None:
    """Drop a last line that has no newline (a write cut short by SIGKILL)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        # Scan back in chunks for the last newline; keep everything up to it.
        end = f.tell()
        pos = end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                f.truncate(pos + nl + 1)
                return
        f.truncate(0)


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------
def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file or a syntax error is a one-line `DataError` naming the file and position."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike, skip_torn_tail: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object) for each non-blank line of a JSON Lines file.

    A malformed line is a `DataError` naming file and line, except a last line with no newline when
    `skip_torn_tail` is set (what a killed writer leaves behind), which is ignored.
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                if skip_torn_tail and not line.endswith("\n"):
                    return
                raise DataError(f"{path}: malformed JSON on line {lineno}: {e.msg}") from None


def read_json_or_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read a list of records from `.jsonl` (one per line) or `.json` (a list, or a dict whose values are records)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [obj for _, obj in iter_jsonl(path)]
    obj = read_json(path)
    if isinstance(obj, dict):
        return list(obj.values())
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------------
def safe_relpath(rel: str, root: str | os.PathLike | None = None, what: str = "path") -> str:
    """Check that `rel` is a relative path that stays inside `root`; return it in POSIX form.

    Absolute paths and `..` components that escape the root are a `DataError`.
    """
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise DataError(f"{what} {rel!r} is absolute; paths must be relative to the data root")
    depth = 0
    for part in p.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise DataError(f"{what} {rel!r} escapes the data root{f' {root}' if root else ''}")
    return p.as_posix()


def resolve_under(root: str | os.PathLike, rel: str, what: str = "path") -> Path:
    """Join a checked relative path onto `root`."""
    return Path(root) / safe_relpath(rel, root, what)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------
def check_image(path: str | os.PathLike) -> str | None:
    """Return None if `path` is a readable, complete image, else a short description of the problem.

    Decodes the whole image (a truncated PNG passes `Image.verify` on its header alone).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing file"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as im:
            im.load()
            if im.width == 0 or im.height == 0:
                return "image has zero size"
    except UnidentifiedImageError:
        return "not an image (unrecognised format)"
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).split("\n")[0] or type(e).__name__
        return f"corrupt image ({msg})"
    return None


def load_rgb(path: str | os.PathLike):
    """Open an image as RGB; a problem is a `DataError` naming the file."""
    from PIL import Image

    problem = check_image(path)
    if problem:
        raise DataError(f"{path}: {problem}")
    with Image.open(path) as im:
        return im.convert("RGB")
