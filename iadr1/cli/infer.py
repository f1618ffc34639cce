"""`iadr1 infer`: run a model over a benchmark test file and append one prediction per image (resumable).

Exit status: 0 when the run answered something or had nothing left to do; 1 (one red line) for a bad option or
input, a folder of predictions made with other settings, an engine that cannot start, or a run in which every
image it tried failed.
"""

from __future__ import annotations

from pathlib import Path

import typer

_BACKENDS = "vllm, transformers or openai"


def infer(
    model: str | None = typer.Option(None, "--model", help="Checkpoint folder (vllm, transformers) or API model name."),
    test_file: Path | None = typer.Option(None, "--test-file", help="Benchmark test file (MMAD-style JSON)."),
    image_root: Path | None = typer.Option(None, "--image-root", help="Folder the test file's paths are relative to."),
    out: Path | None = typer.Option(None, "--out", help="Output folder: predictions*.jsonl + a .run.json manifest."),
    backend: str | None = typer.Option(None, "--backend", help=f"{_BACKENDS} (default transformers)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of these options; flags override it."),
    shots: int | None = typer.Option(None, "--shots", help="K normal reference images per prompt (default 0)."),
    templates: str | None = typer.Option(None, "--templates", help="Reference images: random or similar."),
    prompt_style: str | None = typer.Option(
        None, "--prompt-style", help="iadr1 (trained, tags), baseline (yes/no), api, anomaly_r1 (letter)."
    ),
    system_prompt: bool | None = typer.Option(
        None, "--system-prompt/--no-system-prompt", help="Add the output-grammar system prompt (off as published)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N images of the test file."),
    shard: int | None = typer.Option(None, "--shard", help="This job's shard index I (0-based)."),
    num_shards: int | None = typer.Option(None, "--num-shards", help="Number of shards N."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Default 512 (openai 600)."),
    temperature: float | None = typer.Option(None, "--temperature", help="0 = greedy (default)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of sampling and back-off jitter (default 0)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="transformers: requests per generate call."),
    dtype: str | None = typer.Option(None, "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32."),
    device: str | None = typer.Option(None, "--device", help="transformers: cuda, cuda:1, cpu (default: auto)."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Image pixel cap (Qwen families)."),
    logprobs: bool | None = typer.Option(None, "--logprobs/--no-logprobs", help="Record P(yes) where possible."),
    tensor_parallel_size: int | None = typer.Option(None, "--tensor-parallel-size", help="vllm: GPUs per model."),
    data_parallel_size: int | None = typer.Option(None, "--data-parallel-size", help="vllm: model replicas."),
    gpu_memory_utilization: float | None = typer.Option(None, "--gpu-memory-utilization", help="vllm (0.9)."),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="vllm: context length (default: the model's own, at most 8192)."
    ),
    enforce_eager: bool | None = typer.Option(None, "--enforce-eager/--no-enforce-eager", help="vllm: no graphs."),
    base_url: str | None = typer.Option(None, "--base-url", help="openai: endpoint, e.g. http://127.0.0.1:8000/v1."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="openai: NAME of the environment variable holding the key (OPENAI_API_KEY)."
    ),
    concurrency: int | None = typer.Option(None, "--concurrency", help="openai: requests in flight (8)."),
    timeout_s: float | None = typer.Option(None, "--timeout", help="openai: seconds per request (60)."),
    retries: int | None = typer.Option(None, "--retries", help="openai: retries on 429/5xx/refusals (5)."),
    max_side: int | None = typer.Option(None, "--max-side", help="openai: resize images to fit (512 px; 0: never)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over: remove this run's predictions, and those of other settings in OUT."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a model over a test file; append one JSON line per image to OUT/predictions.jsonl (reruns resume)."""
    options = {k: v for k, v in locals().items() if k not in ("config", "quiet", "overwrite")}  # only the options
    from rich.console import Console
    from rich.table import Table

    from iadr1.errors import ConfigError, IADR1Error
    from iadr1.infer.runner import load_config, run_inference

    missing = [f"--{n.replace('_', '-')}" for n in ("model", "test_file", "image_root", "out") if not options.get(n)]
    if config is None and missing:
        raise ConfigError(f"missing {', '.join(missing)}")
    cfg = load_config(config, **options)
    console = Console(stderr=True, highlight=False)
    summary = run_inference(
        cfg,
        progress=not quiet,
        overwrite=overwrite,
        on_message=lambda note: console.print(note, markup=False, soft_wrap=True),
    )

    table = Table(title=f"iadr1 infer ({cfg.backend}, {cfg.prompt_style}, {cfg.shots}-shot)", show_header=False)
    acc = "-" if summary.accuracy is None else f"{100 * summary.accuracy:.1f}% (this run, quick look)"
    rows = [
        ("predictions", str(summary.predictions)),
        ("images (this shard)", str(summary.selected)),
        ("already done (skipped)", str(summary.skipped)),
        ("written now", str(summary.written)),
        ("answers yes / no / none", f"{summary.yes} / {summary.no} / {summary.unanswered}"),
        ("errors", str(summary.errors)),
        ("accuracy", acc),
        ("time (with model load)", f"{summary.elapsed_s:.1f} s, {summary.images_per_s:.2f} images/s"),
    ]
    for k, v in rows:
        table.add_row(f"[bold]{k}[/]", v)
    console.print(table)
    if summary.all_failed:
        raise IADR1Error(
            f"all {summary.written} images this run tried failed (first: {summary.first_error}); "
            f"see the error field in {summary.predictions}"
        )
