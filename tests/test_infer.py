"""`iadr1 infer`: the runner (resume, shards, broken images, configs), the transformers backend, P(yes)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from infer_helpers import make_bench

from iadr1.errors import ConfigError
from iadr1.infer.base import (
    Backend,
    GenerationOptions,
    Request,
    Result,
    answer_position,
    p_yes_from_candidates,
)
from iadr1.infer.runner import InferConfig, load_config, predictions_path, run_inference


class OracleBackend(Backend):
    """Answers from the path (defect -> yes) and records every request it saw."""

    name = "oracle"

    def __init__(self) -> None:
        self.seen: list[Request] = []

    def generate(self, requests):
        for r in requests:
            self.seen.append(r)
            defect = "/defect/" in r.key
            yield r, Result(raw=f"<think>x</think><answer>{'Yes' if defect else 'No'}</answer>", latency_s=0.01)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def bench(tmp_path):
    return make_bench(tmp_path, n=8)


# --- P(yes) ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pieces", "style", "expected"),
    [
        (["<think>", "ok", "</think>", "<answer>", "Yes", "</answer>"], "iadr1", 4),
        (["<", "answer", ">", " ", "No", "</answer>"], "iadr1", 4),  # split tag, whitespace token skipped
        (["<think>", "no answer tag"], "iadr1", None),
        (["\n", "Yes", "."], "baseline", 1),
        (["<answer>", "B", "</answer>"], "anomaly_r1", 1),
    ],
)
def test_answer_position(pieces, style, expected):
    assert answer_position(pieces, style) == expected


def test_p_yes_from_candidates():
    lp = math.log
    assert p_yes_from_candidates({"Yes": lp(0.5), " yes": lp(0.1), "No": lp(0.3), "maybe": lp(0.1)}, "iadr1") == (
        pytest.approx(0.6 / 0.9)
    )
    assert p_yes_from_candidates([("No", lp(0.2))], "iadr1") == 0.0
    assert p_yes_from_candidates({"the": lp(0.9)}, "iadr1") is None
    assert p_yes_from_candidates({"A": lp(0.2), "B": lp(0.6), "Yes": lp(0.2)}, "anomaly_r1") == pytest.approx(0.25)


# --- runner with a scripted backend ----------------------------------------------------------------------------------
def test_run_records_every_image_once_and_errors(bench, tmp_path):
    test_file, root, keys = bench
    engine = OracleBackend()
    s = run_inference(model="m", test_file=test_file, image_root=root, out=tmp_path / "o", engine=engine)
    lines = _lines(s.predictions)
    assert s.predictions == tmp_path / "o" / "predictions.jsonl"
    assert [r["image"] for r in lines if not r["error"]] == keys[:-2]  # file order, one each
    errors = {r["image"]: r["error"] for r in lines if r["error"]}
    assert errors == {
        keys[-2]: "query image: corrupt image (image file is truncated)",
        keys[-1]: "query image: missing file",
    }
    assert all(r["letter"] == "E" and r["raw"] is None for r in lines if r["error"])
    assert s.selected == 10 and s.written == 10 and s.errors == 2 and s.yes == 4 and s.no == 4
    assert s.accuracy == 1.0  # the oracle is right on every readable image
    manifest = json.loads(s.manifest.read_text())
    assert manifest["config"]["backend"] == "transformers" and manifest["summary"]["written"] == 10

    # Rerun: answered images are skipped; the two error lines are retried (and replaced, not duplicated).
    engine2 = OracleBackend()
    s2 = run_inference(model="m", test_file=test_file, image_root=root, out=tmp_path / "o", engine=engine2)
    assert s2.skipped == 8 and s2.written == 2 and engine2.seen == []
    lines2 = _lines(s2.predictions)
    assert len(lines2) == 10 and len({r["image"] for r in lines2}) == 10


def test_k_shot_requests_carry_k_plus_one_images_in_order(bench, tmp_path):
    test_file, root, keys = bench
    entries = json.loads(test_file.read_text())
    for templates in ("random", "similar"):
        engine = OracleBackend()
        run_inference(
            model="m",
            test_file=test_file,
            image_root=root,
            out=tmp_path / templates,
            shots=2,
            templates=templates,
            engine=engine,
        )
        assert len(engine.seen) == 8
        for r in engine.seen:
            refs = entries[r.key][f"{templates}_templates"][:2]
            assert [p.relative_to(root).as_posix() for p in r.images] == [*refs, r.key]
            assert sum(s is None for s in r.segments) == 3


def test_too_few_templates_and_bad_reference_images_are_recorded(tmp_path):
    test_file, root, keys = make_bench(tmp_path, n=4, n_templates=2, corrupt=False, missing=False)
    s = run_inference(
        model="m", test_file=test_file, image_root=root, out=tmp_path / "o3", shots=3, engine=OracleBackend()
    )
    assert s.errors == 4
    assert {r["error"] for r in _lines(s.predictions)} == {"3-shot needs 3 random_templates, the test file has 2"}
    (root / "DS/cls/template/001.png").write_bytes(b"not a png")
    s = run_inference(
        model="m", test_file=test_file, image_root=root, out=tmp_path / "o1", shots=2, engine=OracleBackend()
    )
    errors = [r["error"] for r in _lines(s.predictions)]
    assert all(e.startswith("reference image DS/cls/template/001.png: not an image") for e in errors)


def test_shards_partition_the_test_set(bench, tmp_path):
    test_file, root, keys = bench
    seen: list[str] = []
    for i in range(3):
        s = run_inference(
            model="m",
            test_file=test_file,
            image_root=root,
            out=tmp_path / "sh",
            shard=i,
            num_shards=3,
            limit=9,
            engine=OracleBackend(),
        )
        assert s.predictions.name == f"predictions.shard{i}of3.jsonl"
        seen += [r["image"] for r in _lines(s.predictions)]
    assert sorted(seen) == sorted(keys[:9])  # limit first, then disjoint shards covering it
    assert predictions_path("x", 0, 1) == Path("x/predictions.jsonl")


def test_resume_refuses_a_file_of_another_configuration(bench, tmp_path):
    test_file, root, _ = bench
    kw = {"model": "m", "test_file": test_file, "image_root": root, "out": tmp_path / "o"}
    run_inference(limit=2, engine=OracleBackend(), **kw)
    with pytest.raises(ConfigError, match="shots 0 here, 1 in this run"):  # the manifest says so first
        run_inference(shots=1, engine=OracleBackend(), **kw)
    (tmp_path / "o" / "predictions.run.json").write_text(
        (tmp_path / "o" / "predictions.run.json")
        .read_text()
        .replace('"shots": 0', '"shots": 1')
        .replace('"template_kind": null', '"template_kind": "random"')
    )  # a manifest edited by hand: the lines themselves still say what they are
    with pytest.raises(ConfigError, match="1-shot: pass --overwrite to start over, or use another --out"):
        run_inference(shots=1, engine=OracleBackend(), **kw)


# --- configuration ---------------------------------------------------------------------------------------------------
def test_yaml_config_with_cli_overrides(tmp_path):
    cfg_file = tmp_path / "infer.yaml"
    cfg_file.write_text("model: ckpt\ntest-file: t.json\nimage_root: imgs\nout: o\nshots: 1\nbackend: vllm\n")
    cfg = load_config(cfg_file, shots=0, batch_size=None, prompt_style="baseline")
    assert cfg.shots == 0 and cfg.backend == "vllm" and cfg.prompt_style == "baseline" and cfg.batch_size == 8
    assert cfg.generation_options().max_new_tokens == 512 and cfg.generation_options().logprobs
    api = load_config(cfg_file, backend="openai")
    assert api.generation_options().max_new_tokens == 600 and not api.generation_options().logprobs
    with pytest.raises(ConfigError, match="shard 2 is out of range for 2 shards"):
        load_config(cfg_file, shard=2, num_shards=2)
    with pytest.raises(ConfigError, match="option 'backend'"):
        load_config(cfg_file, backend="tgi")
    cfg_file.write_text("model: ckpt\nunknown_option: 1\n")
    with pytest.raises(ConfigError, match="unknown option 'unknown_option'"):
        load_config(cfg_file)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    assert InferConfig(model="m", test_file="t", image_root="r", out="o").predictions_path == Path(
        "o/predictions.jsonl"
    )


# --- the transformers backend ----------------------------------------------------------------------------------------
def test_transformers_backend_end_to_end_and_exact_p_yes(tiny_model, bench, tmp_path):
    import torch

    from iadr1.infer.transformers_backend import TransformersBackend
    from iadr1.models.loading import render_prompt

    test_file, root, keys = bench
    path = tiny_model("qwen2_vl")
    opts = GenerationOptions(max_new_tokens=6, prompt_style="baseline")
    engine = TransformersBackend(path, opts, batch_size=4)
    s = run_inference(
        model=str(path),
        test_file=test_file,
        image_root=root,
        out=tmp_path / "o",
        prompt_style="baseline",
        shots=1,
        engine=engine,
    )
    lines = _lines(s.predictions)
    assert s.written == 10 and s.errors == 2 and len(lines) == 10
    ok = [r for r in lines if not r["error"]]
    assert all(isinstance(r["raw"], str) and r["latency_s"] > 0 and 0 < r["p_yes"] < 1 for r in ok)

    # P(yes) is the softmax mass of every yes-token against every no-token at the first generated position.
    req = Request(
        key=keys[0], segments=(None, "Are there any defects? Please answer by yes or no."), images=(root / keys[0],)
    )
    (_, res) = next(iter(engine.generate([req])))
    from PIL import Image

    batch = engine.processor(
        text=[render_prompt(engine.processor, list(req.segments))],
        images=[[Image.open(req.images[0]).convert("RGB")]],
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = engine.model(**batch.to(engine.device)).logits[0, -1]
    probs = torch.softmax(logits.float(), -1)
    yes_ids, no_ids = engine._yes_no_ids()
    assert yes_ids and no_ids
    p_yes, p_no = probs[yes_ids].sum().item(), probs[no_ids].sum().item()
    assert res.p_yes == pytest.approx(p_yes / (p_yes + p_no), rel=1e-4)
    assert res.token_ids[0] == int(logits.argmax())  # greedy


def test_batched_generation_matches_batch_of_one(tiny_model, bench):
    from iadr1.infer.transformers_backend import TransformersBackend

    _, root, keys = bench
    path = tiny_model("qwen2_5_vl")
    reqs = [Request(key=k, segments=(None, "Q?"), images=(root / k,)) for k in keys[:4]]
    opts = GenerationOptions(max_new_tokens=5, prompt_style="baseline")
    one = {r.key: x.token_ids for r, x in TransformersBackend(path, opts, batch_size=1).generate(reqs)}
    many = {r.key: x.token_ids for r, x in TransformersBackend(path, opts, batch_size=4).generate(reqs)}
    assert one == many  # left padding does not change greedy tokens (fp32)


# --- the command line ------------------------------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "iadr1", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("infer", "--model", "m", "--test-file", str(tmp_path / "t.json"))
    assert r.returncode == 1 and "missing --image-root, --out" in r.stderr and "Traceback" not in r.stderr
    r = _cli(
        "infer", "--model", str(tmp_path), "--test-file", str(tmp_path / "t.json"), "--image-root", ".", "--out", "o"
    )
    assert r.returncode == 1 and "no config.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.e2e
def test_sigkill_mid_run_then_resume_without_duplicates(tiny_model, tmp_path):
    test_file, root, keys = make_bench(tmp_path, n=40, corrupt=True, missing=True)
    out = tmp_path / "o"
    args = [
        sys.executable, "-m", "iadr1", "infer", "--backend", "transformers", "--model", str(tiny_model("qwen2_vl")),
        "--test-file", str(test_file), "--image-root", str(root), "--out", str(out), "--batch-size", "1",
        "--max-new-tokens", "8", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    pred = out / "predictions.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if pred.exists() and pred.read_text().count("\n") >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    n_before = pred.read_text().count("\n")
    assert 3 <= n_before < len(keys)
    with pred.open("a") as f:  # what a kill in the middle of a write leaves: a torn last line
        f.write('{"image": "DS/cls/test/good/000.png", "raw": "<think>hal')

    rerun = [*args[:-1], "--batch-size", "8"]  # a bigger batch finishes sooner; the prompts are the same
    r = subprocess.run(rerun, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _lines(pred)
    assert len(lines) == len(keys) and sorted(r["image"] for r in lines) == sorted(keys)
    assert "written now" in r.stderr and "images/s" in r.stderr  # the summary table
