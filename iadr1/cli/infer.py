"""`iadr1 infer`: run a model over a benchmark test file and append one prediction per image (resumable).

Exit status: 0 when the run answered something or had nothing left to do; 1 (one red line) for a bad option or
input, a folder of predictions made with other settings, an engine that cannot start, or a run in which every
image it tried failed.
"""

from __future__ import annotations

from pathlib import Path

from iadr1.cli._options import Opt, config_command, renamed, warn_versions
from iadr1.config import flag

# Flags of `iadr1 infer`; the help texts are InferConfig's field descriptions (iadr1/infer/runner.py).
_OPTIONS: list[Opt] = [
    Opt("config", ("--config",), Path, help="YAML file of these options; flags override it."),
    Opt("out", ("--out", "--output-dir", "-o"), Path),
    Opt("grammar_prompt", ("--grammar-prompt/--no-grammar-prompt",), bool),
    # The rest are spelled as their field (`max_new_tokens` -> `--max-new-tokens`).
    *(
        Opt(name, (flag(name),), kind)
        for name, kind in [
            ("model", str),
            ("test_file", Path),
            ("image_root", Path),
            ("backend", str),
            ("shots", int),
            ("template_kind", str),
            ("prompt_style", str),
            ("limit", int),
            ("shard", int),
            ("num_shards", int),
            ("max_new_tokens", int),
            ("temperature", float),
            ("top_p", float),
            ("seed", int),
            ("batch_size", int),
            ("dtype", str),
            ("device", str),
            ("image_workers", int),
            ("max_pixels", int),
            ("tensor_parallel_size", int),
            ("data_parallel_size", int),
            ("gpu_memory_utilization", float),
            ("max_model_len", int),
            ("base_url", str),
            ("api_key_env", str),
            ("concurrency", int),
            ("retries", int),
            ("max_side", int),
            ("threshold", float),
            ("task", str),
        ]
    ),  # fmt: skip
    Opt("logprobs", ("--logprobs/--no-logprobs",), bool),
    Opt("enforce_eager", ("--enforce-eager/--no-enforce-eager",), bool),
    Opt("timeout_s", ("--timeout",), float),
    Opt("perturb", ("--perturb",), list[str]),
    Opt(
        "overwrite",
        ("--overwrite",),
        bool,
        help="Start over: remove this run's predictions, and those of other settings in OUT.",
    ),  # fmt: skip
    Opt("quiet", ("--quiet", "-q"), bool, help="No progress bar."),
    # Spellings of 0.1, read for one release with a warning: --templates was a count in convert and a kind here;
    # --system-prompt is text in training and was a switch here.
    Opt("templates", ("--templates",), str, hidden=True),
    Opt("system_prompt", ("--system-prompt/--no-system-prompt",), bool, hidden=True),
]
_RENAMED = {"templates": ("template_kind", "--template-kind"), "system_prompt": ("grammar_prompt", "--grammar-prompt")}


def _infer(**options: object) -> None:
    """Run a model over a test file; append one JSON line per image to OUT/predictions.jsonl (reruns resume)."""
    from rich.console import Console
    from rich.table import Table

    from iadr1.errors import ConfigError, IADR1Error
    from iadr1.infer.runner import load_config, run_inference

    config, overwrite, quiet = options.pop("config"), bool(options.pop("overwrite")), bool(options.pop("quiet"))
    err = Console(stderr=True, highlight=False)
    for old, (new, spelling) in _RENAMED.items():
        options[new] = renamed(options[new], options.pop(old), f"--{old.replace('_', '-')}", spelling)
    missing = [f"--{n.replace('_', '-')}" for n in ("model", "test_file", "image_root", "out") if not options.get(n)]
    if config is None and missing:
        raise ConfigError(f"missing {', '.join(missing)}")
    cfg = load_config(config, **options)
    console = err
    warn_versions("infer")
    from iadr1.cli._progress import ProgressBars

    with ProgressBars(console, disable=quiet or not console.is_terminal) as on_progress:
        summary = run_inference(
            cfg,
            on_progress=on_progress,
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
    if summary.startup_s is not None:  # the start-up apart from the steady rate (docs/infer.md, "Throughput")
        engine = "" if summary.engine_s is None else f" (backend {summary.engine_s:.1f} s)"
        rows.append(("start-up", f"{summary.startup_s:.1f} s{engine}"))
    if summary.first_result_s is not None:
        rows.append(("first result", f"at {summary.first_result_s:.1f} s"))
    if summary.steady_images_per_s is not None:
        rows.append(("steady rate", f"{summary.steady_images_per_s:.2f} images/s"))
    for k, v in rows:
        table.add_row(f"[bold]{k}[/]", v)
    console.print(table)
    if summary.all_failed:
        raise IADR1Error(
            f"all {summary.written} images this run tried failed (first: {summary.first_error}); "
            f"see the error field in {summary.predictions}"
        )


def _infer_command():
    from iadr1.infer.runner import InferConfig

    return config_command(InferConfig, _OPTIONS, _infer, "infer", _infer.__doc__ or "")


infer = _infer_command()
