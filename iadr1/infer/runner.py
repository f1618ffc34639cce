"""The resumable inference run behind `iadr1 infer` and `iadr1.infer.run_inference`.

One JSON line per test image is appended (and fsynced) to the predictions file as each result arrives, so:

- a rerun with the same options resumes: images already answered are skipped, nothing is written twice;
  images recorded with an `error` (unreadable file, API failure) are tried again, their old line removed first;
- a run killed with SIGKILL loses at most the lines in flight (a torn last line is cut on the next open);
- an unreadable or missing image (query or reference) is recorded with `error` and never stops the run;
- a folder holding predictions made with other answer-changing settings is refused (iadr1/infer/manifest.py),
  unless `overwrite` starts over.

Trivial mistakes (a missing model folder, image root or test file, a bad option) are found before torch,
transformers or vLLM are imported (`check_inputs`), so they cost a fraction of a second, not a model load.

Shards (`shard`, `num_shards`) split one test set for a cluster job array: shard I takes every N-th image
starting at I (after `limit`), and writes `predictions.shard{I}of{N}.jsonl`, so that N jobs can share one
output folder; `iadr1 eval` takes all the shard files at once.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iadr1.answers import parse, parse_choice
from iadr1.data.io import JsonlAppender, atomic_write_jsonl, check_image, file_sha256, iter_jsonl
from iadr1.data.io import resolve_under as _resolve_under
from iadr1.data.perturb import canonical as _canonical_perturb
from iadr1.data.perturb import parse_all as _parse_perturb
from iadr1.data.schemas import (
    ANOMALY_LETTER,
    DETECTION_TYPE,
    NORMAL_LETTER,
    UNANSWERED_LETTER,
    Conversation,
    Prediction,
    TestEntry,
    load_test_file,
)
from iadr1.errors import ConfigError, DataError
from iadr1.infer.base import Backend, GenerationOptions, Request, Result
from iadr1.infer.manifest import WEIGHT_PATTERNS, check_folder, manifest_path, model_weights, now, run_settings
from iadr1.infer.manifest import write_manifest as _write_manifest
from iadr1.infer.prefetch import prefetch, resolve_workers
from iadr1.models.registry import family_of
from iadr1.prompts import GRAMMAR_SYSTEM_PROMPT, PromptStyle, inference_segments, mmad_question_text
from iadr1.ranking import decision_score, threshold_decision

BackendName = Literal["vllm", "transformers", "openai"]
MAX_IMAGES_PER_PROMPT = 10  # the published inference allowed up to 10 images per prompt


class InferConfig(BaseModel):
    """Every option of an inference run (CLI flags, YAML keys and `run_inference` keyword arguments alike)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="Checkpoint folder (vllm, transformers) or model name (openai).")
    test_file: Path = Field(description="Benchmark test file (MMAD style JSON).")
    image_root: Path = Field(description="Folder that the test file's image paths are relative to.")
    out: Path = Field(description="Output folder for predictions*.jsonl and the run manifest.")
    backend: BackendName = Field("transformers", description="vllm, transformers or openai.")
    shots: int = Field(0, ge=0, le=MAX_IMAGES_PER_PROMPT - 1, description="K normal reference images per prompt.")
    # `templates` and `system_prompt` were the names until 0.2 (a count in convert, a text in training): still read.
    template_kind: Literal["random", "similar"] = Field(
        "random",
        validation_alias=AliasChoices("template_kind", "templates"),
        description="Where the K references come from: the test file's random or similar templates.",
    )
    prompt_style: PromptStyle = Field(
        "iadr1", description="iadr1 (trained, tags), baseline (yes/no), api, anomaly_r1 (letter)."
    )
    grammar_prompt: bool = Field(
        False,
        validation_alias=AliasChoices("grammar_prompt", "system_prompt"),
        description="Add the system prompt stating the output grammar (off as published).",
    )
    task: Literal["detect", "mmad"] = Field(
        "detect",
        description="detect: the anomaly-detection question of each image (IAD-R1). mmad: every question of each "
        "image (MMAD's multiple choice, one request per question; docs/infer.md).",
    )
    limit: int | None = Field(None, ge=1, description="Only the first N images of the test file.")
    shard: int = Field(0, ge=0, description="This job's shard index I (0-based): every N-th image from I.")
    num_shards: int = Field(1, ge=1, description="Number of shards N.")
    max_new_tokens: int | None = Field(None, ge=1, description="Default 512 (openai: 600, as published).")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling (when temperature > 0).")
    seed: int = Field(0, description="Seed of sampling and of the back-off jitter.")
    logprobs: bool | None = Field(None, description="Record P(yes) and P(defect). Default: on for vllm/transformers.")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Also call each image at this decision score (P(defect), else P(yes)): defective when the "
        "score >= T; recorded as `decision` beside the bare answer.",
    )
    perturb: list[str] = Field(
        default_factory=list,
        description="Perturb every image (query and references) before the model sees it, in order, at its own "
        "size: lowlight:SCALE,OFFSET (0.6,-10), blur:K (12), jpeg:Q, noise:SIGMA (seeded by --seed); repeatable.",
    )
    image_workers: int | None = Field(
        None,
        ge=0,
        description="vllm, transformers: threads that check, decode and resize images ahead of the engine, in "
        "request order. Default min(8, cores); 0: inline.",
    )
    # transformers
    batch_size: int = Field(8, ge=1, description="transformers: requests per generate call.")
    dtype: Literal["auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"] = Field(
        "auto", description="auto: bf16 on CUDA, fp32 on CPU (vllm: the checkpoint's own on CPU)."
    )
    device: str | None = Field(None, description="transformers: cuda, cuda:1, cpu (default: auto).")
    max_pixels: int | None = Field(
        None,
        ge=28 * 28,
        description="Image pixel cap (vllm, transformers). Default: the model's training cap (iadr1_config.yaml), "
        "else the processor's own.",
    )
    # vllm
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per model.")
    data_parallel_size: int = Field(1, ge=1, description="vllm: model replicas.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm: share of GPU memory to use.")
    max_model_len: int | None = Field(
        None, ge=256, description="vllm: context length. Default: the model's own (config.json), at most 8192."
    )
    enforce_eager: bool | None = Field(
        None,
        description="vllm: no compilation / CUDA graphs (a faster start, a slower steady rate). Default: on for a "
        "CPU, off for a GPU.",
    )
    enable_prefix_caching: bool = True
    queue_size: int = Field(1024, ge=1)
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vllm.LLM keyword arguments.")
    # openai
    base_url: str | None = Field(None, description="openai: endpoint, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: NAME of the environment variable holding the key.")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight.")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds per request.")
    retries: int = Field(5, ge=0, description="openai: retries on 429/5xx/refusals.")
    backoff_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_side: int | None = Field(512, ge=0, description="Resize images to fit this side (openai; 0: never).")

    @field_validator("perturb", mode="before")
    @classmethod
    def _perturb(cls, v: Any) -> Any:
        # canonical spec strings (`lowlight` -> `lowlight:0.6,-10`); a bad spec is one line naming it
        if v is None:
            return []
        try:
            return _canonical_perturb(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _check(self) -> InferConfig:
        if self.shard >= self.num_shards:
            n = self.num_shards
            raise ValueError(f"shard {self.shard} is out of range for {n} shards (0..{n - 1})")
        return self

    @property
    def predictions_path(self) -> Path:
        return predictions_path(self.out, self.shard, self.num_shards)

    def generation_options(self) -> GenerationOptions:
        default_tokens = 600 if self.backend == "openai" else 512
        logprobs = self.logprobs if self.logprobs is not None else self.backend != "openai"
        return GenerationOptions(
            max_new_tokens=self.max_new_tokens or default_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            prompt_style=self.prompt_style,
            logprobs=logprobs,
            perturb=_parse_perturb(self.perturb),
        )


def predictions_path(out: str | os.PathLike, shard: int = 0, num_shards: int = 1) -> Path:
    """`OUT/predictions.jsonl`, or `OUT/predictions.shard{I}of{N}.jsonl` for shard I of N."""
    name = "predictions.jsonl" if num_shards == 1 else f"predictions.shard{shard}of{num_shards}.jsonl"
    return Path(out) / name


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> InferConfig:
    """Read a YAML (or JSON) config and apply overrides (None values are ignored); one-line errors
    (`iadr1.config`, the one config reader)."""
    from iadr1.config import load_layers, read_yaml

    layers = [(str(path), read_yaml(path))] if path is not None else []
    return load_layers(InferConfig, layers, overrides)


class InferenceSummary(BaseModel):
    """What a run did. `accuracy` is over this run's answered images (quick look; `iadr1 eval` is the metric)."""

    predictions: Path
    manifest: Path
    selected: int = Field(description="Images of this shard (after --limit).")
    skipped: int = Field(description="Already answered by an earlier run.")
    written: int
    errors: int
    yes: int
    no: int
    unanswered: int
    accuracy: float | None
    elapsed_s: float
    images_per_s: float
    startup_s: float | None = Field(
        None,
        description="Seconds from the start of the run until the backend was ready for its first request: reading "
        "the test file and the predictions so far, checking the first images, building the backend (engine_s). "
        "None: no request was run.",
    )
    engine_s: float | None = Field(
        None, description="Seconds building the backend (model load, engine start, compilation); 0 for one passed in."
    )
    first_result_s: float | None = Field(None, description="Seconds from the start of the run to the first result.")
    steady_images_per_s: float | None = Field(
        None,
        description="The backend's results per second from the moment it was ready to its last result (the "
        "start-up excluded; its first results' latency included).",
    )
    first_error: str | None = Field(None, description="The error of the first image that failed in this run.")
    notes: list[str] = Field(default_factory=list, description="What the run said (resume, settings it chose).")

    @property
    def all_failed(self) -> bool:
        """Every image this run tried failed (the CLI exits non-zero then)."""
        return self.written > 0 and self.errors == self.written


# ---------------------------------------------------------------------------------------------------------------
# Checks before anything heavy is imported
# ---------------------------------------------------------------------------------------------------------------
def check_inputs(cfg: InferConfig, model_folder: bool = True) -> None:
    """Raise a one-line error for a missing or non-model `--model` folder (local backends, when `model_folder`),
    a missing `--image-root` or an `--out` that is a file; reads only small files, imports nothing heavy. The test
    file is checked as it is read (`load_test_file`), option values by `InferConfig`."""
    if model_folder and cfg.backend != "openai":
        path = Path(cfg.model)
        if not path.is_dir():
            where = "is a file, not a model folder" if path.exists() else "model folder not found"
            raise ConfigError(f"--model {cfg.model}: {where} (vllm and transformers load local checkpoints only)")
        family_of(path)  # config.json present, with a supported model_type
        if not model_weights(path):
            raise ConfigError(f"--model {cfg.model}: no weight files ({', '.join(WEIGHT_PATTERNS)}) in the folder")
    if not cfg.image_root.is_dir():
        where = "not a folder" if cfg.image_root.exists() else "folder not found"
        raise DataError(f"--image-root {cfg.image_root}: {where}")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError(f"--out {cfg.out}: is a file, not a folder")


# ---------------------------------------------------------------------------------------------------------------
# Building requests
# ---------------------------------------------------------------------------------------------------------------
def select_entries(entries: dict[str, TestEntry], limit: int | None, shard: int, num_shards: int) -> list[str]:
    """Keys of this shard, in test-file order: the first `limit` images, then every `num_shards`-th from `shard`."""
    keys = list(entries)[:limit] if limit else list(entries)
    return keys[shard::num_shards]


def build_request(key: str, entry: TestEntry, cfg: InferConfig, question_index: int | None = None) -> Request | str:
    """The request for one test image (or, `question_index` given, for that MMAD question of it), or a one-line
    description of why it cannot be made."""
    refs = entry.random_templates if cfg.template_kind == "random" else entry.similar_templates
    if len(refs) < cfg.shots:
        return f"{cfg.shots}-shot needs {cfg.shots} {cfg.template_kind}_templates, the test file has {len(refs)}"
    paths: list[Path] = []
    for i, rel in enumerate([*refs[: cfg.shots], entry.image_path]):
        role = "query image" if i == cfg.shots else f"reference image {rel}"
        try:
            p = _resolve_under(cfg.image_root, rel, what=role)
        except DataError as e:
            return str(e)
        problem = check_image(p)
        if problem:
            return f"{role}: {problem}"
        paths.append(p)
    question = None
    if question_index is not None:
        q = entry.conversation[question_index]
        question = mmad_question_text(q.Question, q.Options, cfg.prompt_style)
    return Request(
        key=item_key(key, question_index),
        segments=tuple(inference_segments(cfg.shots, cfg.prompt_style, question)),
        images=tuple(paths),
        system=GRAMMAR_SYSTEM_PROMPT if cfg.grammar_prompt else None,
    )


def make_backend(cfg: InferConfig) -> Backend:
    """Construct the configured backend (loads the model)."""
    opts = cfg.generation_options()
    if cfg.backend == "transformers":
        from iadr1.infer.transformers_backend import TransformersBackend

        return TransformersBackend(
            cfg.model,
            opts,
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
            device=cfg.device,
            max_pixels=cfg.max_pixels,
            image_workers=cfg.image_workers,
        )
    if cfg.backend == "vllm":
        from iadr1.infer.vllm_backend import VLLMBackend

        return VLLMBackend(
            cfg.model,
            opts,
            dtype=cfg.dtype,
            max_pixels=cfg.max_pixels,
            max_images=cfg.shots + 1,
            tensor_parallel_size=cfg.tensor_parallel_size,
            data_parallel_size=cfg.data_parallel_size,
            enable_prefix_caching=cfg.enable_prefix_caching,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            queue_size=cfg.queue_size,
            image_workers=cfg.image_workers,
            **cfg.vllm_kwargs,
        )
    from iadr1.infer.openai_backend import OpenAIBackend

    return OpenAIBackend(
        cfg.model,
        opts,
        base_url=cfg.base_url,
        api_key_env=cfg.api_key_env,
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        retries=cfg.retries,
        backoff_s=cfg.backoff_s,
        backoff_max_s=cfg.backoff_max_s,
        max_side=cfg.max_side or None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------------------
# One unit of work: an image (detect), or one question of an image (mmad): `image` + ITEM_SEP + question index.
ITEM_SEP = "\x1f"


def item_key(image: str, question_index: int | None) -> str:
    return image if question_index is None else f"{image}{ITEM_SEP}{question_index}"


def split_item(item: str) -> tuple[str, int | None]:
    image, sep, index = item.partition(ITEM_SEP)
    return image, (int(index) if sep else None)


def work_items(keys: list[str], entries: dict[str, TestEntry], task: str) -> list[str]:
    """The units of work of `keys` in order: the images (detect), or every question of every image (mmad)."""
    if task == "detect":
        return keys
    return [item_key(k, i) for k in keys for i in range(len(entries[k].conversation))]


def _read_done(path: Path, cfg: InferConfig, selected: set[str]) -> set[str]:
    """Items (`work_items`) already answered in `path`. Error lines of selected items are dropped (they will be
    retried).

    A file written with another prompt style or shot count is refused: mixing them would corrupt the metric.
    """
    if not path.exists():
        return set()
    keep: list[Any] = []
    done: set[str] = set()
    dropped = 0
    for lineno, obj in iter_jsonl(path):
        try:
            rec = Prediction.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{path}: line {lineno} is not a prediction record ({e.errors()[0]['msg']})") from None
        if rec.prompt_style != cfg.prompt_style or rec.shots != cfg.shots:
            raise ConfigError(
                f"{path} holds predictions with prompt style {rec.prompt_style!r}, {rec.shots}-shot; this run is "
                f"{cfg.prompt_style!r}, {cfg.shots}-shot: pass --overwrite to start over, or use another --out folder"
            )
        item = item_key(rec.image, rec.question_index)
        if item in done:
            dropped += 1  # a duplicate (should not happen): keep the first answer only
            continue
        if rec.error is not None and item in selected:
            dropped += 1
            continue
        if rec.error is None:
            done.add(item)
        keep.append(obj)
    if dropped:
        atomic_write_jsonl(path, keep)
    return done


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
def _prob(p: float | None) -> float | None:
    """Six significant digits, not six decimals: a confident model's scores lie at 1e-5 and below, where an
    operating point for a 1% Miss is chosen, and rounding to decimals would tie them all at 0."""
    return None if p is None else float(f"{float(p):.6g}")


def prediction_record(
    key: str, cfg: InferConfig, result: Result, question: tuple[int, Conversation] | None = None
) -> tuple[dict[str, Any], Any]:
    """The predictions-file line of one result (and the parsed `iadr1.answers.Answer`, for callers that add to it:
    `iadr1 predict`). `question`: (index, question) of an MMAD line: the option letter is parsed from the reply
    (`iadr1.answers.parse_choice`) into `choice`, and only the anomaly-detection question's line has an answer."""
    answer = parse(result.raw) if result.error is None else parse(None)
    score = decision_score(_prob(result.p_defect), _prob(result.p_yes)) if result.error is None else None
    yes_no, letter = answer.answer, answer.letter
    mmad: dict[str, Any] = {}
    if question is not None:
        index, q = question
        choice = parse_choice(result.raw, q.Options) if result.error is None else None
        mmad = {"question_index": index, "question_type": q.type, "choice": choice}
        if q.type == DETECTION_TYPE:  # A is the defect in MMAD's files as in IAD-R1's
            yes_no = {ANOMALY_LETTER: "yes", NORMAL_LETTER: "no"}.get(choice or "")
            letter = {"yes": ANOMALY_LETTER, "no": NORMAL_LETTER}.get(yes_no or "", UNANSWERED_LETTER)
        else:
            yes_no, letter = None, None
    rec = Prediction(
        image=key,
        prompt_style=cfg.prompt_style,
        shots=cfg.shots,
        raw=result.raw,
        answer=yes_no,
        letter=letter,
        **mmad,
        p_yes=_prob(result.p_yes),
        p_defect=_prob(result.p_defect),
        threshold=cfg.threshold,
        decision=None if cfg.threshold is None else threshold_decision(score, cfg.threshold),
        latency_s=None if result.latency_s is None else round(result.latency_s, 4),
        error=result.error,
        perturb=list(cfg.perturb) or None,
    )
    line = rec.to_json()
    if line["perturb"] is None:
        del line["perturb"]  # a clean run's lines are as before perturbations existed
    if question is None:
        for k in ("question_index", "question_type", "choice"):
            del line[k]  # a detection line is as before MMAD lines existed
    return line, answer


def run_inference(
    config: InferConfig | None = None,
    *,
    engine: Backend | None = None,
    on_progress: Callable[[str, int, int | None, str], None] | None = None,
    overwrite: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    **options: Any,
) -> InferenceSummary:
    """Run inference over a test file and append predictions; returns a summary (output path included).

    Pass an `InferConfig`, or its fields as keyword arguments:

        run_inference(model="ckpt/", test_file="test_SYNTH_format.json", image_root="images", out="runs/x",
                      backend="transformers", shots=1)

    `engine` reuses an already constructed backend (the demo, tests); otherwise the configured one is built, and
    only if some image is left to answer. A folder holding predictions made with other answer-changing settings
    is a `ConfigError`, unless `overwrite` (start over: this file and files of other settings are removed).
    `on_message` receives the run's one-line notes (resuming, nothing to do, settings a backend chose);
    `on_progress("infer", done, total, info)` is called as images are answered (the CLI draws the bar; `info` is
    the rate in images/s).
    """
    cfg = config if config is not None else load_config(None, **options)
    t_start = time.perf_counter()
    notes: list[str] = []

    def say(note: str) -> None:
        notes.append(note)
        if on_message is not None:
            on_message(note)

    check_inputs(cfg, model_folder=engine is None)
    engine_perturb = getattr(getattr(engine, "options", None), "perturb", None)
    if engine_perturb is not None and [p.spec for p in engine_perturb] != cfg.perturb:
        # the lines and the manifest record cfg.perturb: an engine perturbing otherwise would mislabel them
        raise ConfigError(
            f"the backend passed in perturbs images with {[p.spec for p in engine_perturb]}, this run's perturb is "
            f"{cfg.perturb}: build the backend with the run's generation_options()"
        )
    entries = load_test_file(cfg.test_file)
    if not entries:
        raise DataError(f"{cfg.test_file}: the test file holds no images")
    keys = select_entries(entries, cfg.limit, cfg.shard, cfg.num_shards)
    out_path = cfg.predictions_path
    settings = run_settings(cfg, file_sha256(cfg.test_file))
    removed = check_folder(out_path, settings, overwrite)  # before anything in the folder changes
    if removed:
        say(f"--overwrite: removed {', '.join(p.name for p in removed)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    items = work_items(keys, entries, cfg.task)
    what = "images" if cfg.task == "detect" else "questions"
    done = _read_done(out_path, cfg, set(items))
    started_at = now()
    _write_manifest(out_path, cfg, settings, started_at)  # now: a run killed from here on is protected too
    todo = [k for k in items if k not in done]
    if not keys:
        say(f"nothing to do: shard {cfg.shard} of {cfg.num_shards} holds no images of the test file")
    elif not todo:
        say(f"nothing to do: all {len(items)} {what} are already answered in {out_path} (--overwrite starts over)")
    elif len(todo) < len(items):
        say(f"resuming {out_path}: {len(items) - len(todo)} of {len(items)} {what} already answered")
    counts: Counter[str] = Counter()
    n_correct = n_scored = 0
    first_error: str | None = None
    timing = _Timing()
    workers = resolve_workers(cfg.image_workers)

    t_loop = time.perf_counter()

    def advance() -> None:
        if on_progress is not None:
            n = counts["written"]
            rate = n / max(time.perf_counter() - t_loop, 1e-9)
            on_progress("infer", n, len(todo), f"{rate:.2f} img/s")

    with JsonlAppender(out_path) as sink:

        def write(item: str, result: Result) -> None:
            nonlocal n_correct, n_scored, first_error
            key, qi = split_item(item)
            entry = entries[key]
            question = None if qi is None else (qi, entry.conversation[qi])
            rec, _ = prediction_record(key, cfg, result, question)
            sink.write(rec)
            counts["written"] += 1
            if rec["error"]:
                counts["errors"] += 1
                first_error = first_error or f"{key}: {rec['error']}"
            elif question is None or question[1].type == DETECTION_TYPE:
                counts[{"A": "yes", "B": "no"}.get(rec["letter"], "unanswered")] += 1
                n_scored += 1
                n_correct += rec["letter"] == entry.conversation[entry.detection_index].Answer
            else:
                n_scored += 1
                n_correct += rec["choice"] == question[1].Answer
            if on_record is not None:
                on_record(rec)
            advance()

        def build(item: str) -> Request | str:
            key, qi = split_item(item)
            return build_request(key, entries[key], cfg, qi)

        def requests() -> Iterator[Request]:
            # Lazy: images are checked (a full decode) as the backend asks for work, by `workers` threads a few
            # requests ahead, in order; bad ones are recorded on the spot, here in the run's own thread.
            built = prefetch(todo, build, workers, ahead=max(8, 4 * workers))
            try:
                for item, req in built:
                    req = req.result()
                    if isinstance(req, str):
                        write(item, Result(error=req))
                    else:
                        yield req
            finally:
                built.close()

        stream = requests()
        first = next(stream, None)  # build the engine only if there is something to run
        if first is not None:
            own = engine is None
            t_engine = time.perf_counter()
            runner = make_backend(cfg) if engine is None else engine
            timing.ready = time.perf_counter()
            timing.engine_s = timing.ready - t_engine if own else 0.0
            for note in runner.notes:
                say(note)
            results = runner.generate(_chain(first, stream))
            try:
                for req, result in results:
                    timing.arrived(time.perf_counter())
                    write(req.key, result)
            finally:
                for it in (results, stream):  # the backend's read-ahead threads, then the runner's
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
                if own:
                    runner.close()

    elapsed = time.perf_counter() - t_start
    summary = InferenceSummary(
        predictions=out_path,
        manifest=manifest_path(out_path),
        selected=len(items),
        skipped=len(items) - len(todo),
        written=counts["written"],
        errors=counts["errors"],
        yes=counts["yes"],
        no=counts["no"],
        unanswered=counts["unanswered"],
        accuracy=(n_correct / n_scored) if n_scored else None,
        elapsed_s=round(elapsed, 3),
        images_per_s=round(counts["written"] / elapsed, 3) if elapsed > 0 else 0.0,
        startup_s=None if timing.ready is None else round(timing.ready - t_start, 3),
        engine_s=None if timing.engine_s is None else round(timing.engine_s, 3),
        first_result_s=None if timing.first is None else round(timing.first - t_start, 3),
        steady_images_per_s=timing.steady_rate(),
        first_error=first_error,
        notes=notes,
    )
    _write_manifest(out_path, cfg, settings, started_at, summary.model_dump(mode="json"))
    return summary


class _Timing:
    """When the backend was ready and when its results came: the start-up apart from the steady rate.

    The steady rate is taken from the moment the backend is ready, not from its first result: an engine that batches
    continuously (vLLM) returns its first results only once its batch is full, then many at once, so a rate counted
    from the first result would overstate what it sustains.
    """

    def __init__(self) -> None:
        self.engine_s: float | None = None
        self.ready: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.results = 0

    def arrived(self, t: float) -> None:
        self.first = t if self.first is None else self.first
        self.last = t
        self.results += 1

    def steady_rate(self) -> float | None:
        if self.ready is None or self.last is None or self.last <= self.ready:
            return None
        return round(self.results / (self.last - self.ready), 3)


def _chain(first: Request, rest: Iterator[Request]) -> Iterator[Request]:
    yield first
    yield from rest


__all__ = [
    "InferConfig",
    "InferenceSummary",
    "build_request",
    "check_inputs",
    "load_config",
    "make_backend",
    "predictions_path",
    "run_inference",
    "select_entries",
]
