"""Training records -> TRL datasets.

PA-SFT records become prompt/completion pairs (TRL's vision collator then puts the loss on the answer only);
SC-GRPO records become conversational prompts with their images and `solution` (read by the rewards).
Every record is checked before training starts; the first bad one is a one-line `DataError` naming file and
record. `check_images` then decodes every image once, in parallel (a truncated file passes an existence check
and would otherwise fail mid-training), and fails or, when asked, skips and records the records that use a bad
one.

Images stay paths in the Arrow table and are opened, converted to RGB and resized in a lazy transform (a
dataset of thousands of images never sits in memory). Resizing here, before any processor, with the one image
rule that inference uses too (`iadr1.models.loading.fit_image`), is what keeps the pixels identical in training,
in vLLM rollouts and in `iadr1 infer`: every processor built from the same checkpoint leaves such an image as it
is.

Message content also stays a plain string in the table (`datasets` would merge text and image blocks into one
struct type and the chat templates then see extra keys); the transform turns `<image>` markers into image
blocks at their place (images first when the text has no marker, as TRL and LLaMA-Factory do).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iadr1.data.io import iter_records, resolve_under
from iadr1.data.schemas import GRPORecord, SFTRecord, validate_record
from iadr1.errors import DataError
from iadr1.models.loading import load_image
from iadr1.prompts import IMAGE_PLACEHOLDER, split_images


# ------------------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------------------
def _image_paths(images: str | list[str], root: Path, where: str) -> list[str]:
    paths = [images] if isinstance(images, str) else list(images)
    if not paths:
        raise DataError(f"{where}: field 'images': no image")
    out = []
    for rel in paths:
        full = resolve_under(root, rel, what=f"{where}: image") if not os.path.isabs(rel) else Path(rel)
        if not full.is_file():
            raise DataError(f"{where}: image {rel!r} not found under {root}")
        out.append(str(full))
    return out


def _check_markers(messages: list[dict[str, str]], n_images: int, where: str) -> None:
    markers = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages if m["role"] == "user")
    if markers not in (0, n_images):
        raise DataError(f"{where}: {markers} {IMAGE_PLACEHOLDER} marker(s) in the user text but {n_images} image(s)")


def _with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


RECORD_KEY = "_record"  # where a row came from ("FILE: record 'line 3'"), for messages; not a dataset column


def check_images(
    rows: list[dict[str, Any]], skip_bad: bool = False, workers: int | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Decode every image of the rows once; return (rows kept, problems).

    A bad image (missing, truncated, not an image) is a `DataError` naming the record, the file and the
    problem, with the count of others; with `skip_bad` the records that use one are dropped instead and
    listed in the problems (`{"record", "image", "problem"}`). Decoding runs in a process pool
    (`iadr1.data.build.validate_images`, the same check `build-data` makes).
    """
    from iadr1.data.build import validate_images

    paths = sorted({p for r in rows for p in r["images"]})
    bad = validate_images(paths, workers=workers)
    if not bad:
        return rows, []
    problems = [{"record": r[RECORD_KEY], "image": p, "problem": bad[p]} for r in rows for p in r["images"] if p in bad]
    if not skip_bad:
        first = problems[0]
        more = f" ({len(bad) - 1} more bad image(s); skip_bad_images: true drops their records)" if len(bad) > 1 else ""
        raise DataError(f"{first['record']}: image {first['image']}: {first['problem']}{more}")
    kept = [r for r in rows if not any(p in bad for p in r["images"])]
    if not kept:
        raise DataError(f"every record uses a bad image ({len(bad)} bad image(s), e.g. {problems[0]['image']})")
    return kept, problems


def read_sft_rows(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """Validate PA-SFT records and turn each into {prompt, completion, images} (image paths made absolute).

    The last message must be the assistant's answer (the completion, the only tokens with a loss); everything
    before it is the prompt. `image_root` defaults to the dataset file's folder.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    rows = []
    for key, obj in iter_records(path):
        where = f"{path}: record {key!r}"
        rec = validate_record(SFTRecord, obj, path, key)
        messages = [{"role": m.role, "content": m.content} for m in rec.messages]
        if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
            raise DataError(f"{where}: field 'messages': must end with a user turn then the assistant's answer")
        if not messages[-1]["content"].strip():
            raise DataError(f"{where}: field 'messages': the assistant's answer is empty")
        images = _image_paths(rec.images, root, where)
        _check_markers(messages, len(images), where)
        rows.append(
            {
                "prompt": _with_system(messages[:-1], system_prompt),
                "completion": [messages[-1]],
                "images": images,
                RECORD_KEY: where,
            }
        )
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def read_grpo_rows(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """Validate SC-GRPO records and turn each into {id, prompt, images, solution}.

    A `solution` without `<answer>` would make every reward 0 for that prompt: it fails here, before training.
    """
    from iadr1.rewards import validate_solution

    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    rows = []
    for key, obj in iter_records(path):
        where = f"{path}: record {key!r}"
        rec = validate_record(GRPORecord, obj, path, key)
        try:
            validate_solution(rec.solution)
        except ValueError as e:
            raise DataError(f"{where}: field 'solution': {e}") from None
        images = _image_paths(rec.image, root, where)
        messages = _with_system([{"role": "user", "content": rec.problem}], system_prompt)
        _check_markers(messages, len(images), where)
        rows.append({"id": rec.id, "prompt": messages, "images": images, "solution": rec.solution, RECORD_KEY: where})
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


# ------------------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------------------
def to_blocks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """String contents -> content blocks, with an image block wherever the user text has an `<image>` marker.

    A user text without markers stays a string: TRL then puts the images first
    (`prepare_multimodal_messages`).
    """
    out = []
    for m in messages:
        text = m["content"]
        if m["role"] != "user" or not isinstance(text, str) or IMAGE_PLACEHOLDER not in text:
            out.append(m)
            continue
        # The same split as inference (`prompts.split_images`), so training and inference prompts agree.
        blocks = [{"type": "image"} if seg is None else {"type": "text", "text": seg} for seg in split_images(text)]
        out.append({**m, "content": blocks})
    return out


def build_dataset(rows: list[dict[str, Any]], max_pixels: int, factor: int = 1):
    """A `datasets.Dataset` of the rows whose items come out ready for TRL: images opened and sized by the one
    image rule (`load_image`; `factor` from `image_factor(family, processor)`), prompts in blocks. The transform
    runs on access, in the data-loader workers."""
    from datasets import Dataset

    def transform(batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        batch["images"] = [[load_image(p, max_pixels, factor) for p in paths] for paths in batch["images"]]
        batch["prompt"] = [to_blocks(p) for p in batch["prompt"]]
        return batch

    return Dataset.from_list([{k: v for k, v in r.items() if k != RECORD_KEY} for r in rows]).with_transform(transform)
