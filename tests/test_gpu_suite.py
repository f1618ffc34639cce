"""benchmarks/gpu_suite.py on CPU: the same code as on the GPU machine, on tiny shapes of the same architectures.

The suite's figures here mean nothing (a 2-core CPU, toy models); what is checked is the logic: one JSON with every
planned measurement, figures that are positive and agree with each other (images/s x seconds = images, a fixed output
length, MFU = FLOP/s over the peak, samples/s x seconds per step = samples per step), errors and skips recorded per
measurement (a simulated out-of-memory at the largest batch, a measurement that hangs until the budget), and the FLOP
count of the real architectures against the figure docs/performance.md uses (about 16 TFLOP of prefill per native
1024x1024 image for Qwen2.5-VL-3B).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"


def suite_module():
    if "gpu_suite" not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_suite"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_suite"]


def run_suite(out: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--small", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_suite.json").read_text()), seconds


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def test_small_suite_runs_everything_and_its_figures_agree(tmp_path):
    mod = suite_module()
    st = mod.Settings.small()
    result, seconds = run_suite(tmp_path / "out", "--peak-tflops", "1", "--budget-s", "200")

    assert result["complete"] and result["counts"] == {"ok": 2 * 9}, result["counts"]
    assert result["small"] and result["device"] == "cpu" and result["peak_bf16_flops"] == 1e12
    assert result["machine"]["torch_version"] and result["machine"]["trl_version"]
    assert set(result["models"]) == {"qwen2_5_vl_3b", "qwen2_vl_2b"}
    assert seconds < 200 and result["elapsed_s"] <= seconds
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_suite.json", "gpu_suite.log"]

    for name, model in result["models"].items():
        assert model["hub_config"] == mod.ARCHS[name]["hub"]
        assert model["model_type"] == mod.ARCHS[name]["config"]["model_type"] and model["params"] > 0
        ms = model["measurements"]
        assert list(ms) == [m["id"] for m in mod.plan_for(name, st, None)]  # in the plan's order, nothing dropped
        for mid, r in ms.items():
            assert r["status"] == "ok", (name, mid, r.get("error"))
            assert r["peak_rss_gib"] > 0 and r["peak_gpu_gib"] is None and r["at_s"] > 0
            if r["kind"] == "infer":
                s = r["settings"]
                assert r["images"] == s["batch"] * s["reps"]
                assert close(r["images_per_s"] * r["seconds"], r["images"])
                assert close(r["prompt_tokens_per_s"] * r["seconds"], r["prompt_tokens"])
                assert r["fixed_length"] and r["generated_tokens"] == r["images"] * st.new_tokens
                assert close(r["generated_tokens_per_s"] * r["seconds"], r["generated_tokens"])
                assert close(r["tflops_per_s"] * r["seconds"], r["model_tflop"]) and r["model_tflop"] > 0
                assert close(r["mfu"], r["tflops_per_s"])  # against a 1 TFLOP/s peak
                # 112 px native: 8x8 patches merged 2x2 -> 16 tokens; capped at 56x56 -> 4
                side = 112 if s["max_pixels"] is None else 56
                assert r["image_size_used"] == [side, side]
                assert r["image_tokens_per_image"] == (side // 28) ** 2
                assert r["prompt_tokens"] > r["images"] * r["image_tokens_per_image"]  # plus the question's text
            else:
                rs = r["settings_resolved"]
                assert r["timed_steps"] == r["settings"]["steps"] - 1 == len(r["step_seconds"])
                assert close(r["seconds_per_step"], statistics.median(r["step_seconds"]), 1e-3)
                assert close(r["samples_per_s"] * r["seconds_per_step"], r["samples_per_step"])
                assert r["samples_per_step"] == rs["batch_size"] * rs["grad_accum"]
                assert rs["lora"] == r["settings"]["lora"] and rs["gradient_checkpointing"] and rs["freeze_vision"]
                assert 0 < r["first_step_end_s"] < r["seconds"] and r["tokens_per_step"] > 0
                if r["kind"] == "sft":  # the published PA-SFT batch: 1 x accumulation 2, images capped at 512x512
                    assert (rs["batch_size"], rs["grad_accum"], rs["max_pixels"]) == (1, 2, 512 * 512)
                else:
                    assert r["samples_per_step"] == st.grpo_batch * st.grpo_accum
                    assert r["completion_length"] == st.grpo_tokens  # fixed: EOS suppressed
                    assert close(r["prompts_per_s"] * 4, r["samples_per_s"])
                    assert rs["num_generations"] == 4 and rs["beta"] == 0.04


def test_errors_and_the_budget_are_recorded_per_measurement(tmp_path):
    """An out-of-memory at batch 8 (simulated) is that measurement's error, not the run's; a measurement that runs
    past the budget is killed and recorded as a timeout, and the one after it as skipped."""
    only = "infer_native_b1,infer_native_b4,infer_native_b8,sft_full,grpo_full"
    faults = {"IADR1_GPU_SUITE_FAULTS": "oom:8,hang:sft_full"}
    budget = 25
    args = ("--models", "qwen2_5_vl_3b", "--only", only, "--budget-s", str(budget))
    result, seconds = run_suite(tmp_path / "out", *args, env=faults)

    ms = result["models"]["qwen2_5_vl_3b"]["measurements"]
    assert {k: v["status"] for k, v in ms.items()} == {
        "infer_native_b1": "ok",
        "infer_native_b4": "ok",
        "infer_native_b8": "error",
        "sft_full": "timeout",
        "grpo_full": "skipped",
    }
    assert "out of memory" in ms["infer_native_b8"]["error"]
    assert "budget" in ms["grpo_full"]["reason"]
    assert not result["complete"] and result["counts"] == {"error": 1, "ok": 2, "skipped": 1, "timeout": 1}
    assert ms["infer_native_b4"]["images_per_s"] > 0  # what was measured before the failures is kept
    assert seconds < budget + 20


def test_flop_count_of_the_real_architectures():
    """The published sizes (3.75 B, 2.21 B and 8.29 B parameters) and the FLOPs of one native 1024x1024 image."""
    import torch

    mod = suite_module()
    expected = {"qwen2_5_vl_3b": 3.755e9, "qwen2_vl_2b": 2.209e9, "qwen2_5_vl_7b": 8.292e9}
    prefill = {}
    for name, params in expected.items():
        model, _, _ = mod.make_model(name, small=False, device="meta", dtype=torch.bfloat16)
        fm = mod.flop_model(model, model.config.vision_config, model.config.text_config)
        assert close(fm.params_total, params, 1e-3), (name, fm.params_total)
        assert model.config.text_config.vocab_size == mod.ARCHS[name]["config"]["vocab_size"]
        patches, tokens = 74 * 74, 37 * 37 + 60  # 1036x1036 after the processor's 28 px rounding; 60 text tokens
        prefill[name] = fm.vision(patches) + fm.prefill(tokens)
        # Dense layers dominate: 2 x parameters x tokens is most of it, attention the rest.
        assert prefill[name] > 2 * fm.llm_dense * tokens + 2 * fm.vis_dense * patches
    assert 15e12 < prefill["qwen2_5_vl_3b"] < 17e12  # docs/performance.md: about 16.5 TFLOP
    assert 15e12 < prefill["qwen2_vl_2b"] < 17e12  # fewer language-model FLOPs, but full attention in all 32 blocks
