"""The end-to-end demo behind `iadr1 demo`: synthetic data -> tiny model -> vision warm-up -> PA-SFT -> SC-GRPO,
evaluated after each stage on held-out images, with a report.

    from iadr1.demo import DemoConfig, run_demo
    report = run_demo(DemoConfig(out="demo_out"))   # ~210 s wall, ~370 CPU-seconds on 2 cores (docs/demo.md)
    report["stages"]["sft"]["balanced_accuracy"]

Steps (each writes into `out`):

1. `data/`: the synthetic benchmark (`iadr1.data.synthetic.make_dataset`), train and held-out test images.
2. `model_untrained/`: a random tiny Qwen2-VL (`iadr1.models.tiny.build_tiny`, 7 px patches) whose tokenizer is
   also trained on the training answers (so they take few tokens); `model_warm/`: the same with its vision tower
   warmed up on the training masks (`iadr1.train.vision`, the stand-in for a pretrained encoder). Or the
   checkpoint given as `model`, used as it is.
3. `eval_untrained/`, `eval_sft/`, `eval_grpo/`: transformers inference on the test images + `iadr1.eval`.
4. `sft/`: PA-SFT (`iadr1.train.sft.run_sft`); `grpo/`: SC-GRPO (`iadr1.train.grpo.run_grpo`) from the SFT model.
5. `report.json`, `report.md`, `report.html`, `curves.png`.

The demo preset departs from the published recipe where a random tiny model on a CPU needs it (docs/demo.md has
the measurements): the vision warm-up, salient defects of the six kinds a tiny tower can see, one-line
verdict-first reasoning, far higher learning rates, and SC-GRPO asks the PA-SFT question (`prompts.user_text(0)`)
instead of the published GRPO preamble, which a tiny model never saw.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iadr1.errors import ConfigError

STAGES: tuple[str, ...] = ("untrained", "sft", "grpo")
# The figures shown in the before/after table, in order: (key in a stage's metrics, label).
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("consistency_rate", "Consistency rate"),
    ("f1", "F1"),
    ("location_accuracy", "Location accuracy"),
    ("type_accuracy", "Type accuracy"),
    ("unanswered_rate", "Unanswered"),
    ("seconds", "Seconds"),
)


# The synthetic kinds of the demo preset: all but crack and deformation (docs/demo.md has the measurements).
DEMO_DEFECTS: tuple[str, ...] = ("scratch", "hole", "stain", "missing_part", "foreign_object", "abrasion")


class DemoConfig(BaseModel):
    """Every knob of the demo. The defaults are the measured demo preset (docs/demo.md); `QUICK` shrinks it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    out: Path = Field(Path("demo_out"), description="Output folder (must not hold an earlier demo's data).")
    model: Path | None = Field(None, description="Start from this checkpoint instead of a random tiny one.")
    seed: int = 0
    # --- data -------------------------------------------------------------------------------------------------
    n_train: int = Field(6000, description="Synthetic training images (half defective).")
    n_test: int = Field(200, description="Held-out test images (half defective).")
    size: int = Field(96, description="Image side in pixels.")
    contrast: tuple[float, float] = Field((0.8, 1.0), description="Defect strength range (make_dataset).")
    scale: tuple[float, float] = Field((1.0, 1.3), description="Defect size range (make_dataset).")
    defects: tuple[str, ...] = Field(
        DEMO_DEFECTS,
        description="Defect kinds drawn. Default: the six a tiny tower sees at 96 px (docs/demo.md: crack and "
        "deformation measured at 0-46% detection with every tower tried); `SPECIES` for all eight.",
    )
    reasoning: Literal["short", "full"] = Field(
        "short",
        description="short: a one-line <think> (decision first, ~25 tokens); full: the dataset's ~115-token reasoning.",
    )

    @field_validator("defects")
    @classmethod
    def _known_defects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from iadr1.data.synthetic import SPECIES

        bad = [d for d in v if d not in SPECIES]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"defects must be distinct kinds from {', '.join(SPECIES)}; got {list(v)}")
        return v

    # --- tiny model -------------------------------------------------------------------------------------------
    family: str = "qwen2_vl"
    hidden_size: int = 256
    num_layers: int = 4
    vocab_size: int = 2000
    vision_depth: int = Field(2, description="Vision tower blocks.")
    vision_dim: int = Field(64, description="Vision tower width.")
    patch_size: int = Field(7, description="Vision patch side in pixels (96 px images: 14 x 14 patches, 49 tokens).")
    max_pixels: int = Field(112 * 112, description="Image pixel cap in training and inference.")
    # --- vision warm-up (iadr1.train.vision; the stand-in for a pretrained vision encoder) -------------------
    warmup_epochs: int = Field(4, ge=0, description="Epochs of the vision warm-up on the training masks; 0: none.")
    warmup_lr: float = 1e-3
    # --- PA-SFT -----------------------------------------------------------------------------------------------
    sft_images: int | None = Field(2000, description="PA-SFT records drawn (seeded) for one pass; None: all.")
    sft_epochs: float = 1.0
    sft_lr: float = 1e-3
    sft_batch_size: int = 8
    sft_warmup_steps: int = 10
    train_vision: bool = Field(False, description="Keep training the vision tower in PA-SFT and SC-GRPO.")
    # --- SC-GRPO ----------------------------------------------------------------------------------------------
    grpo_steps: int = 20
    grpo_lr: float = 5e-5
    grpo_prompts_per_step: int = 4
    num_generations: int = 4
    beta: float = 0.04
    temperature: float = 0.9
    max_completion_length: int = 64
    grpo_prompt: Literal["sft", "published"] = Field(
        "sft", description="sft: ask the PA-SFT question in SC-GRPO too; published: the paper's GRPO preamble."
    )
    # --- evaluation -------------------------------------------------------------------------------------------
    infer_batch_size: int = 24
    max_new_tokens: int = 64
    samples: int = Field(6, description="Sample outputs per stage shown in the report.")


