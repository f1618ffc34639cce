"""`iadr1 annotate`: the training answers (reasoning, location, type) for your own images, from their masks and
defect names (docs/annotate.md). Reruns resume; problems are skipped and listed in the report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from iadr1.cli._options import Opt, config_command
from iadr1.config import flag

if TYPE_CHECKING:
    from rich.console import Console

    from iadr1.data.annotate.run import AnnotateResult

_SHOWN_PROBLEMS = 10

# Flags of `iadr1 annotate`; the help texts are AnnotateConfig's field descriptions (iadr1/data/annotate/run.py).
_OPTIONS: list[Opt] = [
    Opt("config", ("--config",), Path, help="YAML file of these options; flags override it."),
    Opt("meta", ("--meta", "-m"), Path),
    Opt("out", ("--out", "-o"), Path),
    Opt("splits", ("--split",), list[str]),
    Opt("overwrite", ("--overwrite",), bool),
    Opt("references", ("--references/--no-references",), bool),
    Opt("timeout_s", ("--timeout",), float),
    Opt("quiet", ("--quiet", "-q"), bool, help="No progress bar."),
    *(
        Opt(name, (flag(name),), kind)
        for name, kind in [
            ("image_root", Path),
            ("reasoner", str),
            ("seed", int),
            ("types", Path),
            ("sheet", int),
            ("model", str),
            ("backend", str),
            ("base_url", str),
            ("api_key_env", str),
            ("teacher_retries", int),
            ("temperature", float),
            ("max_new_tokens", int),
            ("concurrency", int),
            ("retries", int),
            ("max_pixels", int),
            ("batch_size", int),
            ("device", str),
            ("chunk", int),
        ]
    ),  # fmt: skip
]


def _annotate(**options: Any) -> None:
    """Write the annotations file `build-data --annotations` reads: per image a reasoning text, and for a defect its
    3x3-grid location (from the mask) and type (from the defect name); a report and a contact sheet beside it."""
    from rich.console import Console

    from iadr1.cli._progress import ProgressBars
    from iadr1.config import load_layers, read_yaml
    from iadr1.data.annotate.run import AnnotateConfig, annotate
    from iadr1.errors import ConfigError

    config, quiet = options.pop("config"), bool(options.pop("quiet"))
    if config is None and (options.get("meta") is None or options.get("out") is None):
        raise ConfigError("give --meta and --out (or a --config file with meta and out)")
    layers = [(str(config), read_yaml(config))] if config is not None else []
    cfg = load_layers(AnnotateConfig, layers, options)
    console = Console(stderr=True, highlight=False)
    with ProgressBars(console, transient=True, disable=quiet or not console.is_terminal) as on_progress:
        if cfg.reasoner == "model":
            from iadr1.infer.teacher import open_teacher

            with open_teacher(cfg) as teacher:
                result = annotate(cfg, on_progress=on_progress, teacher=teacher)
        else:
            result = annotate(cfg, on_progress=on_progress)
    render_summary(Console(highlight=False), result)


def render_summary(console: Console, result: AnnotateResult) -> None:
    """Tables: images per class, types, problems (the first few listed), the teacher's acceptance; the files."""
    from rich.table import Table

    from iadr1.data.annotate.run import PROBLEMS

    r = result.report
    t = Table(title=f"annotations ({r['annotated']} images)")
    for col in ("class", "normal", "defective"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for cls, c in r["per_class"].items():
        t.add_row(cls, str(c.get("normal", 0)), str(c.get("defective", 0)))
    console.print(t)
    if r["per_type"]:
        ty = Table(title="defect types")
        ty.add_column("type")
        ty.add_column("images", justify="right")
        for name, n in r["per_type"].items():
            ty.add_row(name if name != "None" else "[yellow]no type[/]", str(n))
        console.print(ty)
    if r["problems"]:
        p = Table(title=f"problems ({r['run']['problems']})")
        p.add_column("kind")
        p.add_column("count", justify="right")
        p.add_column("meaning")
        for kind, n in r["problem_counts"].items():
            p.add_row(f"[red]{kind}[/]", str(n), PROBLEMS.get(kind, ""))
        console.print(p)
        for pr in r["problems"][:_SHOWN_PROBLEMS]:
            console.print(f"  [red]{pr['kind']}[/] {pr['detail']}", soft_wrap=True)
        if r["run"]["problems"] > _SHOWN_PROBLEMS:
            console.print(f"  ... and {r['run']['problems'] - _SHOWN_PROBLEMS} more in the report")
    teacher = r.get("teacher")
    if teacher:
        console.print(
            f"teacher: {teacher['accepted']} of {teacher['images']} replies accepted "
            f"({100 * teacher['acceptance_rate']:.1f}%; {teacher['accepted_after_retry']} after a retry), "
            f"{teacher['template_fallback']} template fallbacks; refusals {teacher['refusals'] or 'none'}",
            soft_wrap=True,
        )
    run = r["run"]
    speed = f", {run['images_per_s']:.0f} images/s" if run["images_per_s"] else ""
    console.print(
        f"written {run['written']} now, {run['already_done']} already done ({run['seconds']:.1f} s{speed})",
    )
    console.print(f"annotations: {result.annotations}")
    console.print(f"report: {result.report_path}")
    if result.sheet:
        console.print(f"contact sheet: {result.sheet}")
    if not run["written"] and not run["already_done"]:
        from iadr1.errors import DataError

        raise DataError(f"no image could be annotated ({run['problems']} problems; see {result.report_path})")


def _annotate_command():
    from iadr1.data.annotate.run import AnnotateConfig

    return config_command(AnnotateConfig, _OPTIONS, _annotate, "annotate", _annotate.__doc__ or "")


annotate = _annotate_command()
