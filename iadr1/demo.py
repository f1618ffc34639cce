"""The end-to-end demo behind `iadr1 demo`: synthetic data -> tiny model -> vision warm-up -> PA-SFT -> SC-GRPO,
evaluated after each stage on held-out images, with a report. A composition of the library's public functions:

    from iadr1.demo import DemoConfig, run_demo
    report = run_demo(DemoConfig(out="demo_out"))   # ~7 min wall on 2 cores (docs/demo.md)
    report["stages"]["sft"]["balanced_accuracy"]

Steps (each writes into `out`):

1. `data/`: the synthetic benchmark (`iadr1.data.synthetic.make_dataset`), train and held-out test images.
2. `model_untrained/`: a random tiny Qwen3-VL (`iadr1.models.tiny.build_tiny`, 7 px patches; its tower's absolute
   position embeddings let a token say where it is) whose tokenizer is also trained on the training answers (so
   they take few tokens); `model_warm/`: the same with its vision tower warmed up on the training masks and
   defect folders (`iadr1.train.vision`: that, what and where; the stand-in for a pretrained encoder). Or the
   checkpoint given as `model`, used as it is.
3. `eval_untrained/`, `eval_sft/`, `eval_grpo/`: `iadr1.infer` (transformers, greedy) on the test images, scored
   and written by `iadr1.eval` (metrics.json, accuracy.csv, plots, report.html beside predictions.jsonl).
4. `sft/`: PA-SFT (`iadr1.train.sft.run_sft`); `grpo/`: SC-GRPO (`iadr1.train.grpo.run_grpo`) from the SFT
   model, both with the packaged recipe `demo` (`iadr1/train/recipes/demo/`, what `iadr1 sft --recipe demo`
   runs); `DemoConfig.sft` / `.grpo` override it.
5. `report.json` (with `interpretation_gain`: SC-GRPO's change of the mean of type and location accuracy and its
   standard error), `report.md`, `report.html`, `curves.png`.

The core draws nothing: `run_demo` reports progress through `on_progress(task, done, total, info)` and its
one-line results through `on_message(text)`; `iadr1 demo` passes callbacks that draw (iadr1/cli/_progress.py).

The demo preset departs from the published recipe where a random tiny model on a CPU needs it (docs/demo.md has
the measurements): the vision warm-up, salient defects of the six kinds a tiny tower can see, one-line
verdict-first reasoning, the `demo` training recipe (far higher learning rates), and SC-GRPO asks the PA-SFT
question (`prompts.user_text(0)`) instead of the published GRPO preamble, which a tiny model never saw.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iadr1.errors import ConfigError

if TYPE_CHECKING:
    from iadr1.data.synthetic import SyntheticDataset
    from iadr1.eval.pipeline import EvalResult
    from iadr1.infer.runner import InferenceSummary
    from iadr1.train.config import GRPORunConfig, SFTRunConfig

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
# Training options the demo sets itself (one image size for the warm-up, training and inference; its own paths),
# so `DemoConfig.sft` / `.grpo` may not override them.
_DEMO_OWNED = frozenset({"stage", "model", "dataset", "image_root", "output_dir", "max_pixels"})

# `on_progress(task, done, total, info)`: task names a bar, `info` is a short text (the latest loss, say).
OnProgress = Callable[[str, int, int | None, str], None]
OnMessage = Callable[[str], None]


class DemoConfig(BaseModel):
    """Every knob of the demo: data, model, warm-up and evaluation here; the training stages are the `demo`
    recipe, overridden by `sft` / `grpo`. The defaults are the measured demo preset (docs/demo.md); `QUICK`
    shrinks it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    out: Path = Field(Path("demo_out"), description="Output folder (must not hold an earlier demo's data).")
    model: Path | None = Field(None, description="Start from this checkpoint instead of a random tiny one.")
    seed: int = Field(0, description="Seed of the data, the model and training.")
    # --- data -------------------------------------------------------------------------------------------------
    n_train: int = Field(6000, description="Synthetic training images (half defective).")
    n_test: int = Field(
        400, description="Held-out test images (half defective): 200 defective ones judge type and location."
    )
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
    sft_images: int | None = Field(
        None,
        description="PA-SFT records drawn (seeded) for one pass; None: all (the language model needs ~3000 defective "
        "answers to learn to read where the defect is: docs/demo.md).",
    )
    grpo_prompt: Literal["sft", "published"] = Field(
        "sft", description="sft: ask the PA-SFT question in SC-GRPO too; published: the paper's GRPO preamble."
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
    family: str = Field(
        "qwen3_vl",
        description="Tiny model family. qwen3_vl: its tower's absolute position embeddings let each image token say "
        "where it is (docs/demo.md). The vision warm-up and the vision_* / patch_size options need a Qwen family's "
        "patch grid; with another family (llava*, internvl) the demo runs without them (a random tower: it shows "
        "the pipeline, not the method's gains).",
    )

    @field_validator("family")
    @classmethod
    def _tiny_family(cls, v: str) -> str:
        from iadr1.models.tiny import TINY_FAMILIES

        if v not in TINY_FAMILIES:
            raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}; got {v!r}")
        return v

    hidden_size: int = 256
    num_layers: int = 4
    vocab_size: int = 2000
    vision_depth: int = Field(2, description="Vision tower blocks.")
    vision_dim: int = Field(64, description="Vision tower width.")
    patch_size: int = Field(7, description="Vision patch side in pixels (96 px images: 14 x 14 patches, 49 tokens).")
    max_pixels: int = Field(112 * 112, description="Image pixel cap of the warm-up, both training stages, inference.")
    # --- vision warm-up (iadr1.train.vision; the stand-in for a pretrained vision encoder) -------------------
    warmup_epochs: int = Field(4, ge=0, description="Epochs of the vision warm-up on the training masks; 0: none.")
    warmup_lr: float = 1e-3
    # --- PA-SFT and SC-GRPO: a packaged recipe, then overrides ------------------------------------------------
    recipe: str = Field("demo", description="Training recipe of both stages (iadr1/train/recipes/NAME/).")
    sft: dict[str, Any] = Field(
        default_factory=dict, description="PA-SFT options over the recipe (`iadr1 sft` names: {'lr': 2e-3})."
    )
    grpo: dict[str, Any] = Field(
        default_factory=dict, description="SC-GRPO options over the recipe (`iadr1 grpo` names: {'max_steps': 40})."
    )

    @field_validator("sft", "grpo")
    @classmethod
    def _not_demo_owned(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(_DEMO_OWNED & set(v))
        if owned:
            raise ValueError(f"{', '.join(owned)}: set by the demo itself (max_pixels: DemoConfig.max_pixels)")
        return v

    # --- evaluation -------------------------------------------------------------------------------------------
    infer_batch_size: int = 24
    max_new_tokens: int = 64
    samples: int = Field(6, description="Sample outputs per stage shown in the report.")


QUICK: dict[str, Any] = {
    # The shortened demo of the test suite (~115 s on 2 free cores): the same model and design on a third of the
    # images, one PA-SFT pass over all of them, two SC-GRPO steps of 1 prompt x G = 8. It learns the decision and
    # the kind (docs/demo.md: balanced accuracy 0 -> 82.8 after PA-SFT and SC-GRPO, type 76.2, location 28.6 of
    # the defects found among 64 held-out images: 2000 answers are too few to learn to read the location).
    "n_train": 2000,
    "n_test": 64,
    "warmup_epochs": 4,
    "sft_images": None,
    "grpo": {"max_steps": 2, "batch_size": 8},
    "infer_batch_size": 64,
    "samples": 4,
}


# ------------------------------------------------------------------------------------------------------------
# Progress: reported through callbacks (the CLI draws)
# ------------------------------------------------------------------------------------------------------------
def _no_progress(task: str, done: int, total: int | None, info: str) -> None:
    return None


def _trainer_progress(task: str, on_progress: OnProgress, info_of: Callable[[dict[str, float]], str]) -> Any:
    """A transformers TrainerCallback that reports each optimizer step, with the latest logged figures
    (`info_of(logs)`), to `on_progress`."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        info = ""

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
            on_progress(task, 0, state.max_steps, self.info)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            on_progress(task, state.global_step, state.max_steps, self.info)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            self.info = info_of(logs or {}) or self.info  # the run's closing summary has no loss: keep the last
            on_progress(task, state.global_step, state.max_steps, self.info)

    return _Progress()


@contextlib.contextmanager
def _trainer_prints_hidden() -> Iterator[None]:
    """Hide what the trainers print on stdout (transformers prints every log dict when its tqdm bar is off). A
    drawing callback must write to a stream it holds (the CLI's console is pinned to the real stdout)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# ------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------
def _corpus_from(sft_file: Path, limit: int = 1000) -> list[str]:
    """The assistant answers of the first `limit` PA-SFT records (the tokenizer's extra corpus)."""
    from iadr1.data.io import read_json

    return [r["messages"][-1]["content"] for r in read_json(sft_file)[:limit]]


_NOUNS = {"brick": "Brick wall", "grass": "Grass", "gravel": "Gravel", "coins": "Coin"}


def short_reasoning(image: str, answer: str) -> str:
    """The demo's one-line reasoning for a PA-SFT answer: the verdict comes first, so that the image decides the
    third or fourth token of the completion instead of one token among ~115 (docs/demo.md: why).

    `<think>Gravel: no defect.</think><answer>No</answer>` or
    `<think>Gravel: hole at the top left.</think><location>top left</location><type>Hole</type><answer>Yes</answer>`
    """
    from iadr1.answers import parse
    from iadr1.data.build import assistant_text

    cls = image.split("/")[1] if image.count("/") >= 2 else ""
    noun = _NOUNS.get(cls, "Surface")
    a = parse(answer)
    if a.answer != "yes" or not a.location or not a.type:
        return assistant_text(f"{noun}: no defect.", anomalous=False)
    where = "in the center" if a.location == "center" else f"at the {a.location}"
    return assistant_text(f"{noun}: {a.type.lower()} {where}.", True, a.location, a.type)


def _sft_file(ds: SyntheticDataset, cfg: DemoConfig) -> Path:
    """The PA-SFT records, with the short reasoning when `cfg.reasoning == "short"`."""
    if cfg.reasoning == "full":
        return Path(ds.sft_file)
    from iadr1.data.io import atomic_write_json, read_json

    recs = read_json(ds.sft_file)
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

    from iadr1.data.io import atomic_write_json, read_json

    recs = read_json(sft_file)
    if cfg.sft_images >= len(recs):
        return sft_file
    picked = random.Random(cfg.seed).sample(recs, cfg.sft_images)
    return atomic_write_json(sft_file.with_name(f"{sft_file.stem}_{cfg.sft_images}.json"), picked, indent=1)


def _grpo_file(ds: SyntheticDataset, cfg: DemoConfig) -> Path:
    """The SC-GRPO records, with the PA-SFT question as the problem when `grpo_prompt == "sft"`."""
    if cfg.grpo_prompt == "published":
        return Path(ds.grpo_file)
    from iadr1.data.io import atomic_write_json, read_json
    from iadr1.prompts import user_text

    recs = read_json(ds.grpo_file)
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


# ------------------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------------------
def _warm_up(
    model: Path, cfg: DemoConfig, ds: SyntheticDataset, on_progress: OnProgress, on_message: OnMessage
) -> tuple[Path, dict[str, Any]]:
    """The vision warm-up (`iadr1.train.vision`) of a freshly built tiny model on the training images' masks,
    scored on the held-out test images after every epoch (reported, never used to choose anything)."""
    from iadr1.train.vision import VisionWarmupConfig, masked_images, warm_up_vision

    train = masked_images(ds.meta, ds.image_root, split="train")
    held = masked_images(ds.meta, ds.image_root, split="test")
    wcfg = VisionWarmupConfig(epochs=cfg.warmup_epochs, lr=cfg.warmup_lr, max_pixels=cfg.max_pixels, seed=cfg.seed)
    on_progress("vision warm-up", 0, cfg.warmup_epochs, f"{len(train)} images")

    def on_epoch(epoch: int, stats: dict[str, Any]) -> None:
        h = stats.get("held_out") or {}
        info = f"loss {stats['loss']:.3f}, held-out accuracy {_fmt(h.get('accuracy'))}, AUROC {_fmt(h.get('auroc'))}"
        on_progress("vision warm-up", epoch, cfg.warmup_epochs, info)

    result = warm_up_vision(model, train, cfg.out / "model_warm", wcfg, held_out=held, on_epoch=on_epoch)
    final = result["final"] or {}
    on_message(
        f"vision warm-up: {result['train_images']} images x {cfg.warmup_epochs} epochs in {result['seconds']} s; "
        f"the tower alone (top token > 0) on held-out images: accuracy {_fmt(final.get('accuracy'))}, "
        f"AUROC {_fmt(final.get('auroc'))}"
    )
    return Path(result["model"]), result


# ------------------------------------------------------------------------------------------------------------
# Training: the `demo` recipe
# ------------------------------------------------------------------------------------------------------------
def training_config(
    stage: Literal["sft", "grpo"],
    cfg: DemoConfig,
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    image_root: str | os.PathLike,
) -> SFTRunConfig | GRPORunConfig:
    """The run config of a training stage, as `iadr1 sft|grpo --recipe demo` builds it: the recipe `cfg.recipe`,
    the demo's seed, the overrides `cfg.sft` / `cfg.grpo`, then what the demo fixes (paths, `cfg.max_pixels`,
    one use of the output folder, no intermediate checkpoints, no tqdm bars)."""
    from iadr1.train.config import GRPORunConfig, SFTRunConfig, load_config

    user = cfg.sft if stage == "sft" else cfg.grpo
    overrides = {
        "model": str(model),
        "dataset": dataset,
        "image_root": image_root,
        "output_dir": cfg.out / stage,
        "max_pixels": cfg.max_pixels,
        "resume": False,
        "save_steps": 10**6,  # the final model is saved; a checkpoint on the way would only cost time
        "trl_args": {**user.get("trl_args", {}), "disable_tqdm": True},  # progress goes through on_progress
    }
    cls = SFTRunConfig if stage == "sft" else GRPORunConfig
    # the user's options are explicit values (a None among them is kept: {"save_total_limit": None}), the demo's win
    return load_config(cls, recipe=cfg.recipe, settings={"seed": cfg.seed, **user}, overrides=overrides)


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------
def per_defect_accuracy(result: EvalResult) -> dict[str, float]:
    """Accuracy (%) per defect kind of the test images ("good": the normal ones), sorted by kind: eval's
    per-specie metric (`iadr1.eval.pipeline.per_specie`) for the demo's one dataset."""
    from iadr1.eval.pipeline import per_specie

    # evaluate() stores the per-specie results with each dataset; a result built otherwise is scored here.
    stored = {ds: d["species"] for ds, d in result.datasets.items() if "species" in d}
    rows = {sp: d for per_dataset in (stored or per_specie(result)).values() for sp, d in per_dataset.items()}
    return {sp: round(rows[sp]["accuracy"], 1) for sp in sorted(rows)}


def _samples(result: EvalResult, keys: list[str]) -> list[dict[str, Any]]:
    """The replies to the test images `keys`: image, its defect kind, the answer (`iadr1.answers.parse`), the
    full output."""
    from iadr1.answers import parse
    from iadr1.data.keys import folder_specie

    at = {image: i for i, image in enumerate(result.gt.images)}
    out = []
    for k in keys:
        if k in at:
            raw = result.matched.raw(at[k])
            out.append({"image": k, "truth": folder_specie(k) or "unknown", "answer": parse(raw).answer, "output": raw})
    return out


def evaluate_stage(
    name: str,
    model: Path,
    cfg: DemoConfig,
    ds: SyntheticDataset,
    sample_keys: list[str],
    on_progress: OnProgress = _no_progress,
) -> dict[str, Any]:
    """Answer every test image with `model` (`iadr1.infer`, transformers, greedy) into `cfg.out/eval_<name>/`,
    score it and write eval's outputs there (`iadr1.eval`); returns the metrics, per-defect accuracy and sample
    outputs."""
    return _evaluate_stage(name, model, cfg, ds, sample_keys, on_progress)[0]


def answer_test_images(
    model: str | os.PathLike,
    cfg: DemoConfig,
    test_file: str | os.PathLike,
    image_root: str | os.PathLike,
    out: str | os.PathLike,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> InferenceSummary:
    """`model`'s answers to the test images as the demo scores a stage (`iadr1.infer`, transformers, greedy, the
    demo's batch size, token and image caps, its seed) into `out/predictions.jsonl`; returns infer's summary."""
    from iadr1.infer import run_inference

    return run_inference(
        model=str(model),
        test_file=test_file,
        image_root=image_root,
        out=out,
        backend="transformers",
        batch_size=cfg.infer_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        max_pixels=cfg.max_pixels,
        seed=cfg.seed,
        on_record=on_record,
    )


def _evaluate_stage(
    name: str,
    model: Path,
    cfg: DemoConfig,
    ds: SyntheticDataset,
    sample_keys: list[str],
    on_progress: OnProgress,
) -> tuple[dict[str, Any], EvalResult]:
    """`evaluate_stage`, and eval's result (per-image type and location verdicts for `interpretation_gain`)."""
    from iadr1.eval.pipeline import evaluate
    from iadr1.eval.report import write_all

    out = cfg.out / f"eval_{name}"
    task, total, answered = f"eval {name}", ds.counts.get("test"), 0

    def on_record(rec: dict[str, Any]) -> None:
        nonlocal answered
        answered += 1
        on_progress(task, answered, total, "")

    t0 = time.perf_counter()
    summary = answer_test_images(model, cfg, ds.test_file, ds.image_root, out, on_record)
    result = evaluate([ds.test_file], [summary.predictions], annotations=[ds.annotations], n_boot=0, name=name)
    metrics = dict(next(iter(result.datasets.values())))
    metrics.pop("classes", None)
    metrics["per_defect_accuracy"] = per_defect_accuracy(result)
    metrics["samples"] = _samples(result, sample_keys)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    write_all(result, out, image_root=ds.image_root)  # as `iadr1 eval --out eval_<name>` writes it
    return metrics, result


def interpretation_gain(
    test_file: str | os.PathLike,
    annotations: str | os.PathLike,
    before: str | os.PathLike,
    after: str | os.PathLike,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The gain in *interpretation* from the predictions file `before` to `after` (the same test images): the
    mean of type and location accuracy, each as eval judges it (on the defective images the stage found), after
    minus before, with its bootstrap standard error (test images drawn with replacement, the same draw for
    both stages, so the error is that of the paired difference).

    Returns `{"before", "after", "gain", "standard_error", "type_gain", "location_gain", "n_boot"}` (points)."""
    from iadr1.eval.pipeline import evaluate

    res = [evaluate([test_file], [p], annotations=[annotations], n_boot=0) for p in (before, after)]
    if res[0].gt.images != res[1].gt.images:
        raise ConfigError(f"{before} and {after}: not the same test images")
    return _gain(res[0], res[1], n_boot, seed)


def _gain(before: EvalResult, after: EvalResult, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """`interpretation_gain` from eval's results of the two stages on the same test images."""
    import numpy as np

    res = (before, after)
    loc = np.stack([r.location_ok for r in res])  # (2, images), NaN where not judged
    typ = np.stack([r.type_ok for r in res])

    def score(weights: np.ndarray) -> np.ndarray:
        """Type, location and their mean per stage under per-image `weights` (draws x images)."""

        def acc(ok: np.ndarray) -> np.ndarray:  # (draws, 2)
            judged = ~np.isnan(ok)
            right = np.where(judged, ok, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return 100 * (weights @ right.T) / (weights @ judged.T)

        t, lo = acc(typ), acc(loc)
        return np.stack([t, lo, (t + lo) / 2])  # (3, draws, 2)

    point = score(np.ones((1, loc.shape[1])))[:, 0]  # (3, 2)
    rng = np.random.default_rng(seed)
    n = loc.shape[1]
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(float)
    boot = score(draws)
    diff = boot[2, :, 1] - boot[2, :, 0]
    diff = diff[~np.isnan(diff)]

    def r(x: float) -> float | None:
        return None if np.isnan(x) else round(float(x), 2)

    return {
        "before": r(point[2, 0]),
        "after": r(point[2, 1]),
        "gain": r(point[2, 1] - point[2, 0]),
        "standard_error": r(diff.std(ddof=1)) if len(diff) > 1 else None,
        "type_gain": r(point[0, 1] - point[0, 0]),
        "location_gain": r(point[1, 1] - point[1, 0]),
        "n_boot": n_boot,
    }


# ------------------------------------------------------------------------------------------------------------
# The demo
# ------------------------------------------------------------------------------------------------------------
_STEPS = ("synthetic data", "model and vision warm-up", "untrained model on held-out images", "PA-SFT", "SC-GRPO")


def run_demo(
    cfg: DemoConfig, on_progress: OnProgress | None = None, on_message: OnMessage | None = None
) -> dict[str, Any]:
    """Run the whole demo (module docstring) and return the report (also written to `cfg.out/report.json`).

    `on_progress(task, done, total, info)` is called as each task advances (the task "iadr1 demo" counts the
    five steps, `info` naming the current one); `on_message(text)` gets a line per result. Both default to
    nothing.
    """
    from transformers.utils import logging as hf_logging

    from iadr1.data.synthetic import make_dataset
    from iadr1.models.tiny import build_tiny
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    progress = on_progress or _no_progress
    say = on_message or (lambda text: None)
    out = Path(cfg.out)
    if (out / "data").exists():
        raise ConfigError(f"{out}: holds an earlier demo; choose a new --out folder or remove it")
    for stage in ("sft", "grpo"):  # a bad training option fails now, not after the data and the warm-up
        training_config(stage, cfg, "model", "records.json", "images")
    hf_logging.disable_progress_bar()  # "Loading weights" bars for each of the many model loads
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}
    results: dict[str, EvalResult] = {}  # eval's result of each stage (per-image verdicts for the gain)
    warmup: dict[str, Any] | None = None

    def step(i: int) -> None:
        progress("iadr1 demo", i, len(_STEPS), _STEPS[i] if i < len(_STEPS) else "report")

    # --- 1. Data -----------------------------------------------------------------------------------------------
    step(0)
    t0 = time.perf_counter()
    ds = make_dataset(
        out / "data",
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        size=cfg.size,
        seed=cfg.seed,
        contrast=cfg.contrast,
        scale=cfg.scale,
        defects=cfg.defects,
        on_progress=lambda task, done, total: progress(task, done, total, ""),
    )
    say(f"data: {ds.counts} in {time.perf_counter() - t0:.1f} s -> {ds.root}")
    sft_file = _sft_file(ds, cfg)
    sft_train_file = _sft_subset(sft_file, cfg)

    # --- 2. Model ----------------------------------------------------------------------------------------------
    step(1)
    if cfg.model is not None:
        model0 = Path(cfg.model)
        if not (model0 / "config.json").is_file():
            raise ConfigError(f"--model {model0}: not a checkpoint folder (no config.json)")
    else:
        from iadr1.models.registry import get_family

        patch_grid = get_family(cfg.family).dynamic_resolution  # the Qwen families: the warm-up's token grid
        vision = {"vision_depth": cfg.vision_depth, "vision_dim": cfg.vision_dim, "patch_size": cfg.patch_size}
        model0 = build_tiny(
            cfg.family,
            out / "model_untrained",
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            vocab_size=cfg.vocab_size,
            seed=cfg.seed,
            corpus=_corpus_from(sft_file),
            **(vision if patch_grid else {}),
        )
        if cfg.warmup_epochs and not patch_grid:
            say(f"vision warm-up: skipped (it needs a Qwen family's patch grid; {cfg.family} keeps a random tower)")
        elif cfg.warmup_epochs:
            model0, warmup = _warm_up(model0, cfg, ds, progress, say)
    say(f"model: {model0}")
    samples = _sample_keys(ds.test_file, cfg.samples)

    def report_stage(name: str, model: Path, train_seconds: float) -> None:
        m, results[name] = _evaluate_stage(name, model, cfg, ds, samples, progress)
        m["train_seconds"] = round(train_seconds, 1)
        m["seconds"] = round(train_seconds + m["eval_seconds"], 1)
        stages[name] = m
        say(
            f"{name}: balanced accuracy {_fmt(m['balanced_accuracy'])}, consistency {_fmt(m['consistency_rate'])}, "
            f"F1 {_fmt(m['f1'])} ({m['seconds']} s)"
        )

    # --- 3. Untrained ------------------------------------------------------------------------------------------
    step(2)
    report_stage("untrained", model0, 0.0)

    # --- 4. PA-SFT ---------------------------------------------------------------------------------------------
    step(3)
    t0 = time.perf_counter()
    sft_cfg = training_config("sft", cfg, model0, sft_train_file, ds.image_root)
    bar = _trainer_progress("PA-SFT", progress, lambda log: f"loss {log['loss']:.3f}" if "loss" in log else "")
    with _trainer_prints_hidden():
        sft_model = run_sft(sft_cfg, callbacks=[bar])
    report_stage("sft", sft_model, time.perf_counter() - t0)

    # --- 5. SC-GRPO --------------------------------------------------------------------------------------------
    step(4)
    t0 = time.perf_counter()
    grpo_cfg = training_config("grpo", cfg, sft_model, _grpo_file(ds, cfg), ds.image_root)
    bar = _trainer_progress("SC-GRPO", progress, lambda log: f"reward {log['reward']:.2f}" if "reward" in log else "")
    with _trainer_prints_hidden():
        grpo_model = run_grpo(grpo_cfg, callbacks=[bar])
    report_stage("grpo", grpo_model, time.perf_counter() - t0)
    gain = _gain(results["sft"], results["grpo"])  # the stages' own scoring: nothing read again
    say(
        f"SC-GRPO over PA-SFT: mean of type and location accuracy {_fmt(gain['before'])} -> {_fmt(gain['after'])} "
        f"({_signed(gain['gain'])} +- {_fmt(gain['standard_error'])} points; type {_signed(gain['type_gain'])}, "
        f"location {_signed(gain['location_gain'])})"
    )

    # --- Report ------------------------------------------------------------------------------------------------
    step(5)
    report = {
        "stages": stages,
        "interpretation_gain": gain,
        "vision_warmup": warmup,
        "config": cfg.model_dump(mode="json"),
        "training": {"sft": sft_cfg.model_dump(mode="json"), "grpo": grpo_cfg.model_dump(mode="json")},
        "data": {"counts": ds.counts, "root": str(ds.root)},
        "models": {"untrained": str(model0), "sft": str(sft_model), "grpo": str(grpo_model)},
        "total_seconds": round(time.perf_counter() - t_all, 1),
    }
    paths = write_report(report, out)
    say(f"report: {paths['md']}  {paths['html']}  {paths['json']}")
    return report


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _signed(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def summary_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{stage: {metric: value}} of TABLE_METRICS only (the before/after table; docs and tests)."""
    return {s: {k: m.get(k) for k, _ in TABLE_METRICS} for s, m in report["stages"].items()}


def _curves(report: dict[str, Any], path: Path) -> Path | None:
    """The vision warm-up's held-out accuracy by epoch (when there was one), PA-SFT loss and SC-GRPO reward by
    step (the total, each reward, and the share of groups with zero reward spread), from the report and the
    training runs' logs (`log_history.json` beside each model)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        return None
    from iadr1.data.io import read_json

    warm = (report.get("vision_warmup") or {}).get("history") or []
    fig, axes = plt.subplots(1, 3 if warm else 2, figsize=(15 if warm else 10, 3.5))
    if warm:
        ax, axes = axes[0], axes[1:]
        for key, style in (("accuracy", "-"), ("auroc", "--"), ("kind_accuracy", ":"), ("position_accuracy", "-.")):
            pts = [(h["epoch"], h["held_out"][key]) for h in warm if (h.get("held_out") or {}).get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", label=key)
        ax.set_title("Vision warm-up: the tower alone, held-out")
        ax.set_xlabel("epoch")
        ax.legend()
    for ax, (run, key, label) in zip(
        axes, (("sft", "loss", "PA-SFT training loss"), ("grpo", "reward", "SC-GRPO mean reward")), strict=True
    ):
        f = Path(report["models"][run]) / "log_history.json"
        logs = read_json(f) if f.is_file() else []
        pts = [(x["step"], x[key]) for x in logs if key in x and "step" in x]
        if key == "reward":
            # Each reward, and the share of groups whose completions all scored alike (zero advantage: no signal).
            subs = sorted({k for x in logs for k in x if k.startswith("rewards/") and k.endswith("/mean")})
            for sub, style in zip(subs, ("--", ":", "-.") * len(subs), strict=False):
                sp = [(x["step"], x[sub]) for x in logs if sub in x]
                ax.plot(*zip(*sp, strict=True), style, label=sub.split("/")[1])
            zero = [(x["step"], x["frac_reward_zero_std"]) for x in logs if "frac_reward_zero_std" in x]
            if zero:
                ax.plot(*zip(*zero, strict=True), color="grey", alpha=0.6, label="zero-spread share")
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
    gain = report.get("interpretation_gain")
    if gain:
        lines += [
            "",
            f"Interpretation (the mean of type and location accuracy, on the defective images each stage found): "
            f"{_fmt(gain['before'])} after PA-SFT, {_fmt(gain['after'])} after SC-GRPO, a gain of "
            f"{_signed(gain['gain'])} points (bootstrap standard error {_fmt(gain['standard_error'])}; type "
            f"{_signed(gain['type_gain'])}, location {_signed(gain['location_gain'])}).",
        ]
    lines += [
        "",
        "Each stage's evaluation, as `iadr1 eval` writes it (metrics.json, accuracy.csv, plots, the misjudged "
        "images): " + ", ".join(f"[{s}](eval_{s}/report.html)" for s in names) + ".",
    ]
    warm = report.get("vision_warmup")
    if warm:
        frozen = (report.get("training") or {}).get("sft", {}).get("freeze_vision", True)
        lines += [
            "",
            "## Vision warm-up",
            "",
            f"The tiny model's vision tower was trained on the {warm['train_images']} training images' defect masks "
            + ("and kinds " if warm.get("kinds") else "")
            + f"before PA-SFT ({warm['seconds']:.0f} s; `iadr1.train.vision`)"
            + (", then frozen" if frozen else "")
            + ". Its own verdict (top image token > 0) on the held-out images, by epoch (epoch 0: the random tower); "
            "kind: the top token names the defect kind; position: each token names its own 3x3 cell:",
            "",
            "| epoch | loss | accuracy | AUROC | kind | position |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for h in warm["history"]:
            ho = h.get("held_out") or {}
            cells = [_fmt(h.get("loss"), 3)] + [
                _fmt(ho.get(k)) for k in ("accuracy", "auroc", "kind_accuracy", "position_accuracy")
            ]
            lines.append(f"| {h['epoch']} | " + " | ".join(cells) + " |")
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
    """The markdown report as one HTML page. markdown-it-py is the renderer rich itself uses (a dependency of
    rich); raw HTML in the text (a model's output) is shown, never interpreted."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}td,th{padding:2px 8px;border:1px solid #ccc}"
    return f"<!doctype html><meta charset=utf-8><title>iadr1 demo</title><style>{style}</style>\n{body}"


def write_report(report: dict[str, Any], out: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, curves.png, report.md and report.html into `out` from `report` (and the training
    logs beside its models); returns their paths."""
    from iadr1.data.io import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = _curves(report, out / "curves.png")
    md = _markdown(report, curves)
    paths = {
        "json": atomic_write_json(out / "report.json", report, indent=2),
        "md": atomic_write_text(out / "report.md", md),
        "html": atomic_write_text(out / "report.html", _html(md)),
    }
    if curves is not None:
        paths["curves"] = curves
    return paths


__all__ = [
    "QUICK",
    "STAGES",
    "TABLE_METRICS",
    "DemoConfig",
    "answer_test_images",
    "evaluate_stage",
    "interpretation_gain",
    "per_defect_accuracy",
    "run_demo",
    "summary_rows",
    "training_config",
    "write_report",
]
