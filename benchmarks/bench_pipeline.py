"""The host-side image pipeline of `iadr1 infer`: from the image file to what the model or vLLM receives.

Times, per image on one core, each stage the local backends run before the model sees an image, on 1024x1024 PNGs
and JPEGs (the size of MVTec-AD images; textured photographs from scikit-image's sample data, with sensor noise,
so the codecs do real work):

    check      the runner's readability check (`iadr1.data.io.check_image`: a full decode, in `build_request`)
    decode     PIL open + convert("RGB") (`iadr1.data.io.load_rgb`, read by `iadr1.data.perturb.load_image`)
    resize     `iadr1.models.loading.fit_image` to the cap, Qwen's 28 px grid: native (no cap: the processor's own
               max_pixels, 12845056 in Qwen2-VL/Qwen2.5-VL's preprocessor_config.json) and 480,000 pixels
    processor  the family's image processor as the checkpoints configure it (patch 14, merge 2, temporal patch 2,
               min_pixels 3136, max_pixels 12845056; built offline): transformers' torchvision one
               (`Qwen2VLImageProcessor`, what AutoProcessor and vLLM load) and its PIL one (`...Pil`), for the record
    prompt     `render_prompt` (the chat template) and tokenising the rendered prompt, on a tiny Qwen2-VL processor

then the rate of the stages iadr1 runs ahead of the engine (check + decode + resize, `iadr1.infer.prefetch`) inline
and with a pool of 1 and 2 threads and of 2 processes, projected to 8 cores, and, in vLLM's environment (.venv-vllm),
what vLLM's own frontend spends per image in `LLM.enqueue` (its processor stage, run in the caller's thread).
Usage:

    .venv/bin/python benchmarks/bench_pipeline.py                  # 24 images per format, 3 rounds
    .venv/bin/python benchmarks/bench_pipeline.py --images 48 --rounds 5 --json pipeline.json

Per-core figures run with torch on one thread. The H200 reference: Qwen2.5-VL-3B prefills about 25-30 native
images/s, so the pipeline must deliver at least 2 x 30 = 60 images/s with the cores a GPU host gives it.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIDE = 1024
FACTOR = 28  # Qwen2-VL / Qwen2.5-VL: patch 14 x merge 2
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 3136, 12845056  # preprocessor_config.json of Qwen2-VL-7B / Qwen2.5-VL-3B-Instruct
CAPS = {"native": None, "480k": 480_000}
H200_NATIVE_RATE = (25.0, 30.0)  # Qwen2.5-VL-3B prefill on one H200, native images/s (about 16.5 TFLOP each)


# ---------------------------------------------------------------------------------------------------------------
# Images: textured 1024x1024 photographs (PNG as MVTec-AD ships them, and JPEG at quality 95)
# ---------------------------------------------------------------------------------------------------------------
def make_images(folder: Path, n: int, seed: int = 0) -> dict[str, list[Path]]:
    """`n` PNG and `n` JPEG files of SIDE x SIDE: crops of scikit-image's photographs (textures, objects), scaled
    up, colour-tinted, with Gaussian sensor noise (sigma 3 grey levels) as a camera gives."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.brick(), data.grass(), data.gravel(), data.camera(), data.coffee(), data.chelsea(), data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"png": [], "jpeg": []}
    for i in range(n):
        src = sources[i % len(sources)]
        rgb = np.stack([src] * 3, axis=-1) if src.ndim == 2 else src[..., :3]
        h, w = rgb.shape[:2]
        side = min(h, w)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        im = Image.fromarray(rgb[y : y + side, x : x + side]).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) * rng.uniform(0.8, 1.2, size=3)  # tint
        arr += rng.normal(0, 3.0, size=arr.shape)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        for fmt, ext, kw in (("png", "png", {}), ("jpeg", "jpg", {"quality": 95})):
            path = folder / f"img{i:03d}.{ext}"
            im.save(path, **kw)
            out[fmt].append(path)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------
