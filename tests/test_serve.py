"""`iadr1 serve`: vLLM's OpenAI-compatible server started from .venv-vllm with the model's settings, spoken to by
`iadr1 predict --backend openai`, answering as the in-process engine does (greedy tokens of a tiny model)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers_trees import texture, write_image
from test_infer_vllm import vllm_python  # noqa: F401 (the fixture: skip locally, fail in CI without .venv-vllm)

from iadr1.infer.base import GenerationOptions, Request
from iadr1.infer.predict import run_predict
from iadr1.infer.runner import InferConfig
from iadr1.infer.serve import serve_command
from iadr1.prompts import inference_segments


def test_serve_command_carries_the_models_settings(tiny_model, tmp_path):
    from iadr1.train.config import SFTRunConfig, save_config

    model = shutil.copytree(tiny_model("qwen2_vl"), tmp_path / "trained")
    save_config(SFTRunConfig(model="base", dataset="d.jsonl", output_dir=model, max_pixels=12544))
    argv, notes = serve_command(model, port=8123, max_images=3, require_vllm=False)
    line = " ".join(argv)
    assert argv[1:3] == ["serve", str(model)]
    assert "--served-model-name trained" in line and "--port 8123" in line and "--max-model-len 4096" in line
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == '{"image": 3}'
    assert argv[argv.index("--mm-processor-kwargs") + 1] == '{"max_pixels": 12544}'  # the trained cap
    assert any(n.startswith("max_pixels 12544") for n in notes)
    argv, _ = serve_command(tiny_model("llava_onevision"), require_vllm=False)
    assert "--mm-processor-kwargs" not in argv  # a fixed-resolution tower: no cap to pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
@pytest.mark.e2e
def test_served_model_answers_as_transformers_does(vllm_python, tiny_model, tmp_path):  # noqa: F811
    from iadr1.infer.transformers_backend import TransformersBackend

    model = str(tiny_model("qwen2_vl"))
    images = [write_image(tmp_path / "imgs" / f"{i}.png", texture(str(i), 64)) for i in range(3)]
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    env.pop("PYTHONPATH", None)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            # fp32 as transformers on CPU; a small KV cache and memory share: the CPU build wants 92% of the RAM.
            [str(vllm_python), "-m", "iadr1", "serve", "--model", model, "--port", str(port), "--served-name",
             "tiny", "--dtype", "float32", "--", "--enforce-eager", "--gpu-memory-utilization", "0.3",
             "--kv-cache-memory-bytes", str(256 * 2**20)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                        assert json.loads(r.read())["data"][0]["id"] == "tiny"
                        break
                except OSError:
                    assert server.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, "the server did not come up in 10 minutes"
                    time.sleep(2)
            cfg = InferConfig(model="tiny", test_file=tmp_path / "x", image_root=tmp_path, out=tmp_path / "pred",
                              backend="openai", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="NO_SUCH_KEY",
                              max_side=0, max_new_tokens=12, concurrency=2, retries=0)  # fmt: skip
            summary = run_predict(cfg, [tmp_path / "imgs"], gallery=False)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
    assert f"{Path(vllm_python).with_name('vllm')} serve {model}" in log_path.read_text()  # the command, printed
    served = {Path(r["image"]).name: r["raw"] for r in summary.rows}
    assert summary.errors == 0 and len(served) == 3
    opts = GenerationOptions(max_new_tokens=12, logprobs=False)
    reqs = [Request(key=p.name, segments=tuple(inference_segments(0)), images=(p,)) for p in images]
    local = {r.key: res.raw for r, res in TransformersBackend(model, opts, batch_size=1, dtype="fp32").generate(reqs)}
    # A random tiny model can end on half a UTF-8 character: transformers decodes it to U+FFFD, vLLM's incremental
    # detokenizer holds it back. Otherwise the texts are the same.
    assert {k: v.rstrip("\ufffd") for k, v in served.items()} == {k: v.rstrip("\ufffd") for k, v in local.items()}
    assert sum(served[k] == local[k] for k in local) >= 1
