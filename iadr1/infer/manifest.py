"""The run manifest (`predictions*.run.json`): what a predictions file was made with, and the one rule that decides
whether a run may add to an output folder.

Every setting that changes answers is recorded (`run_settings`): the model (its path, the SHA-256 of its
config.json, the names and sizes of its weight files), the decoding options, the image cap actually used (the one
given, else the one the model was trained with), the prompt, the shots and the test file's SHA-256. A run adds to
a folder only if every predictions file already there was made with the same settings; otherwise it stops with
one line naming what differs (`check_folder`), unless told to start over.
Settings that do not change answers (batch size, concurrency, limit, device, shards, the vLLM engine's memory
options) are recorded in `config` but never compared, so they may change between runs.

The manifest is written when a run starts, so a killed run's folder is protected too, and again when it ends,
with the run's summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from iadr1.data.io import atomic_write_json, file_sha256, read_json
from iadr1.errors import ConfigError, DataError
from iadr1.infer.base import resolve_max_pixels

if TYPE_CHECKING:
    from iadr1.infer.runner import InferConfig

# Names and sizes, not content: hashing gigabytes of weights at every start would cost minutes. A retrained model
# saved over the same folder keeps both, so a new model wants a new --out folder (docs/infer.md).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "adapter_model*.bin")

# How a difference reads in the refusal; other keys read as "name: old here, new in this run".
_DESCRIBE = {
    "model_config_sha256": "the model's config.json differs",
    "model_weights": "the model's weight files differ (names or sizes)",
    "test_file_sha256": "the test file's content differs",
}


class RunManifest(BaseModel):
    """`predictions*.run.json`. `settings` are compared between runs; `config` is every option, for the record."""

    iadr1: str
    settings: dict[str, Any]
    config: dict[str, Any]
    started_at: str
    finished_at: str | None = None
    summary: dict[str, Any] | None = None


def manifest_path(predictions: Path) -> Path:
    """`OUT/predictions.run.json` beside `OUT/predictions.jsonl` (`predictions.shard0of4.run.json` for a shard)."""
    return predictions.with_suffix(".run.json")


def model_weights(folder: Path) -> dict[str, int]:
    """{file name: size in bytes} of a checkpoint folder's weight files (empty: not a model folder)."""
    files = {f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()}
    return {f.name: f.stat().st_size for f in sorted(files)}


def run_settings(cfg: InferConfig, test_file_sha256: str) -> dict[str, Any]:
    """The settings that decide a run's answers, normalised so that options a run ignores never differ
    (`top_p` and `seed` under greedy decoding, `templates` at zero shots, image options of the other backends)."""
    opts = cfg.generation_options()
    sampling = opts.temperature > 0
    local = cfg.backend != "openai"
    folder = Path(cfg.model)
    on_disk = local and folder.is_dir()  # else an API model name, or a label for an engine passed in
    config_json = folder / "config.json"
    return {
        "backend": cfg.backend,
        "model": str(folder.resolve()) if on_disk else cfg.model,
        "model_config_sha256": file_sha256(config_json) if on_disk and config_json.is_file() else None,
        "model_weights": model_weights(folder) if on_disk else None,
        "test_file_sha256": test_file_sha256,
        "prompt_style": cfg.prompt_style,
        "grammar_prompt": cfg.grammar_prompt,
        "shots": cfg.shots,
        "template_kind": cfg.template_kind if cfg.shots else None,
        "max_new_tokens": opts.max_new_tokens,
        "temperature": opts.temperature,
        "top_p": opts.top_p if sampling else None,
        # the seed also decides the pixels of a noise perturbation
        "seed": opts.seed if sampling or any(p.seeded for p in opts.perturb) else None,
        "dtype": cfg.dtype if local else None,
        # The cap the backend will use (`resolve_max_pixels`): a run that defaults to the model's training cap and
        # one that names the same cap see the same pixels; None is the processor's own limits.
        "max_pixels": resolve_max_pixels(folder, cfg.max_pixels)[0] if local else None,
        "max_side": (cfg.max_side or None) if not local else None,
        "base_url": cfg.base_url if not local else None,
        # Only when given, so that folders written before thresholds existed resume as they did.
        **({"threshold": cfg.threshold} if cfg.threshold is not None else {}),
        **({"task": cfg.task} if cfg.task != "detect" else {}),
        # Likewise only when some: canonical specs, in order (a perturbed run never resumes into a clean folder).
        **({"perturb": list(cfg.perturb)} if cfg.perturb else {}),
    }


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two runs' settings, one short phrase each (empty: the runs may share a folder)."""
    missing = object()
    out = []
    for key in [*current, *(k for k in recorded if k not in current)]:
        old, new = recorded.get(key, missing), current.get(key, missing)
        if old == new:
            continue
        if key in _DESCRIBE:
            out.append(_DESCRIBE[key])
        else:
            shown = ["not recorded" if v is missing else repr(v) for v in (old, new)]
            out.append(f"{key} {shown[0]} here, {shown[1]} in this run")
    return out


def _recorded(manifest: Path) -> dict[str, Any] | str:
    """A manifest's settings, or why they cannot be known."""
    if not manifest.exists():
        return f"no {manifest.name} says how they were made"
    try:
        return RunManifest.model_validate(read_json(manifest)).settings
    except (DataError, ValidationError):
        return f"{manifest.name} does not record the run's settings (written by an older iadr1, or damaged)"


def check_folder(predictions: Path, settings: dict[str, Any], overwrite: bool = False) -> list[Path]:
    """Refuse, with a one-line `ConfigError`, to add to a folder holding predictions made with other settings.

    Every `predictions*.jsonl` of the folder counts (the shards of a job array share one folder). With
    `overwrite`, this run's own file is started over and any file of other settings is removed instead; files of
    the same settings (sibling shards) are kept. Returns the files removed.
    """
    removed: list[Path] = []
    for pred in sorted(predictions.parent.glob("predictions*.jsonl")):
        manifest = manifest_path(pred)
        if not (overwrite and pred == predictions):  # this run's own file is started over whatever it holds
            if pred.stat().st_size == 0:
                continue  # nothing written yet: nothing to mix
            recorded = _recorded(manifest)
            problem = recorded if isinstance(recorded, str) else "; ".join(differences(recorded, settings))
            if not problem:
                continue
            if not overwrite:
                raise ConfigError(
                    f"{pred} holds predictions made with other settings ({problem}): "
                    "pass --overwrite to start over, or use another --out folder"
                )
        for f in (pred, manifest):
            if f.exists():
                f.unlink()
                removed.append(f)
    return removed


def write_manifest(
    predictions: Path,
    cfg: InferConfig,
    settings: dict[str, Any],
    started_at: str,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write the manifest atomically: at the start of a run (no summary yet), then at its end (no secret: the
    API key is only ever named by its environment variable)."""
    from iadr1 import __version__

    manifest = RunManifest(
        iadr1=__version__,
        settings=settings,
        config=cfg.model_dump(mode="json"),
        started_at=started_at,
        finished_at=None if summary is None else now(),
        summary=summary,
    )
    return atomic_write_json(manifest_path(predictions), manifest.model_dump(mode="json"), indent=2)


def now() -> str:
    """The local time as an ISO 8601 string with its UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
