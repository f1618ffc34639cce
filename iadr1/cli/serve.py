"""`iadr1 serve`: start vLLM's OpenAI-compatible server with the settings the model needs (docs/deploy.md)."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Model folder (trained by iadr1 or any supported family)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="Port of the OpenAI-compatible API (/v1)."),
    served_name: str | None = typer.Option(
        None, "--served-name", help="Model name clients send (default: the folder's name)."
    ),
    max_images: int = typer.Option(2, "--max-images", min=1, help="Images per prompt: K references + the query."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="Image cap (default: the one the model was trained with, if iadr1 trained it)."
    ),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="Context length (default: the model's own, config.json)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16, float16, float32."),
    print_only: bool = typer.Option(False, "--print-only", help="Print the `vllm serve` command and exit."),
    extra: list[str] = typer.Argument(None, help="More `vllm serve` arguments, after `--`."),
) -> None:
    """Print the equivalent `vllm serve` command, then run it (this process becomes the server). Clients:
    `iadr1 predict/infer --backend openai --base-url http://HOST:PORT/v1 --model NAME`."""
    import os
    import shlex
    import sys

    from iadr1.infer.serve import serve_command

    argv, notes = serve_command(
        model, host, port, served_name, max_images, max_pixels, max_model_len, dtype, extra or [],
        require_vllm=not print_only,
    )  # fmt: skip
    for note in notes:
        print(note, file=sys.stderr)
    print(shlex.join(argv), flush=True)
    if not print_only:
        os.execv(argv[0], argv)