QUICK: dict[str, Any] = {
    # The shortened demo of the test suite (~90 s on 2 free cores): the same model and design on a third of the
    # images, one PA-SFT pass over all of them, two SC-GRPO steps. It learns the decision too (docs/demo.md:
    # balanced accuracy 0 -> 81 after PA-SFT, 84 after SC-GRPO, on 64 held-out images).
    "n_train": 2000,
    "n_test": 64,
    "warmup_epochs": 4,
    "sft_images": None,
    "grpo_steps": 2,
    "grpo_prompts_per_step": 2,
    "infer_batch_size": 64,
    "samples": 4,
}


# ------------------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------------------
def _progress_bar(title: str, console: Any) -> Any:
    """The demo's rich progress bar: title, bar, n/total, elapsed, and a free `info` text field."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


def _progress_callback(title: str, console: Any, extra: Callable[[dict[str, float]], str]):
    """A transformers TrainerCallback drawing a rich progress bar with the latest logged figures."""
    from transformers import TrainerCallback

    class _Bar(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Any = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
            self.progress = _progress_bar(title, console)
            self.progress.start()
            self.task = self.progress.add_task(title, total=state.max_steps, info="")

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if self.progress is not None and logs:
                self.progress.update(self.task, info=extra(logs))

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return _Bar()


# ------------------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------------------
def _specie(image: str) -> str:
    """`SYNTH/<cls>/test/<specie>/0001.png` -> `<specie>` ("good" for normal images)."""
    parts = image.split("/")
    return parts[3] if len(parts) >= 5 else "unknown"


def evaluate_stage(
    name: str, model: Path, cfg: DemoConfig, ds: Any, console: Any, sample_keys: list[str]
) -> dict[str, Any]:
    """Answer every test image with `model` (transformers, greedy) and score it: metrics, per-defect accuracy,
    sample outputs."""
    from iadr1.eval.pipeline import evaluate
    from iadr1.infer import run_inference

    out = cfg.out / f"eval_{name}"
    t0 = time.perf_counter()
    summary = run_inference(
        model=str(model),
        test_file=ds.test_file,
        image_root=ds.image_root,
        out=out,
        backend="transformers",
        batch_size=cfg.infer_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        max_pixels=cfg.max_pixels,
        seed=cfg.seed,
        progress=True,
    )
    result = evaluate([ds.test_file], [summary.predictions], annotations=[ds.annotations], n_boot=0, name=name)
    metrics = dict(next(iter(result.datasets.values())))
    metrics.pop("classes", None)
    preds = [json.loads(line) for line in Path(summary.predictions).read_text().splitlines() if line.strip()]
    truth = {p["image"]: _specie(p["image"]) for p in preds}
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for p in preds:
        sp = truth[p["image"]]
        total[sp] += 1
        right[sp] += p["letter"] == ("B" if sp == "good" else "A")
    by_key = {p["image"]: p for p in preds}
    metrics["per_defect_accuracy"] = {sp: round(100 * right[sp] / total[sp], 1) for sp in sorted(total)}
    metrics["samples"] = [
        {"image": k, "truth": truth[k], "answer": by_key[k]["answer"], "output": by_key[k]["raw"]}
        for k in sample_keys
        if k in by_key
    ]
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def _corpus_from(sft_file: Path, limit: int = 1000) -> list[str]:
    """The assistant answers of the first `limit` PA-SFT records (the tokenizer's extra corpus)."""
    recs = json.loads(Path(sft_file).read_text())
    return [r["messages"][-1]["content"] for r in recs[:limit]]


_NOUNS = {"brick": "Brick wall", "grass": "Grass", "gravel": "Gravel", "coins": "Coin"}
_ANSWER_RE = re.compile(r"<location>(.*?)</location><type>(.*?)</type><answer>Yes</answer>", re.S)


def short_reasoning(image: str, answer: str) -> str:
    """The demo's one-line reasoning for a PA-SFT answer: the verdict comes first, so that the image decides the
    third or fourth token of the completion instead of one token among ~115 (docs/demo.md: why).

    `<think>Gravel: no defect.</think><answer>No</answer>` or
    `<think>Gravel: hole at the top left.</think><location>top left</location><type>Hole</type><answer>Yes</answer>`
    """
    cls = image.split("/")[1] if image.count("/") >= 2 else ""
    noun = _NOUNS.get(cls, "Surface")
    m = _ANSWER_RE.search(answer)
    if m is None:
        return f"<think>{noun}: no defect.</think><answer>No</answer>"
    loc, typ = m.group(1), m.group(2)
    where = "in the center" if loc == "center" else f"at the {loc}"
    return f"<think>{noun}: {typ.lower()} {where}.</think>{m.group(0)}"


def _sft_file(ds: Any, cfg: DemoConfig) -> Path:
    """The PA-SFT records, with the short reasoning when `cfg.reasoning == "short"`."""
    if cfg.reasoning == "full":
        return Path(ds.sft_file)
    from iadr1.data.io import atomic_write_json

    recs = json.loads(Path(ds.sft_file).read_text())
    for r in recs:
        img = r["images"] if isinstance(r["images"], str) else r["images"][-1]
        r["messages"][-1]["content"] = short_reasoning(img, r["messages"][-1]["content"])
    return atomic_write_json(Path(ds.root) / "sft_0shot_short.json", recs, indent=1)


def _sft_subset(sft_file: Path, cfg: DemoConfig) -> Path:
    """`cfg.sft_images` PA-SFT records drawn without replacement (seeded), or the whole file. The demo draws many
    more training images than one PA-SFT pass needs: the vision warm-up uses them all."""
    if cfg.sft_images is None:
        return sft_file
    import random

    from iadr1.data.io import atomic_write_json

    recs = json.loads(Path(sft_file).read_text())
    if cfg.sft_images >= len(recs):
        return sft_file
    picked = random.Random(cfg.seed).sample(recs, cfg.sft_images)
    return atomic_write_json(sft_file.with_name(f"{sft_file.stem}_{cfg.sft_images}.json"), picked, indent=1)


def _warm_up(model: Path, cfg: DemoConfig, ds: Any, console: Any) -> tuple[Path, dict[str, Any]]:
    """The vision warm-up (`iadr1.train.vision`) of a freshly built tiny model on the training images' masks,
    scored on the held-out test images after every epoch (reported, never used to choose anything)."""
    from iadr1.train.vision import VisionWarmupConfig, masked_images, warm_up_vision

    train = masked_images(ds.meta, ds.image_root, split="train")
    held = masked_images(ds.meta, ds.image_root, split="test")
    wcfg = VisionWarmupConfig(epochs=cfg.warmup_epochs, lr=cfg.warmup_lr, max_pixels=cfg.max_pixels, seed=cfg.seed)
    with _progress_bar("vision warm-up", console) as bar:
        task = bar.add_task("warm-up", total=cfg.warmup_epochs, info=f"{len(train)} images")

        def on_epoch(epoch: int, stats: dict[str, Any]) -> None:
            h = stats.get("held_out") or {}
            info = (
                f"loss {stats['loss']:.3f}, held-out accuracy {_fmt(h.get('accuracy'))}, AUROC {_fmt(h.get('auroc'))}"
            )
            bar.update(task, completed=epoch, info=info)

        result = warm_up_vision(model, train, cfg.out / "model_warm", wcfg, held_out=held, on_epoch=on_epoch)
    final = result["final"] or {}
    console.print(
        f"vision warm-up: {result['train_images']} images x {cfg.warmup_epochs} epochs in {result['seconds']} s; "
        f"the tower alone (top token > 0) on held-out images: accuracy {_fmt(final.get('accuracy'))}, "
        f"AUROC {_fmt(final.get('auroc'))}"
    )
    return Path(result["model"]), result


def _grpo_file(ds: Any, cfg: DemoConfig) -> Path:
    """The SC-GRPO records, with the PA-SFT question as the problem when `grpo_prompt == "sft"`."""
    if cfg.grpo_prompt == "published":
        return Path(ds.grpo_file)
    from iadr1.data.io import atomic_write_json
    from iadr1.prompts import user_text

    recs = json.loads(Path(ds.grpo_file).read_text())
    for r in recs:
        r["problem"] = user_text(0)
    return atomic_write_json(Path(ds.root) / "grpo_0shot_sft_prompt.json", recs, indent=1)


def _sample_keys(test_file: Path, n: int) -> list[str]:
    """`n` test images, normal and defective alternating, the same for every stage."""
    from iadr1.data.schemas import load_test_file

    entries = load_test_file(test_file)
    good = [k for k, e in entries.items() if not e.is_anomalous]
    bad = [k for k, e in entries.items() if e.is_anomalous]
    out: list[str] = []
    for g, b in zip(good, bad, strict=False):
        out += [b, g]
    return out[:n]


@contextlib.contextmanager
def _trainer_prints_hidden(console: Any) -> Iterator[None]:
    """Hide what the trainers print (transformers prints every log dict when its tqdm bar is off) while the
    rich progress bars, drawn on the console's own stream, stay visible."""
    if console._file is None:  # a console that follows sys.stdout would be silenced too: pin it first
        console.file = sys.stdout
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def run_demo(cfg: DemoConfig, console: Any = None) -> dict[str, Any]:
    """Run the whole demo (module docstring) and return the report (also written to `cfg.out/report.json`)."""
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from iadr1.data.synthetic import make_dataset
    from iadr1.models.tiny import build_tiny
    from iadr1.train.config import GRPORunConfig, SFTRunConfig
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    console = console or Console()
    hf_logging.disable_progress_bar()  # "Loading weights" bars for each of the many model loads
    out = Path(cfg.out)
    if (out / "data").exists():
        raise ConfigError(f"{out}: holds an earlier demo; choose a new --out folder or remove it")
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}
    warmup: dict[str, Any] | None = None
    quiet = {"disable_tqdm": True}

    # --- 1. Data -----------------------------------------------------------------------------------------------
    console.rule("[bold]1/5 synthetic data")
    t0 = time.perf_counter()
    with console.status("drawing images") as status:
        ds = make_dataset(
            out / "data",
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            size=cfg.size,
            seed=cfg.seed,
            contrast=cfg.contrast,
            scale=cfg.scale,
            defects=cfg.defects,
            on_progress=lambda what, i, n: status.update(f"{what} {i}/{n}") if i % 50 == 0 or i == n else None,
        )
    console.print(f"{ds.counts} in {time.perf_counter() - t0:.1f} s -> {ds.root}")
    sft_file = _sft_file(ds, cfg)
    sft_train_file = _sft_subset(sft_file, cfg)

    # --- 2. Model ----------------------------------------------------------------------------------------------
    console.rule("[bold]2/5 model and vision warm-up")
    if cfg.model is not None:
        model0 = Path(cfg.model)
        if not (model0 / "config.json").is_file():
            raise ConfigError(f"--model {model0}: not a checkpoint folder (no config.json)")
    else:
        model0 = build_tiny(
            cfg.family,
            out / "model_untrained",
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            vocab_size=cfg.vocab_size,
            seed=cfg.seed,
            corpus=_corpus_from(sft_file),
            vision_depth=cfg.vision_depth,
            vision_dim=cfg.vision_dim,
            patch_size=cfg.patch_size,
        )
        if cfg.warmup_epochs:
            model0, warmup = _warm_up(model0, cfg, ds, console)
    console.print(f"model: {model0}")
    samples = _sample_keys(ds.test_file, cfg.samples)

    def report_stage(name: str, model: Path, train_seconds: float) -> None:
        m = evaluate_stage(name, model, cfg, ds, console, samples)
        m["train_seconds"] = round(train_seconds, 1)
        m["seconds"] = round(train_seconds + m["eval_seconds"], 1)
        stages[name] = m
        console.print(
            f"[bold]{name}[/]: balanced accuracy {_fmt(m['balanced_accuracy'])}, "
            f"consistency {_fmt(m['consistency_rate'])}, F1 {_fmt(m['f1'])} ({m['seconds']} s)"
        )

    # --- 3. Untrained ------------------------------------------------------------------------------------------
    console.rule("[bold]3/5 untrained model on held-out images")
    report_stage("untrained", model0, 0.0)

    # --- 4. PA-SFT ---------------------------------------------------------------------------------------------
    console.rule("[bold]4/5 PA-SFT")
    t0 = time.perf_counter()
    sft_cfg = SFTRunConfig(
        model=str(model0),
        dataset=sft_train_file,
        image_root=ds.image_root,
        output_dir=out / "sft",
        seed=cfg.seed,
        epochs=cfg.sft_epochs,
        lr=cfg.sft_lr,
        warmup_steps=cfg.sft_warmup_steps,
        weight_decay=0.0,
        batch_size=cfg.sft_batch_size,
        grad_accum=1,
        max_pixels=cfg.max_pixels,
        freeze_vision=not cfg.train_vision,
        gradient_checkpointing=False,
        save_steps=10**6,
        logging_steps=5,
        resume=False,
        trl_args=quiet,
    )
    bar = _progress_callback("PA-SFT", console, lambda log: f"loss {log['loss']:.3f}" if "loss" in log else "")
    with _trainer_prints_hidden(console):
        sft_model = run_sft(sft_cfg, callbacks=[bar])
    report_stage("sft", sft_model, time.perf_counter() - t0)

    # --- 5. SC-GRPO --------------------------------------------------------------------------------------------
    console.rule("[bold]5/5 SC-GRPO")
    t0 = time.perf_counter()
    grpo_cfg = GRPORunConfig(
        model=str(sft_model),
        dataset=_grpo_file(ds, cfg),
        image_root=ds.image_root,
        output_dir=out / "grpo",
        seed=cfg.seed,
        max_steps=cfg.grpo_steps,
        lr=cfg.grpo_lr,
        batch_size=cfg.grpo_prompts_per_step * cfg.num_generations,
        grad_accum=1,
        num_generations=cfg.num_generations,
        beta=cfg.beta,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        max_pixels=cfg.max_pixels,
        freeze_vision=not cfg.train_vision,
        gradient_checkpointing=False,
        save_steps=10**6,
        logging_steps=1,
        resume=False,
        completions_to_log=4,
        vllm="off",
        trl_args=quiet,
    )
    bar = _progress_callback("SC-GRPO", console, lambda log: f"reward {log['reward']:.2f}" if "reward" in log else "")
    with _trainer_prints_hidden(console):
        grpo_model = run_grpo(grpo_cfg, callbacks=[bar])
    report_stage("grpo", grpo_model, time.perf_counter() - t0)

    # --- Report ------------------------------------------------------------------------------------------------
    report = {
        "stages": stages,
        "vision_warmup": warmup,
        "config": json.loads(cfg.model_dump_json()),
        "data": {"counts": ds.counts, "root": str(ds.root)},
        "models": {"untrained": str(model0), "sft": str(sft_model), "grpo": str(grpo_model)},
        "total_seconds": round(time.perf_counter() - t_all, 1),
    }
    paths = write_report(report, out)
    console.print(before_after_table(report))
    console.print(f"report: {paths['md']}  {paths['html']}  {paths['json']}")
    return report


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def before_after_table(report: dict[str, Any]):
    """The rich table of TABLE_METRICS by stage."""
    from rich.table import Table

    t = Table(title="iadr1 demo: held-out synthetic test images")
    t.add_column("metric")
    for s in report["stages"]:
        t.add_column(s, justify="right")
    for key, label in TABLE_METRICS:
        t.add_row(label, *(_fmt(report["stages"][s].get(key)) for s in report["stages"]))
    return t


