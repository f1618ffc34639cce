"""File input/output: atomic writes, resumable JSONL appends, JSON reading with one-line errors, the one reader of
records files (`iter_records`: JSON list, JSON object, JSON Lines), path safety, image checks and image fingerprints."""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from iadr1.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


# ---------------------------------------------------------------------------------------------------------------------
# Many small objects
# ---------------------------------------------------------------------------------------------------------------------
@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: reading or building a million small records (none with cycles) otherwise
    triggers repeated full collections that rescan every object made so far (measured: 2-4x slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


F = TypeVar("F", bound=Callable[..., Any])


def without_gc(fn: F) -> F:
    """`fn` with the cyclic garbage collector paused while it runs (`gc_paused`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with gc_paused():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
class DuplicateKeyError(ValueError):
    """A JSON object repeats a key. `json` would keep the last value without a word: a record or a field lost."""

    def __init__(self, key: str):
        super().__init__(f"key {key!r} appears twice (JSON keeps the last value only)")
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) < len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKeyError(k)
            seen.add(k)
    return d


def loads_json(text: str, unique_keys: bool = True) -> Any:
    """`json.loads`; with `unique_keys`, an object that repeats a key raises `DuplicateKeyError`."""
    return json.loads(text, object_pairs_hook=_unique_pairs) if unique_keys else json.loads(text)


def _duplicate_where(text: str) -> str:
    """Where the first repeated key of a document is: `key 'K' ...` at the top level, else `record R: key 'K' ...`
    naming the top-level record (key or index) that holds it. Parses again; only called on that error."""
    repeats: list[tuple[dict, str]] = []  # the objects stay alive here, so their ids stay unique

    def note(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        try:
            return _unique_pairs(pairs)
        except DuplicateKeyError as e:
            d = dict(pairs)
            repeats.append((d, e.key))
            return d

    top = json.loads(text, object_pairs_hook=note)
    by_id = {id(d): key for d, key in repeats}

    def find(obj: Any) -> str | None:
        if isinstance(obj, dict):
            if id(obj) in by_id:
                return by_id[id(obj)]
            return next((k for k in map(find, obj.values()) if k is not None), None)
        if isinstance(obj, list):
            return next((k for k in map(find, obj) if k is not None), None)
        return None

    if isinstance(top, dict) and id(top) in by_id:
        return str(DuplicateKeyError(by_id[id(top)]))
    records = top.items() if isinstance(top, dict) else enumerate(top) if isinstance(top, list) else ()
    for rec, value in records:
        key = find(value)
        if key is not None:
            return f"record {rec!r}: {DuplicateKeyError(key)}"
    return str(DuplicateKeyError(repeats[0][1])) if repeats else "a key appears twice"


def read_text(path: str | os.PathLike, what: str = "file", error: type[Exception] = DataError) -> str:
    """A UTF-8 text file's content; a missing, unreadable or binary file is one line (`error`) naming it, never a
    traceback. `what` names the expected kind when a folder stands there ("JSON file", "config file")."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a {what}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # permission denied, a dead network mount...: still one line, not a traceback
        raise error(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def read_json(path: str | os.PathLike, unique_keys: bool = True) -> Any:
    """Read a JSON file; a missing file or a syntax error is a one-line `DataError` naming the file and position.

    With `unique_keys` (the default) an object that repeats a key is a `DataError` naming the key and the top-level
    record holding it: plain JSON readers keep the last value silently, which loses a record or a field.
    """
    path = Path(path)
    text = read_text(path, "JSON file")
    try:
        return loads_json(text, unique_keys)
    except DuplicateKeyError:
        raise DataError(f"{path}: {_duplicate_where(text)}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB chunks: test files and configs of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BadLine:
    """A JSON Lines line that is not a JSON value, or whose object repeats a key (`iter_jsonl(bad_lines=True)`)."""

    why: str


def iter_jsonl(
    path: str | os.PathLike, skip_torn_tail: bool = True, unique_keys: bool = True, bad_lines: bool = False
) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object) for each non-blank line of a JSON Lines file.

    A malformed line is a `DataError` naming file and line, except a last line with no newline when
    `skip_torn_tail` is set (what a killed writer leaves behind), which is ignored. With `unique_keys`, a line
    whose object repeats a key is a `DataError` naming file, line and key. With `bad_lines`, such lines are yielded
    as a `BadLine` instead (for readers that skip and report bad records).
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a JSON Lines file") from None
    with f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, loads_json(line, unique_keys)
                except DuplicateKeyError as e:
                    if not bad_lines:
                        raise DataError(f"{path}: line {lineno}: {e}") from None
                    yield lineno, BadLine(str(e))
                except json.JSONDecodeError as e:
                    if skip_torn_tail and not line.endswith("\n"):
                        return
                    if not bad_lines:
                        raise DataError(f"{path}: malformed JSON on line {lineno}: {e.msg}") from None
                    yield lineno, BadLine(f"malformed JSON: {e.msg}")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


RecordKey = str | int  # `line N` (JSON Lines), the index (JSON list) or the key (JSON object) of a record


def iter_records(
    path: str | os.PathLike,
    unique_keys: bool = True,
    key_field: str | None = None,
    aliases: tuple[str, ...] = (),
    bad_lines: bool = False,
    skip_torn_tail: bool = True,
    what: str = "records",
) -> Iterator[tuple[RecordKey, Any]]:
    """The one reader of records files: yield (key, record) from `.jsonl` (key `line N`), a JSON list (key: the
    index) or a JSON object keyed by record (key: the key); anything else is a `DataError`.

    `key_field`: in the keyed form, a record (an object) that has neither this field nor one of `aliases` gets the key
    in it (annotations keyed by image). `unique_keys`, `bad_lines`, `skip_torn_tail`: as for `iter_jsonl` and
    `read_json` (`bad_lines` and `skip_torn_tail` concern JSON Lines only: a `.json` file is parsed whole). `what`
    names the records in that error (`annotations must be ...`).
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        for n, obj in iter_jsonl(path, skip_torn_tail, unique_keys, bad_lines):
            yield f"line {n}", obj
        return
    obj = read_json(path, unique_keys)
    if isinstance(obj, list):
        yield from enumerate(obj)
    elif isinstance(obj, dict):
        names = (key_field, *aliases)
        for k, v in obj.items():
            if key_field is not None and isinstance(v, dict) and not any(n in v for n in names):
                v = {key_field: k, **v}
            yield k, v
    else:
        raise DataError(
            f"{path}: {what} must be a JSON list, a JSON object keyed by {key_field or 'record'}, or JSON Lines; "
            f"got {type(obj).__name__}"
        )


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
# What opening or decoding a bad image raises (Pillow's own errors are OSErrors, SyntaxErrors or ValueErrors).
IMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError)


def image_problem(e: BaseException) -> str:
    """The short description of why opening or decoding an image raised `e` (one of `IMAGE_ERRORS`), in the words
    of `check_image`, so that every command names a bad image alike."""
    from PIL import UnidentifiedImageError

    if isinstance(e, FileNotFoundError):
        return "missing file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image (unrecognised format)"
    if isinstance(e, (PermissionError, IsADirectoryError)):
        return f"unreadable ({e.strerror})"
    msg = str(e).split("\n")[0] or type(e).__name__
    return f"corrupt image ({msg})"


# How many unreadable images a message names before "and N more".
SHOW_BAD_IMAGES = 10


def bad_images_message(details: list[str], shown: int = SHOW_BAD_IMAGES) -> str:
    """One line for `"file: problem"` texts of unreadable images: the text itself for one, else their count and the
    first `shown`."""
    if len(details) == 1:
        return details[0]
    more = f"; and {len(details) - shown} more" if len(details) > shown else ""
    return f"{len(details)} unreadable images: {'; '.join(details[:shown])}{more}"


def check_image(path: str | os.PathLike) -> str | None:
    """Return None if `path` is a readable, complete image, else a short description of the problem.

    Decodes the whole image (a truncated PNG passes `Image.verify` on its header alone).
    """
    return inspect_image(path, fingerprint=False)[0]


def gray_thumbnail(im: Any, width: int, height: int) -> bytes:
    """An open PIL image shrunk to `width`x`height` 8-bit gray (a box reduction, then bilinear), as raw bytes."""
    from PIL import Image

    if im.mode in ("L", "RGB"):
        # Shrink first, then drop colour: the conversion then touches width*height pixels only.
        small = im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return small.convert("L").tobytes()
    # Palette, 1-bit, 16-bit and alpha modes: convert first (resizing them directly is nearest or lossy).
    return im.convert("L").resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0).tobytes()


# Two images are near copies (the same picture re-encoded, e.g. saved again as JPEG) when their perceptual hashes
# differ in at most NEAR_DISTANCE of 128 bits, confirmed by their 16x16 gray thumbnails differing by at most
# NEAR_RMS gray levels (root mean square, of 255). Measured (docs/build-data.md): JPEG re-encodings at quality 75-95
# of textured images stay within 12 bits and 0.7 levels; distinct tiles of one photograph are 21 or more bits apart;
# distinct centred objects (the synthetic coins) can be within 16 bits, but are 15 or more levels apart.
NEAR_DISTANCE = 16
NEAR_RMS = 3.0
# A thumbnail whose gray levels spread less than this (standard deviation) is flat: its gradient signs are noise,
# so it gets no perceptual hash (only byte copies of it are found).
_FLAT_STD = 2.0
THUMBNAIL_SIZE = 16  # the side of `ImageFingerprint.thumbnail` (as convert's image descriptor)


@dataclass(frozen=True)
class ImageFingerprint:
    """What tells image files apart by content: `sha` (SHA-256 of the file's bytes, for exact copies); `phash`
    (a 128-bit difference hash of the picture, for re-encoded copies; None when the image is flat); `thumbnail`
    (the picture as 16x16 gray bytes, which confirms a hash match).

    `phash`: the thumbnail shrunk to 9x9; one bit per pair of horizontal neighbours in the first 8 rows, then per
    pair of vertical neighbours in the first 8 columns, set where the brightness rises. Re-encoding keeps nearly
    every sign; distinct images differ in about half of them.
    """

    sha: str
    phash: int | None
    thumbnail: bytes

    def distance(self, other: ImageFingerprint) -> int | None:
        """Hamming distance of the perceptual hashes (0..128); None if either image is flat."""
        if self.phash is None or other.phash is None:
            return None
        return (self.phash ^ other.phash).bit_count()

    def thumbnail_rms(self, other: ImageFingerprint) -> float:
        """Root mean square difference of the two thumbnails, in gray levels (0..255)."""
        import numpy as np

        a = np.frombuffer(self.thumbnail, np.uint8).astype(np.float32)
        return float(np.sqrt(np.mean((a - np.frombuffer(other.thumbnail, np.uint8)) ** 2)))

    def is_near(self, other: ImageFingerprint) -> bool:
        """The same picture, maybe re-encoded: hashes within `NEAR_DISTANCE` bits and thumbnails within
        `NEAR_RMS` gray levels."""
        d = self.distance(other)
        return d is not None and d <= NEAR_DISTANCE and self.thumbnail_rms(other) <= NEAR_RMS


def _fingerprint(data: bytes, im: Any) -> ImageFingerprint:
    import numpy as np
    from PIL import Image

    thumb = gray_thumbnail(im, THUMBNAIL_SIZE, THUMBNAIL_SIZE)  # the one resize of the full image
    small = Image.frombytes("L", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), thumb).resize((9, 9), Image.Resampling.BILINEAR)
    t = np.asarray(small, np.int16)
    phash = None
    if t.std() >= _FLAT_STD:
        bits = np.concatenate([(t[:8, 1:] > t[:8, :-1]).ravel(), (t[1:, :8] > t[:-1, :8]).ravel()])
        phash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return ImageFingerprint(hashlib.sha256(data).hexdigest(), phash, thumb)


def inspect_image(path: str | os.PathLike, fingerprint: bool = True) -> tuple[str | None, ImageFingerprint | None]:
    """(problem, fingerprint) of an image file, decoded once: the problem as `check_image` gives it (None for a
    readable, complete image), and with `fingerprint`, for a readable image, its `ImageFingerprint` (else None)."""
    from PIL import Image

    path = Path(path)
    problem = _file_problem(path)
    if problem:
        return problem, None
    try:
        data = path.read_bytes() if fingerprint else b""  # read once: hashed, then decoded from memory
        with Image.open(io.BytesIO(data) if fingerprint else path) as im:
            im.load()
            if im.width == 0 or im.height == 0:
                return "image has zero size", None
            if not fingerprint:
                return None, None
            return None, _fingerprint(data, im)
    except IMAGE_ERRORS as e:
        return image_problem(e), None


def _file_problem(path: Path) -> str | None:
    """What is wrong with the file itself before any decoding (missing, unreadable, empty), in `check_image`'s
    words; None for a file worth decoding."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing file"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return "empty file (0 bytes)" if size == 0 else None


def load_rgb(path: str | os.PathLike):
    """Open an image as RGB; a problem is a `DataError` naming the file, in `check_image`'s words.

    Decoded once: the check is the decode itself (the inference backends read every image here, so a second,
    checking decode would double their most expensive step: benchmarks/bench_pipeline.py)."""
    from PIL import Image

    problem = _file_problem(Path(path))
    if problem is None:
        try:
            with Image.open(path) as im:
                im.load()
        except IMAGE_ERRORS as e:
            problem = image_problem(e)
        else:
            if im.width == 0 or im.height == 0:
                problem = "image has zero size"
    if problem:
        raise DataError(f"{path}: {problem}")
    return im.convert("RGB")
