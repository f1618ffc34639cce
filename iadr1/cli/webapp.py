"""`iadr1 app`: a trained model behind a web page (Gradio; the `app` extra), one image at a time."""

from __future__ import annotations

from pathlib import Path

import typer

from iadr1.cli._options import field_help, warn_versions


def _help(name: str) -> str:
    from iadr1.infer.runner import InferConfig

    return field_help(InferConfig, name, with_default=True)


def app(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder (vllm, transformers) or API model name."),
    backend: str = typer.Option("transformers", "--backend", help=_help("backend")),
    reference: Path | None = typer.Option(
        None, "--reference", "-r", help="A normal image of the part, the page's default reference (one-shot)."
    ),
    examples: list[Path] | None = typer.Option(
        None, "--examples", help="Example images (files or folders) to pick from on the page; repeatable."
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0.0, max=1.0, help="Starting threshold on the decision score (the page has a slider)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(7860, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    prompt_style: str = typer.Option("iadr1", "--prompt-style", help=_help("prompt_style")),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help=_help("max_new_tokens")),
    device: str | None = typer.Option(None, "--device", help=_help("device")),
    dtype: str = typer.Option("auto", "--dtype", help=_help("dtype")),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help=_help("max_pixels")),
    base_url: str | None = typer.Option(None, "--base-url", help=_help("base_url")),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help=_help("api_key_env")),
) -> None:
    """A web page on the model: upload an image (and a normal reference), see the answer, P(yes), the call at a
    threshold (slider), the defect type, the named 3x3 cell drawn over the image and the reasoning. The model is
    loaded once; Ctrl-C stops the server."""
    from pydantic import ValidationError
    from rich.console import Console

    from iadr1.app import run_app
    from iadr1.cli._options import option_error
    from iadr1.infer.runner import InferConfig

    here = Path(".")
    try:
        icfg = InferConfig(
            model=model, test_file=here, image_root=here, out=here, backend=backend, prompt_style=prompt_style,
            max_new_tokens=max_new_tokens, device=device, dtype=dtype, max_pixels=max_pixels, base_url=base_url,
            api_key_env=api_key_env, batch_size=1, concurrency=1,
        )  # fmt: skip
    except ValidationError as e:
        raise option_error(e) from None
    err = Console(stderr=True, highlight=False)
    warn_versions("infer")
    run_app(
        icfg, threshold=threshold, host=host, port=port, reference=reference, examples=examples or [],
        on_message=lambda note: err.print(note, markup=False, soft_wrap=True),
    )  # fmt: skip