def qwen_image_processors() -> dict[str, object]:
    """Qwen2-VL's image processor (Qwen2.5-VL uses the same class) with the published checkpoints' settings."""
    from transformers import Qwen2VLImageProcessor

    size = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS}
    out: dict[str, object] = {"torchvision": Qwen2VLImageProcessor(size=size)}
    try:
        from transformers import Qwen2VLImageProcessorPil

        out["pil"] = Qwen2VLImageProcessorPil(size=size)
    except ImportError:
        pass
    return out


def decode(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def decode_and_resize(path: Path, cap: int | None):
    """What the backend's pool runs per image: iadr1's own reader, then training's size rule."""
    from iadr1.data.perturb import load_image
    from iadr1.models.loading import fit_image

    return fit_image(load_image(path), cap, FACTOR)


def per_image_s(fn: Callable[[object], object], items: list, rounds: int) -> float:
    """Median over rounds of the mean seconds per item (first call beforehand, as a warm-up)."""
    fn(items[0])
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        times.append((time.perf_counter() - t0) / len(items))
    return statistics.median(times)


def stage_costs(paths: list[Path], rounds: int, prompt_processor) -> dict[str, dict[str, float]]:
    """Seconds per image of each stage, for each cap (on one core)."""
    from iadr1.data.io import check_image, load_rgb
    from iadr1.models.loading import fit_image, render_prompt
    from iadr1.prompts import inference_segments

    processors = qwen_image_processors()
    images = [decode(p) for p in paths]
    common = {
        "check": per_image_s(check_image, paths, rounds),
        "decode": per_image_s(decode, paths, rounds),
        "load_rgb": per_image_s(load_rgb, paths, rounds),
    }
    segments = list(inference_segments(0, "iadr1"))
    text = render_prompt(prompt_processor, segments)
    common["prompt"] = per_image_s(lambda _: render_prompt(prompt_processor, segments), paths, rounds)
    common["tokenize"] = per_image_s(lambda _: prompt_processor.tokenizer(text), paths, rounds)
    out: dict[str, dict[str, float]] = {}
    for name, cap in CAPS.items():
        sized = [fit_image(im, cap, FACTOR) for im in images]
        costs = dict(common)
        costs["resize"] = per_image_s(lambda im, cap=cap: fit_image(im, cap, FACTOR), images, rounds)
        for pname, proc in processors.items():
            costs[f"processor_{pname}"] = per_image_s(
                lambda im, proc=proc: proc(images=[im], return_tensors="pt"), sized, rounds
            )
        costs["grid_tokens"] = float(processors["torchvision"](images=[sized[0]])["image_grid_thw"].prod() // 4)
        out[name] = costs
    return out


POOLS = {"inline": (None, 0), "threads1": (ThreadPoolExecutor, 1), "threads2": (ThreadPoolExecutor, 2)}
POOLS["procs2"] = (ProcessPoolExecutor, 2)


def pool_rates(paths: list[Path], cap: int | None, rounds: int) -> dict[str, float]:
    """Images/s of check + decode + resize inline and through pools of threads or processes (mapped in order, as the
    prefetch pool returns them). The configurations take turns within each round, so a passing load on the
    machine hits them alike; the median round counts."""
    fn = _pool_task(cap)
    pools = {}
    for name, (cls, workers) in POOLS.items():
        if cls is not None:
            pools[name] = cls(max_workers=workers)
            list(pools[name].map(fn, paths[:workers]))  # start the workers (processes: their imports)
    times: dict[str, list[float]] = {name: [] for name in POOLS}
    try:
        for _ in range(rounds):
            for name in POOLS:
                t0 = time.perf_counter()
                for im in pools[name].map(fn, paths) if name in pools else map(fn, paths):
                    _ = im.size  # a process pool ships each image back pickled: part of its cost
                times[name].append(time.perf_counter() - t0)
    finally:
        for pool in pools.values():
            pool.shutdown()
    return {name: len(paths) / statistics.median(t) for name, t in times.items()}


def vllm_frontend(paths: list[Path], caps: dict[str, int | None]) -> dict[str, float]:
    """Seconds per image that vLLM's own frontend spends in `LLM.enqueue` (prompt rendering and tokenising, the HF
    processor, hashing for its processor cache, the request): the 'processor' stage as vLLM runs it, in the caller's
    thread. Runs inside vLLM's environment, an in-process engine that is never stepped, on a tiny Qwen2-VL whose
    image processor takes a native 1024 px image whole (max_pixels 1036 x 1036; the published 12845056 does the same
    work on it). Images: what iadr1 hands over (decoded, sized to the cap)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    import torch
    from vllm import LLM, SamplingParams

    from iadr1.models.loading import load_processor, render_prompt
    from iadr1.models.tiny import build_tiny
    from iadr1.prompts import inference_segments

    scratch = Path(tempfile.mkdtemp(prefix="bench_pipeline_vllm_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    model = build_tiny("qwen2_vl", scratch / "tiny")
    config = model / "processor_config.json"
    spec = json.loads(config.read_text())
    spec["image_processor"]["size"] = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": 1036 * 1036}
    config.write_text(json.dumps(spec))
    text = render_prompt(load_processor(model), list(inference_segments(0, "iadr1")))
    llm = LLM(
        model=str(model), dtype="float32", enforce_eager=True, max_model_len=4096, kv_cache_memory_bytes=256 << 20,
        limit_mm_per_prompt={"image": 1},
    )  # fmt: skip
    torch.set_num_threads(1)  # per core (vLLM's frontend otherwise takes every core for the processor's torch ops)
    params = SamplingParams(max_tokens=1)
    out = {}
    for name, cap in caps.items():
        images = [decode_and_resize(p, cap) for p in paths]
        llm.enqueue([{"prompt": text, "multi_modal_data": {"image": [images[0]]}}], params, use_tqdm=False)
        t0 = time.perf_counter()
        for im in images[1:]:  # distinct images: its processor cache never hits, as in a run
            llm.enqueue([{"prompt": text, "multi_modal_data": {"image": [im]}}], params, use_tqdm=False)
        out[name] = (time.perf_counter() - t0) / (len(images) - 1)
    return out


def _vllm_worker(args: argparse.Namespace) -> None:
    """In vLLM's environment: time its frontend on the given images, print JSON on the last line."""
    folder = Path(args.vllm_worker)
    result = {}
    for fmt, ext in (("png", "png"), ("jpeg", "jpg")):
        result[fmt] = vllm_frontend(sorted(folder.glob(f"*.{ext}")), CAPS)
    print(json.dumps(result))


class _pool_task:  # picklable for the process pool
    def __init__(self, cap: int | None):
        self.cap = cap

    def __call__(self, path: Path):
        from iadr1.data.io import check_image

        check_image(path)  # the runner's check (`build_request`), in its own pool in a run
        return decode_and_resize(path, self.cap)


# ---------------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24, help="Images per format.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=8, help="Project the pool's rate to this many cores.")
    p.add_argument("--json", help="Also write the figures to this JSON file.")
    default_vllm = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
    p.add_argument(
        "--vllm-python",
        default=str(default_vllm) if default_vllm.exists() else "",
        help="Python of a vLLM environment, to time vLLM's own frontend (default .venv-vllm; '' to skip).",
    )
    p.add_argument("--vllm-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.vllm_worker:
        return _vllm_worker(args)

    import torch

    torch.set_num_threads(1)  # per-core figures
    from iadr1.models.loading import load_processor
    from iadr1.models.tiny import build_tiny

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # some 50 MB of images and a tiny model
    files = make_images(work / "images", args.images)
    tiny = load_processor(build_tiny("qwen2_vl", work / "tiny"))
    sizes = {fmt: statistics.mean(f.stat().st_size for f in fs) / 2**20 for fmt, fs in files.items()}
    print(
        f"{args.images} images of {SIDE}x{SIDE} per format (mean file {sizes['png']:.2f} MB PNG, "
        f"{sizes['jpeg']:.2f} MB JPEG q95); {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}; Python "
        f"{sys.version.split()[0]}"
    )
    figures: dict = {"load_average": os.getloadavg()[0], "cores": os.cpu_count(), "formats": {}}
    stages_ahead = ("check", "decode", "resize")  # what iadr1's pools run ahead of the engine
    for fmt, paths in files.items():
        costs = stage_costs(paths, args.rounds, tiny)
        for cap_name, c in costs.items():
            print(f"\n{fmt.upper()} {cap_name} ({int(c['grid_tokens'])} image tokens per image after the merge)")
            print(f"  {'stage':30s} {'ms/image':>9s} {'images/s/core':>14s}")
            for stage in ("check", "decode", "resize", "processor_torchvision", "processor_pil", "prompt", "tokenize"):
                if stage in c:
                    print(f"  {stage:30s} {1e3 * c[stage]:9.2f} {1 / c[stage]:14.1f}")
            ahead = sum(c[s] for s in stages_ahead)
            total = ahead + c["processor_torchvision"] + c["prompt"] + c["tokenize"]
            print(
                f"  {'ahead of the engine (pools)':30s} {1e3 * ahead:9.2f} {1 / ahead:14.1f}   check + decode + resize"
            )
            print(
                f"  {'whole pipeline, one core':30s} {1e3 * total:9.2f} {1 / total:14.1f}   "
                "check + decode + resize + processor + prompt"
            )
            figures["formats"].setdefault(fmt, {})[cap_name] = {"ms_per_image": {k: 1e3 * v for k, v in c.items()}}

    print("\niadr1's read-ahead (check + decode + resize, in order), images/s:")
    print(f"  {'':12s} {'inline':>8s} {'1 thread':>9s} {'2 threads':>10s} {'2 procs':>8s} {'scaling':>8s}", end="")
    print(f" {f'{args.cores} cores (projected)':>22s}")
    for fmt, paths in files.items():
        for cap_name, cap in CAPS.items():
            r = pool_rates(paths, cap, args.rounds)
            best2 = max(r["threads2"], r["procs2"])
            efficiency = best2 / (2 * r["inline"])
            projected = r["inline"] * args.cores * min(efficiency, 1.0)
            r.update(efficiency_2=efficiency, projected=projected)
            figures["formats"][fmt][cap_name]["pool_images_per_s"] = r
            print(
                f"  {fmt + ' ' + cap_name:12s} {r['inline']:8.1f} {r['threads1']:9.1f} {r['threads2']:10.1f} "
                f"{r['procs2']:8.1f} {efficiency:7.0%} {projected:22.1f}"
            )
    if args.vllm_python:
        import subprocess

        cmd = [args.vllm_python, __file__, "--vllm-worker", str(work / "images")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"\nvLLM's frontend: not measured ({proc.stderr.strip().splitlines()[-1:]})")
        else:
            front = json.loads(proc.stdout.strip().splitlines()[-1])
            figures["vllm_frontend_ms_per_image"] = {f: {c: 1e3 * v for c, v in d.items()} for f, d in front.items()}
            print("\nvLLM's own frontend, LLM.enqueue per image on one core (render, tokenise, HF processor, hashing):")
            for fmt, d in front.items():
                cells = "   ".join(f"{c} {1e3 * v:6.2f} ms = {1 / v:6.1f} images/s" for c, v in d.items())
                print(f"  {fmt:5s} {cells}")
    need = 2 * H200_NATIVE_RATE[1]
    print(
        f"\nProjection: the one-core rate x {args.cores} cores x the measured 2-core scaling efficiency (the better of"
        f" threads and processes over 2 x inline; capped at 100%). The H200 needs {2 * H200_NATIVE_RATE[0]:.0f}-"
        f"{need:.0f} images/s (2 x its {H200_NATIVE_RATE[0]:.0f}-{H200_NATIVE_RATE[1]:.0f} native images/s prefill"
        " of Qwen2.5-VL-3B)."
    )
    print(
        "On a GPU host vLLM (0.32, offline vllm.LLM) runs its engine core (scheduler, model, CUDA graphs) in processes"
        " of its own, but it\nrenders and tokenises the prompt, runs the HF image processor and hashes the image for"
        " its cache in the caller's process and\nthread, in LLM.enqueue, one request after another (the 'processor'"
        " stage; vLLM's frontend line above). So iadr1 can spread\ncheck, decode and resize over cores (its"
        " --image-workers pool); vLLM's frontend stays one thread per engine, and a faster\nsupply than its rate"
        " needs several engines: --shard I --num-shards N, one process each."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