def _curves(out: Path, path: Path) -> Path | None:
    """The vision warm-up's held-out accuracy by epoch (when there was one), PA-SFT loss and SC-GRPO reward by
    step, from the runs' logs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        return None
    warm_file = out / "model_warm" / "vision_warmup.json"
    warm = json.loads(warm_file.read_text())["history"] if warm_file.is_file() else []
    fig, axes = plt.subplots(1, 3 if warm else 2, figsize=(15 if warm else 10, 3.5))
    if warm:
        ax, axes = axes[0], axes[1:]
        for key, style in (("accuracy", "-"), ("auroc", "--")):
            pts = [(h["epoch"], h["held_out"][key]) for h in warm if h.get("held_out")]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", label=key)
        ax.set_title("Vision warm-up: the tower alone, held-out")
        ax.set_xlabel("epoch")
        ax.legend()
    for ax, (run, key, label) in zip(
        axes, (("sft", "loss", "PA-SFT training loss"), ("grpo", "reward", "SC-GRPO mean reward")), strict=True
    ):
        f = out / run / "log_history.json"
        logs = json.loads(f.read_text()) if f.is_file() else []
        pts = [(x["step"], x[key]) for x in logs if key in x and "step" in x]
        if key == "reward":
            for sub, style in (("rewards/accuracy/mean", "--"), ("rewards/consistency/mean", ":")):
                sp = [(x["step"], x[sub]) for x in logs if sub in x]
                if sp:
                    ax.plot(*zip(*sp, strict=True), style, label=sub.split("/")[1])
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key)
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        if ax.get_legend_handles_labels()[0]:  # nothing logged (a run without logs): no empty legend
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(report: dict[str, Any], curves: Path | None) -> str:
    st = report["stages"]
    names = list(st)
    lines = ["# iadr1 demo", ""]
    c = report["data"]["counts"]
    lines += [
        f"{c['train']} synthetic training images, {c['test']} held-out test images ({c['test_anomalous']} defective); "
        f"total {report['total_seconds']:.0f} s. `untrained` is the checkpoint PA-SFT starts from"
        + (" (random language model, warmed-up vision tower)." if report.get("vision_warmup") else "."),
        "",
        "## Before / after",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for key, label in TABLE_METRICS:
        lines.append(f"| {label} | " + " | ".join(_fmt(st[s].get(key)) for s in names) + " |")
    warm = report.get("vision_warmup")
    if warm:
        lines += [
            "",
            "## Vision warm-up",
            "",
            f"The tiny model's vision tower was trained on the {warm['train_images']} training images' defect masks "
            f"before PA-SFT ({warm['seconds']:.0f} s; `iadr1.train.vision`)"
            + ("" if report["config"].get("train_vision") else ", then frozen")
            + ". Its own verdict (top image token > 0) on the held-out images, by epoch (epoch 0: the random tower):",
            "",
            "| epoch | loss | accuracy | AUROC |",
            "|---:|---:|---:|---:|",
        ]
        for h in warm["history"]:
            ho = h.get("held_out") or {}
            lines.append(
                f"| {h['epoch']} | {_fmt(h.get('loss'), 3)} | {_fmt(ho.get('accuracy'))} | {_fmt(ho.get('auroc'))} |"
            )
    if curves is not None:
        lines += ["", "## Training curves", "", f"![training curves]({curves.name})"]
    species = sorted({sp for s in names for sp in st[s].get("per_defect_accuracy", {})})
    lines += ["", "## Accuracy per defect type (good = normal images)", ""]
    lines += ["| type | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for sp in species:
        lines.append(f"| {sp} | " + " | ".join(_fmt(st[s]["per_defect_accuracy"].get(sp)) for s in names) + " |")
    lines += ["", "## Sample outputs", ""]
    for s in names:
        lines += [f"### {s}", ""]
        for smp in st[s].get("samples", []):
            lines += [f"- `{smp['image']}` (truth: {smp['truth']}, answer: {smp['answer']})", ""]
            lines += ["  ```", "  " + (smp["output"] or "").replace("\n", "\n  "), "  ```", ""]
    return "\n".join(lines) + "\n"


def _html(markdown: str) -> str:
    """A self-contained HTML page of the markdown report (tables, headings, code, one image)."""
    import html

    body: list[str] = []
    table: list[str] = []
    in_code = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(raw[2:] if raw.startswith("  ") else raw))
            continue
        if line.startswith("|"):
            cells = [x.strip() for x in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-:"):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{html.escape(x)}</{tag}>" for x in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<img src="{html.escape(src)}" style="max-width:100%">')
        elif line:
            body.append(f"<p>{html.escape(line.lstrip('- '))}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}td,th{padding:2px 8px;border:1px solid #ccc}"
    return f"<!doctype html><meta charset=utf-8><title>iadr1 demo</title><style>{style}</style>" + "\n".join(body)


def write_report(report: dict[str, Any], out: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, curves.png, report.md and report.html into `out`; returns their paths."""
    from iadr1.data.io import atomic_write_json, atomic_write_text

    out = Path(out)
    curves = _curves(out, out / "curves.png")
    md = _markdown(report, curves)
    paths = {
        "json": atomic_write_json(out / "report.json", report, indent=2),
        "md": atomic_write_text(out / "report.md", md),
        "html": atomic_write_text(out / "report.html", _html(md)),
    }
    if curves is not None:
        paths["curves"] = curves
    return paths


def summary_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{stage: {metric: value}} of TABLE_METRICS only (for docs and tests)."""
    return {s: {k: m.get(k) for k, _ in TABLE_METRICS} for s, m in report["stages"].items()}


__all__ = ["QUICK", "STAGES", "DemoConfig", "before_after_table", "run_demo", "summary_rows", "write_report"]
