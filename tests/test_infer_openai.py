"""The openai backend against a real OpenAI-compatible HTTP server on loopback (tests/openai_stub.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import math

import pytest
from infer_helpers import make_bench, write_png
from PIL import Image

from iadr1.errors import ConfigError
from iadr1.infer.base import GenerationOptions, Request
from iadr1.infer.openai_backend import OpenAIBackend, encode_image
from iadr1.infer.runner import run_inference
from iadr1.prompts import inference_segments

SECRET = "sk-test-SECRET-0123456789abcdefXYZ"


@pytest.fixture
def server(openai_server):
    return openai_server  # conftest's: started, stopped, on loopback


@pytest.fixture
def backend_factory(server, monkeypatch):
    """An OpenAIBackend on the stub with tiny back-off; `sleeps` records every back-off delay."""
    monkeypatch.setenv("IADR1_TEST_KEY", SECRET)
    sleeps: list[float] = []

    def make(**kw):
        opts = kw.pop("options", GenerationOptions(max_new_tokens=600, prompt_style="api", logprobs=False))
        args = {"base_url": server.base_url, "api_key_env": "IADR1_TEST_KEY", "backoff_s": 0.01, "timeout_s": 5}
        b = OpenAIBackend("gpt-test", opts, **{**args, **kw})
        b.sleeps = sleeps
        b.sleep = sleeps.append
        return b

    return make


def _one_request(tmp_path, shots: int = 0) -> Request:
    q = write_png(tmp_path / "q.png", 1, size=(70, 50))
    refs = [write_png(tmp_path / f"r{i}.png", 10 + i, size=(30 + i, 20)) for i in range(shots)]
    return Request(key="q.png", segments=tuple(inference_segments(shots, "api")), images=(*refs, q))


def _run(backend, requests):
    return dict((r.key, res) for r, res in backend.generate(requests))


# --- retries and back-off --------------------------------------------------------------------------------------------
def test_429_and_500_are_retried_with_exponential_backoff(server, backend_factory, tmp_path):
    server.script.extend([{"status": 429}, {"status": 500}, {"status": 503}, {"reply": "Yes."}])
    b = backend_factory(retries=5)
    res = _run(b, [_one_request(tmp_path)])["q.png"]
    assert res.error is None and res.raw == "Yes."
    assert len(server.requests) == 4
    assert len(b.sleeps) == 3
    for attempt, delay in enumerate(b.sleeps):  # 0.01 * 2**attempt, plus up to 25% jitter
        assert 0.01 * 2**attempt <= delay <= 0.01 * 2**attempt * 1.25 + 1e-9
    assert res.prompt_tokens == 11 and res.completion_tokens == 3


def test_retry_after_header_is_honoured(server, backend_factory, tmp_path):
    server.script.extend([{"status": 429, "retry_after": "0.5"}])
    b = backend_factory()
    assert _run(b, [_one_request(tmp_path)])["q.png"].error is None
    assert b.sleeps and b.sleeps[0] >= 0.5


def test_gives_up_after_the_retry_budget(server, backend_factory, tmp_path):
    server.script.extend([{"status": 500}] * 3)
    b = backend_factory(retries=2)
    res = _run(b, [_one_request(tmp_path)])["q.png"]
    assert res.raw is None and res.error.startswith("gave up after 3 attempts; last: HTTP 500")
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server, backend_factory, tmp_path):
    server.script.extend([{"status": 400, "error_message": "bad image"}])
    b = backend_factory()
    res = _run(b, [_one_request(tmp_path)])["q.png"]
    assert res.error == "HTTP 400: bad image" and len(server.requests) == 1 and not b.sleeps


def test_slow_reply_times_out_and_is_retried(server, backend_factory, tmp_path):
    server.script.extend([{"sleep": 1.5}, {"reply": "No"}])
    b = backend_factory(timeout_s=0.4)
    res = _run(b, [_one_request(tmp_path)])["q.png"]
    assert res.error is None and res.raw == "No"
    assert len(server.requests) == 2 and len(b.sleeps) == 1
    assert server.requests[1]["t"] - server.requests[0]["t"] >= 0.35  # the client waited for its timeout


def test_refusals_are_retried(server, backend_factory, tmp_path):
    server.script.extend(
        [{"refuse": "I'm sorry, I can't help with that."}, {"refusal_field": "policy"}, {"reply": "No"}]
    )
    b = backend_factory()
    assert _run(b, [_one_request(tmp_path)])["q.png"].raw == "No"
    assert len(server.requests) == 3

    server.script.extend([{"refuse": "I'm sorry, I cannot analyze this image."}] * 2)
    res = _run(backend_factory(retries=1), [_one_request(tmp_path)])["q.png"]
    assert res.error.startswith("gave up after 2 attempts; last: refused: I'm sorry")
    assert res.raw == "I'm sorry, I cannot analyze this image."  # kept for inspection, still counted unanswered


def test_concurrency_is_bounded(server, backend_factory, tmp_path):
    server.script.extend([{"sleep": 0.15, "reply": "Yes"}] * 9)
    b = backend_factory(concurrency=3)
    reqs = [Request(key=f"k{i}", segments=(None, "Q"), images=(write_png(tmp_path / f"{i}.png", i),)) for i in range(9)]
    results = _run(b, reqs)
    assert len(results) == 9 and all(r.raw == "Yes" for r in results.values())
    assert 2 <= server.max_in_flight <= 3


def test_p_yes_from_returned_logprobs(server, backend_factory, tmp_path):
    steps = [
        ("<answer>", [("<answer>", -0.01)]),
        ("Yes", [("Yes", math.log(0.6)), (" No", math.log(0.2)), ("no", math.log(0.1))]),
        ("</answer>", [("</answer>", -0.01)]),
    ]
    server.script.append({"reply": "<answer>Yes</answer>", "logprobs": steps})
    opts = GenerationOptions(max_new_tokens=600, prompt_style="iadr1", logprobs=True)
    res = _run(backend_factory(options=opts), [_one_request(tmp_path)])["q.png"]
    assert res.p_yes == pytest.approx(0.6 / 0.9)
    body = server.requests[-1]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 20


# --- images ----------------------------------------------------------------------------------------------------------
def _decode(url: str) -> tuple[str, Image.Image]:
    head, data = url.split(",", 1)
    assert head.endswith(";base64")
    return head[len("data:") : -len(";base64")], Image.open(io.BytesIO(base64.b64decode(data)))


def test_k_shot_request_carries_k_plus_one_images_in_order(server, backend_factory, tmp_path):
    b = backend_factory()
    req = _one_request(tmp_path, shots=2)
    _run(b, [req])
    body = server.requests[0]["body"]
    assert body["model"] == "gpt-test" and body["max_tokens"] == 600 and body["temperature"] == 0
    parts = body["messages"][-1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds == ["image_url" if s is None else "text" for s in req.segments if s != ""]
    assert kinds.count("image_url") == 3
    assert [p["text"] for p in parts if p["type"] == "text"] == [s for s in req.segments if s]
    sizes = [_decode(p["image_url"]["url"])[1].size for p in parts if p["type"] == "image_url"]
    assert sizes == [(30, 20), (31, 20), (70, 50)]  # references first, in order, then the query
    assert parts[-1]["text"].endswith("Directly answer by yes or no.")
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"


def test_encode_image_mime_and_resize(tmp_path):
    png = write_png(tmp_path / "a.png", 0, size=(1000, 600))
    mime, data = encode_image(png, max_side=512)
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert mime == "image/png" and img.format == "PNG" and img.size == (512, 307)

    jpg = tmp_path / "b.jpg"
    Image.open(png).convert("RGB").resize((100, 60)).save(jpg, quality=90)
    mime, data = encode_image(jpg, max_side=512)
    assert mime == "image/jpeg" and base64.b64decode(data) == jpg.read_bytes()  # small enough: sent as is

    bmp = tmp_path / "c.bmp"
    Image.open(png).convert("L").resize((80, 40)).save(bmp)
    mime, data = encode_image(bmp, max_side=512)
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert mime == "image/png" and img.format == "PNG" and img.size == (80, 40)  # BMP is re-encoded


# --- keys ------------------------------------------------------------------------------------------------------------
def test_api_key_never_reaches_outputs_or_logs(server, monkeypatch, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("IADR1_TEST_KEY", SECRET)
    test_file, root, keys = make_bench(tmp_path, n=4)
    # the provider echoes the key in an error message, as real ones do for a bad key
    server.script.extend(
        [{"status": 401, "error_message": f"Incorrect API key provided: {SECRET}"}, {"status": 500}]
        + [{"reply": "Yes"}] * 6
    )
    summary = run_inference(
        model="gpt-test",
        backend="openai",
        test_file=test_file,
        image_root=root,
        out=tmp_path / "out",
        base_url=server.base_url,
        api_key_env="IADR1_TEST_KEY",
        backoff_s=0.0,
        concurrency=1,
        prompt_style="api",
    )
    assert summary.written == len(keys)
    lines = [json.loads(x) for x in summary.predictions.read_text().splitlines()]
    assert any("Incorrect API key provided" in (r["error"] or "") for r in lines)
    captured = capsys.readouterr()
    texts = [p.read_text() for p in (tmp_path / "out").iterdir()] + [captured.out, captured.err, caplog.text]
    for text in texts:
        assert SECRET not in text and SECRET[:8] not in text
    assert all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in server.requests)
    manifest = json.loads(summary.manifest.read_text())
    assert manifest["config"]["api_key_env"] == "IADR1_TEST_KEY"


def test_missing_key_is_a_config_error_except_on_loopback(server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        OpenAIBackend("m", base_url="https://api.example.invalid/v1", api_key_env="NO_SUCH_KEY_VAR")
    b = OpenAIBackend("m", base_url=server.base_url, api_key_env="NO_SUCH_KEY_VAR")  # e.g. a local `vllm serve`
    req = Request(key="k", segments=("hi",), images=())
    assert _run(b, [req])["k"].raw == "<answer>Yes</answer>"
