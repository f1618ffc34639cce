"""Step time of `iadr1 sft` / `iadr1 grpo`, and our overhead against bare TRL on the same data and settings.

    python benchmarks/bench_train.py                          # tiny Qwen2-VL on CPU, both stages (goal: <= 5%)
    python benchmarks/bench_train.py --family llava_onevision --steps 30 --repeats 3
    python benchmarks/bench_train.py --model ckpt/Qwen2-VL-2B-Instruct --stage sft --batch-size 4   # on a GPU

"Bare TRL" is what a TRL user writes by hand: a `datasets` table with an `Image` column, plain string prompts,
`SFTTrainer`/`GRPOTrainer` with the same TRL config, the same model loaded the same way (float32 master weights,
vision tower frozen) and, for GRPO, the same reward functions. "iadr1" is `run_sft`/`run_grpo` end to end
(record checks, lazy image resizing, consistency-rate and sample logging, log-history file, final save).

The step time is the median interval between consecutive optimizer steps after `--warmup` steps (data loading
included). Runs alternate (bare, iadr1, bare, iadr1...) so that a busy machine slows both alike. On a GPU it also
reports samples/s, tokens/s (TRL's `num_tokens`) and peak GPU memory; on CPU the peak resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

QUESTION = "Are there any defects in the query image?"


# ---------------------------------------------------------------------------------------------------------------------
# Data and measurement
# ---------------------------------------------------------------------------------------------------------------------
def make_data(root: Path, n: int, size: int) -> Path:
    """`n` textured PNGs (every other one with a dark defect) with PA-SFT and SC-GRPO records."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    sft, grpo = [], []
    for i in range(n):
        pixels = (rng.random((size, size, 3)) * 80 + 90).astype("uint8")
        defect = i % 2 == 1
        if defect:
            pixels[size // 8 : size // 4, size // 8 : size // 2] = 10
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        if defect:
            answer = "<think>A dark line at the top left.</think><location>top left</location><type>scratch</type>"
            solution = "<location>top left</location><type>scratch</type><answer>Yes</answer>"
        else:
            answer, solution = "<think>The surface looks uniform.</think>", "<answer>No</answer>"
        answer += "<answer>Yes</answer>" if defect else "<answer>No</answer>"
        user = {"role": "user", "content": f"<image>\n{QUESTION}"}
        sft.append({"images": f"img/{i}.png", "messages": [user, {"role": "assistant", "content": answer}]})
        grpo.append(
            {"id": str(i), "image": f"img/{i}.png", "problem": f"You are an expert. {QUESTION}", "solution": solution}
        )
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (root / "grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in grpo))
    return root


class StepClock(TrainerCallback):
    """Records the wall time at the end of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())


def summarize(clock: StepClock, log_history: list[dict], warmup: int, samples_per_step: int) -> dict[str, float]:
    steps = np.diff(clock.times[warmup:])
    tokens = {h["step"]: h["num_tokens"] for h in log_history if "num_tokens" in h}
    first, last = warmup + 1, len(clock.times)
    out = {
        "step_s": float(np.median(steps)),
        # CPU seconds of this process (all its threads) per step: on a shared CPU machine, where other jobs
        # stretch the wall time of both sides unevenly, this is the steadier measure of the work each side does.
        "cpu_step_s": float(np.median(np.diff(clock.cpu_times[warmup:]))),
        "samples_per_s": samples_per_step / float(np.median(steps)),
    }
    lengths = [h["completions/mean_length"] for h in log_history if "completions/mean_length" in h]
    if lengths:  # GRPO: generation time grows with completion length, so both sides must generate alike
        out["completion_tokens"] = float(np.mean(lengths[warmup:]))
    if first in tokens and last in tokens and clock.times[-1] > clock.times[warmup]:
        out["tokens_per_s"] = (tokens[last] - tokens[first]) / (clock.times[-1] - clock.times[warmup])
    return out


def peak_memory() -> dict[str, float]:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


# ---------------------------------------------------------------------------------------------------------------------
# The two ways to train
# ---------------------------------------------------------------------------------------------------------------------
def _model(cfg: Any):
    from iadr1.train.common import check_family, load_model_for_training

    return load_model_for_training(cfg, check_family(cfg))


def _bare_dataset(data: Path, stage: str):
    """The dataset a TRL user builds by hand: plain prompts, an Image column decoded on access."""
    from datasets import Dataset, Image, Sequence

    rows = [json.loads(x) for x in (data / f"{stage}.jsonl").read_text().splitlines()]
    if stage == "sft":
        table = {
            "prompt": [[{"role": "user", "content": QUESTION}] for _ in rows],
            "completion": [[r["messages"][-1]] for r in rows],
            "images": [[str(data / r["images"])] for r in rows],
        }
    else:
        table = {
            "prompt": [[{"role": "user", "content": r["problem"]}] for r in rows],
            "images": [[str(data / r["image"])] for r in rows],
            "solution": [r["solution"] for r in rows],
        }
    return Dataset.from_dict(table).cast_column("images", Sequence(Image()))


def run_bare(stage: str, cfg: Any, data: Path, clock: StepClock) -> list[dict]:
    from transformers import AutoProcessor
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from iadr1.rewards import get_reward_funcs

    kwargs = cfg.to_trl_kwargs()
    processor = AutoProcessor.from_pretrained(cfg.model, padding_side="left")
    dataset = _bare_dataset(data, stage)
    if stage == "sft":
        trainer = SFTTrainer(
            model=_model(cfg),
            args=SFTConfig(**kwargs),
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[clock],
        )
    else:
        funcs, _ = get_reward_funcs([r.name for r in cfg.rewards])
        trainer = GRPOTrainer(
            model=_model(cfg),
            reward_funcs=funcs,
            args=GRPOConfig(**kwargs),
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[clock],
        )
    trainer.train()
    trainer.save_model(str(cfg.output_dir))
    return trainer.state.log_history


def run_iadr1(stage: str, cfg: Any, clock: StepClock) -> list[dict]:
    from iadr1.train.grpo import run_grpo
    from iadr1.train.sft import run_sft

    out = (run_sft if stage == "sft" else run_grpo)(cfg, callbacks=[clock])
    return json.loads((out / "log_history.json").read_text())


def config(stage: str, args: argparse.Namespace, model: str, data: Path, out: Path):
    from iadr1.train.config import GRPORunConfig, SFTRunConfig

    common = dict(
        model=model,
        output_dir=out,
        max_steps=args.steps,
        lr=1e-5,
        warmup_steps=0,
        save_steps=10**6,
        resume=False,
        max_pixels=args.max_pixels,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=0,
    )
    if stage == "sft":
        return SFTRunConfig(dataset=data / "sft.jsonl", batch_size=args.batch_size, grad_accum=1, **common)
    return GRPORunConfig(
        dataset=data / "grpo.jsonl",
        batch_size=args.batch_size * 4,  # completions: batch_size prompts x G=4
        grad_accum=1,
        max_completion_length=args.max_completion_length,
        vllm=args.vllm,
        **common,
    )


# ---------------------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="A real checkpoint folder (default: a tiny random one of --family).")
    p.add_argument("--family", default="qwen2_vl", help="Family of the tiny model when --model is not given.")
    p.add_argument("--stage", choices=["sft", "grpo", "both"], default="both")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="Alternating runs of each side; medians are reported.")
    p.add_argument("--batch-size", type=int, default=4, help="SFT records / GRPO prompts per step.")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--max-pixels", type=int, default=262144)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--vllm", default="off", help="GRPO rollouts: off, colocate (GPU with vllm installed).")
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    args = p.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = make_data(tmp / "data", args.records, args.image_size)
    if args.model:
        model = args.model
    else:
        from iadr1.models.tiny import build_tiny

        model = str(build_tiny(args.family, tmp / "model"))

    results: dict[str, Any] = {"model": model if args.model else f"tiny {args.family}"}
    for stage in ["sft", "grpo"] if args.stage == "both" else [args.stage]:
        runs: dict[str, list[dict]] = {"bare": [], "iadr1": []}
        for r in range(args.repeats):
            for side in ("bare", "iadr1"):
                cfg = config(stage, args, model, data, tmp / f"{stage}-{side}-{r}")
                clock = StepClock()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    history = run_bare(stage, cfg, data, clock) if side == "bare" else run_iadr1(stage, cfg, clock)
                per_step = args.batch_size if stage == "sft" else args.batch_size * 4
                runs[side].append(summarize(clock, history, args.warmup, per_step))
        figures = {side: {k: statistics.median(x[k] for x in rs if k in x) for k in rs[0]} for side, rs in runs.items()}
        b, o = figures["bare"], figures["iadr1"]
        figures["overhead_pct"] = 100 * (o["step_s"] / b["step_s"] - 1)
        figures["cpu_overhead_pct"] = 100 * (o["cpu_step_s"] / b["cpu_step_s"] - 1)
        results[stage] = figures
        unit = "samples" if stage == "sft" else "completions"
        print(
            f"{stage.upper():5s} step {o['step_s'] * 1000:7.1f} ms (bare TRL {b['step_s'] * 1000:7.1f} ms, "
            f"{figures['overhead_pct']:+5.1f}%), CPU {o['cpu_step_s'] * 1000:7.1f} ms (bare "
            f"{b['cpu_step_s'] * 1000:7.1f} ms, {figures['cpu_overhead_pct']:+5.1f}%), "
            f"{o['samples_per_s']:6.2f} {unit}/s"
            + (f", {o['tokens_per_s']:7.0f} tokens/s" if "tokens_per_s" in o else "")
        )
    results["memory"] = peak_memory()
    print("peak memory:", ", ".join(f"{k} {v:.2f}" for k, v in results["memory"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
