"""Inference throughput: transformers batch 1, transformers batched, vLLM, over the same requests.

On a CPU-only machine (default): a tiny random checkpoint and 500 synthetic images (the demo dataset); vLLM runs in
`.venv-vllm` (its CPU build pins another torch) by calling this script there as a worker:

    .venv/bin/python benchmarks/bench_infer.py                        # 500 images, tiny qwen2_vl, all three
    .venv/bin/python benchmarks/bench_infer.py --images 100 --backends tf1,tfb

On a GPU with a real checkpoint (vLLM installed in the same environment: `pip install 'iadr1[vllm]'`):

    python benchmarks/bench_infer.py --model /ckpt/Qwen2.5-VL-3B-Instruct --device cuda --images 500 \
        --max-new-tokens 512 --batch-size 32 --vllm-python "$(which python)"

Prints, per backend: the start-up (building the backend: model load, engine start; then its first request, the
warm-up) apart from the steady rate over all images: images/s, prompt tokens/s, generated tokens/s, peak memory
(CUDA: max allocated by torch; CPU: peak RSS of the process), and the speed-ups the project aims for (batched >= 3x
batch 1; vLLM >= batched). A whole `iadr1 infer` run's summary shows the same split (`startup_s`,
`steady_images_per_s`).
Greedy decoding: the backends generate the same tokens (tested), so they do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def _requests(test_file: Path, image_root: Path, n: int, shots: int, style: str) -> list:
    from iadr1.data.schemas import load_test_file
    from iadr1.infer.runner import InferConfig, build_request

    cfg = InferConfig(model="-", test_file=test_file, image_root=image_root, out="-", shots=shots, prompt_style=style)
    entries = load_test_file(test_file)
    reqs = [build_request(k, e, cfg) for k, e in list(entries.items())[:n]]
    bad = [r for r in reqs if isinstance(r, str)]
    if bad:
        raise SystemExit(f"unreadable benchmark images: {bad[:3]}")
    return reqs


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(backend, requests, device: str, build_s: float) -> dict:
    """Run every request once at the steady rate; the start-up is timed apart: building the backend (`build_s`)
    and its first request (the warm-up: lazy initialisation, compilation), run beforehand."""
    t0 = time.perf_counter()
    list(backend.generate(requests[:1]))
    first_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n_prompt = n_gen = errors = 0
    for _, res in backend.generate(requests):
        errors += res.error is not None
        n_prompt += res.prompt_tokens or 0
        n_gen += len(res.token_ids or [])
    dt = time.perf_counter() - t0
    return {
        "build_s": build_s,
        "first_request_s": first_s,
        "startup_s": build_s + first_s,
        "images": len(requests),
        "errors": errors,
        "seconds": dt,
        "images_per_s": len(requests) / dt,
        "prompt_tokens_per_s": n_prompt / dt,
        "generated_tokens_per_s": n_gen / dt,
        "generated_tokens": n_gen,
        "peak_memory_mb": _peak_memory_mb(device),
    }


def run_backend(kind: str, args: argparse.Namespace, requests: list) -> dict:
    from iadr1.infer.base import GenerationOptions

    opts = GenerationOptions(max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style, logprobs=True)
    t0 = time.perf_counter()
    if kind in ("tf1", "tfb"):
        from iadr1.infer.transformers_backend import TransformersBackend

        bs = 1 if kind == "tf1" else args.batch_size
        backend = TransformersBackend(args.model, opts, batch_size=bs, dtype=args.dtype, device=args.device)
    else:
        from iadr1.infer.vllm_backend import VLLMBackend

        on_cpu = not args.device.startswith("cuda")
        backend = VLLMBackend(
            args.model,
            opts,
            dtype=args.dtype if not on_cpu or args.dtype != "auto" else "float32",
            max_images=args.shots + 1,
            max_model_len=args.max_model_len,
            # CPU: a small KV cache (the machine's RAM is shared); eager mode (no graph capture on CPU)
            kv_cache_memory_bytes=(256 << 20) if on_cpu else None,
            enforce_eager=on_cpu,
        )
    build_s = time.perf_counter() - t0
    try:
        return _measure(backend, requests, args.device, build_s)
    finally:
        backend.close()


def _worker(args: argparse.Namespace) -> None:
    """Inside another interpreter (e.g. .venv-vllm): run one backend, print its figures as JSON on the last line."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: peak memory is ours
    reqs = _requests(Path(args.test_file), Path(args.image_root), args.images, args.shots, args.prompt_style)
    print(json.dumps(run_backend(args.worker, args, reqs)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="Checkpoint folder (default: build a tiny random one of --family).")
    p.add_argument("--family", default="qwen2_vl")
    p.add_argument("--hidden-size", type=int, default=128, help="Tiny model width (multiple of 64).")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--test-file", help="Use this test file (with --image-root) instead of the synthetic one.")
    p.add_argument("--image-root")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--prompt-style", default="iadr1")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backends", default="tf1,tfb,vllm", help="Comma list of tf1 (batch 1), tfb (batched), vllm.")
    p.add_argument("--tf1-images", type=int, default=None, help="Images for batch 1 (default: all; it is slow).")
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    p.add_argument("--json", help="Also write the figures to this JSON file.")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)

    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    if args.model is None:
        from iadr1.models.tiny import build_tiny

        args.model = str(build_tiny(args.family, work / "model", hidden_size=args.hidden_size))
    if args.test_file is None:
        from iadr1.data.synthetic import make_dataset

        ds = make_dataset(work / "data", n_train=40, n_test=args.images, size=args.image_size)
        args.test_file, args.image_root = str(ds.test_file), str(ds.image_root)
    requests = _requests(Path(args.test_file), Path(args.image_root), args.images, args.shots, args.prompt_style)
    print(f"model {args.model}; {len(requests)} images; {args.max_new_tokens} new tokens max; device {args.device}")

    figures: dict[str, dict] = {}
    for kind in args.backends.split(","):
        if kind == "vllm" and os.path.abspath(args.vllm_python) != os.path.abspath(sys.executable):
            cmd = [args.vllm_python, __file__, "--worker", "vllm"]
            for k in ("model", "test_file", "image_root", "images", "shots", "prompt_style", "max_new_tokens"):
                cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
            cmd += ["--device", args.device, "--dtype", args.dtype, "--max-model-len", str(args.max_model_len)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"vllm: failed ({proc.stderr.strip().splitlines()[-1:]})")
                continue
            figures[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            reqs = requests[: args.tf1_images] if kind == "tf1" and args.tf1_images else requests
            figures[kind] = run_backend(kind, args, reqs)
        f = figures[kind]
        print(
            f"{kind:5s} steady {f['images_per_s']:8.2f} images/s  {f['prompt_tokens_per_s']:10.0f} prompt tok/s  "
            f"{f['generated_tokens_per_s']:8.0f} gen tok/s  peak {f['peak_memory_mb']:8.0f} MB  "
            f"({f['images']} images in {f['seconds']:.1f} s, {f['errors']} errors)"
        )
        if "startup_s" in f:
            print(
                f"      start-up {f['startup_s']:6.1f} s: building the backend {f['build_s']:.1f} s + its first "
                f"request {f['first_request_s']:.1f} s (warm-up)"
            )
    if "tf1" in figures and "tfb" in figures:
        print(f"batched / batch 1: {figures['tfb']['images_per_s'] / figures['tf1']['images_per_s']:.2f}x (goal >= 3)")
    if "tfb" in figures and "vllm" in figures:
        print(f"vLLM / batched: {figures['vllm']['images_per_s'] / figures['tfb']['images_per_s']:.2f}x (goal >= 1)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
