"""Images read ahead of the engine (`iadr1.infer.prefetch`): order kept, look-ahead bounded, errors where and as an
inline read gives them, the same pixels and the same predictions as inline; and the run's start-up and steady rate.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import make_bench, write_png

from iadr1.errors import DataError
from iadr1.infer.base import Backend, GenerationOptions, Request, Result, prefetch_images, sized_images
from iadr1.infer.prefetch import default_workers, prefetch, resolve_workers
from iadr1.infer.runner import _Timing, load_config, run_inference

SEGMENTS = (None, "Are there any defects? Please answer by yes or no.")


class Counted:
    """An iterable of 0..n-1 that records how many items were taken from it."""

    def __init__(self, n: int):
        self.n, self.taken = n, 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            yield i


def _slow_square(i: int) -> int:
    time.sleep(random.uniform(0, 0.004))
    return i * i


# --- the helper ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1, 4])
def test_results_come_in_the_order_of_the_items(workers):
    random.seed(0)
    got = [(i, f.result()) for i, f in prefetch(range(60), _slow_square, workers, ahead=7)]
    assert got == [(i, i * i) for i in range(60)]


@pytest.mark.parametrize(("workers", "ahead"), [(1, 1), (2, 3), (4, 8)])
def test_at_most_ahead_items_are_taken_before_the_consumer_asks(workers, ahead):
    items = Counted(50)
    stream = prefetch(items, _slow_square, workers, ahead=ahead)
    assert items.taken == 0  # nothing is read before the first request for work
    yielded = 0
    for _i, f in stream:
        yielded += 1
        assert items.taken - yielded <= ahead - 1  # the pool holds at most `ahead`, the one yielded included
        time.sleep(0.001)  # a slow consumer: the pool must not run away
        f.result()
    assert yielded == items.taken == 50


def test_the_default_look_ahead_is_twice_the_workers():
    items = Counted(100)
    stream = prefetch(items, _slow_square, 3)
    next(stream)
    assert items.taken == 6


def test_inline_reads_at_result_in_the_consumers_thread():
    calls: list[tuple[int, str]] = []

    def fn(i):
        calls.append((i, threading.current_thread().name))
        return i

    stream = prefetch(range(3), fn, 0)
    i, f = next(stream)
    assert calls == []  # workers=0 is the old inline path: nothing runs before the backend needs it
    assert f.result() == 0 and calls == [(0, threading.current_thread().name)]


@pytest.mark.parametrize("workers", [0, 3])
def test_an_error_raises_at_result_as_an_inline_call_does(workers):
    def fn(i):
        if i % 4 == 1:
            raise DataError(f"img{i}.png: corrupt image (broken data stream)")
        return i

    seen = []
    for _i, f in prefetch(range(9), fn, workers):
        try:
            seen.append(f.result())
        except DataError as e:
            seen.append(str(e))
    bad = "img{}.png: corrupt image (broken data stream)".format
    assert seen == [0, bad(1), 2, 3, 4, bad(5), 6, 7, 8]


def test_closing_the_stream_stops_reading_and_ends_the_threads():
    before = set(threading.enumerate())  # other tests' pools may still be winding down
    items = Counted(1000)
    stream = prefetch(items, _slow_square, 2, ahead=4)
    for _ in range(3):
        next(stream)
    stream.close()
    assert items.taken <= 3 + 4
    assert not [t for t in threading.enumerate() if t.name.startswith("iadr1-prefetch") and t not in before]


def test_worker_counts():
    assert 1 <= default_workers() <= 8
    assert resolve_workers(None) == default_workers() and resolve_workers(0) == 0 and resolve_workers(3) == 3
    with pytest.raises(ValueError, match="0 \\(inline\\) or more"):
        resolve_workers(-1)
    with pytest.raises(Exception, match="image_workers"):
        load_config(None, model="m", test_file="t.json", image_root=".", out="o", image_workers=-1)


def test_prefetched_images_are_the_inline_ones(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", i, size=(300 + i, 200)) for i in range(5)]
    requests = [Request(key=str(i), segments=(None, None, "q"), images=(paths[0], p)) for i, p in enumerate(paths)]
    opts = GenerationOptions(perturb=())
    for r, f in prefetch_images(requests, opts, 4900, 28, workers=3):
        want = sized_images(r, opts, 4900, 28)
        got = f.result()
        assert [im.size for im in got] == [im.size for im in want]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True))


# --- the backends: the same pixels, results and errors with and without the pool -------------------------------------
def _requests(tmp_path: Path) -> list[Request]:
    good = [write_png(tmp_path / f"q{i}.png", i, size=(150 + 7 * i, 100)) for i in range(5)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:200])  # passes no check: the backend meets it (as if changed on disk)
    paths = [good[0], corrupt, *good[1:]]
    return [Request(key=p.name, segments=SEGMENTS, images=(p,)) for p in paths]


def test_transformers_backend_answers_alike_with_and_without_the_pool(tiny_model, tmp_path):
    import torch

    from iadr1.infer.transformers_backend import TransformersBackend

    requests = _requests(tmp_path)
    opts = GenerationOptions(max_new_tokens=3, prompt_style="baseline")
    runs = {}
    for workers in (0, 2):
        engine = TransformersBackend(tiny_model("qwen2_vl"), opts, batch_size=3, max_pixels=4900, image_workers=workers)
        assert engine.image_workers == workers
        runs[workers] = [(r.key, res.raw, res.token_ids, res.p_yes, res.error) for r, res in engine.generate(requests)]
        good = [r for r in requests if r.key != "corrupt.png"][:2]
        inline = engine.inputs(good)
        ahead = engine.inputs(good, [f.result() for _, f in prefetch_images(good, opts, 4900, 28, workers=2)])
        assert torch.equal(inline["pixel_values"], ahead["pixel_values"])
        assert torch.equal(inline["image_grid_thw"], ahead["image_grid_thw"])
    assert runs[0] == runs[2]
    assert [k for k, *_ in runs[2]] == [r.key for r in requests]  # the order of the requests
    errors = [e for *_, e in runs[2] if e]
    assert len(errors) == 1 and errors[0].startswith("DataError: ") and "corrupt.png: " in errors[0]


class _EngineLLM:
    """Stands in for `vllm.LLM` with the enqueue/step API: records what was queued and how many between two steps;
    answers each request with the mean of its pixels, a few per step."""

    def __init__(self, **kwargs) -> None:
        self.queued: list[tuple[str, list]] = []
        self.waiting: list[str] = []
        self.chunks: list[int] = [0]
        self.llm_engine = self
        self.model_config = types.SimpleNamespace(hf_config=types.SimpleNamespace(eos_token_id=0), model="none")

    def enqueue(self, prompts, params, use_tqdm=False):
        ids = []
        for p in prompts:
            rid = str(len(self.queued))
            self.queued.append((rid, p["multi_modal_data"]["image"]))
            self.waiting.append(rid)
            ids.append(f"{rid}-0abc")
        self.chunks[-1] += len(prompts)
        return ids

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def step(self):
        self.chunks.append(0)
        done, self.waiting = self.waiting[:3], self.waiting[3:]
        images = dict(self.queued)
        return [
            types.SimpleNamespace(
                request_id=rid,
                finished=True,
                prompt_token_ids=[1, 2],
                outputs=[
                    types.SimpleNamespace(token_ids=[5], text=f"{np.asarray(images[rid][0]).mean():.6f}", logprobs=None)
                ],
            )
            for rid in done
        ]


def test_vllm_backend_queues_alike_with_and_without_the_pool(tiny_model, tmp_path, monkeypatch):
    import sys

    from iadr1.infer import vllm_backend
    from iadr1.infer.vllm_backend import VLLMBackend

    module = types.ModuleType("vllm")
    module.LLM = _EngineLLM
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_backend, "ENQUEUE_CHUNK", 2)
    requests = _requests(tmp_path) * 3
    opts = GenerationOptions(max_new_tokens=2, logprobs=False)
    runs = {}
    for workers in (0, 3):
        engine = VLLMBackend(tiny_model("qwen2_vl"), opts, max_pixels=4900, image_workers=workers, queue_size=5)
        results = list(engine.generate(requests))
        runs[workers] = sorted((r.key, res.raw, res.error) for r, res in results)
        good = [r for r in requests if r.key != "corrupt.png"]
        want = [sized_images(r, opts, 4900, engine.image_factor) for r in good]
        got = [images for _, images in engine.llm.queued]
        assert len(got) == len(want)  # queued in the order of the requests, the same pixels
        assert all(np.array_equal(np.asarray(a[0]), np.asarray(b[0])) for a, b in zip(got, want, strict=True))
        assert max(engine.llm.chunks) <= 2  # at most ENQUEUE_CHUNK queued between two engine steps
    assert runs[0] == runs[3]
    errors = {e for _, _, e in runs[3] if e}
    assert len(errors) == 1 and next(iter(errors)).startswith("DataError: ")


# --- the runner: the same predictions with the checks in the pool ----------------------------------------------------
class _MeanBackend(Backend):
    """Reads each request's images as the local backends do (through the pool) and answers their mean."""

    name = "mean"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.options = GenerationOptions()

    def generate(self, requests):
        for r, f in prefetch_images(requests, self.options, None, 1, self.workers):
            means = [round(float(np.mean(im)), 4) for im in f.result()]
            yield r, Result(raw=f"<answer>{'Yes' if '/defect/' in r.key else 'No'}</answer>{means}")


@pytest.mark.parametrize("shots", [0, 1])
def test_runs_with_and_without_the_pool_write_the_same_lines(tmp_path, shots):
    test_file, root, keys = make_bench(tmp_path, n=12)  # + a corrupt and a missing image
    lines = {}
    for workers in (0, 3):
        out = tmp_path / f"w{workers}"
        s = run_inference(
            model="m", test_file=test_file, image_root=root, out=out, shots=shots, image_workers=workers,
            engine=_MeanBackend(workers),
        )  # fmt: skip
        assert s.written == len(keys) and s.errors == 2
        rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        lines[workers] = {r["image"]: {k: v for k, v in r.items() if k != "latency_s"} for r in rows}
        assert json.loads((out / "predictions.run.json").read_text())["config"]["image_workers"] == workers
    assert lines[0] == lines[3]
    assert lines[3][keys[-1]]["error"] == "query image: missing file"
    assert lines[3][keys[-2]]["error"].startswith("query image: corrupt image")


def test_a_rerun_with_another_worker_count_resumes(tmp_path):
    test_file, root, keys = make_bench(tmp_path, n=6, corrupt=False, missing=False)
    kw = {"model": "m", "test_file": test_file, "image_root": root, "out": tmp_path / "o"}
    run_inference(**kw, limit=3, image_workers=0, engine=_MeanBackend(0))
    s = run_inference(**kw, image_workers=4, engine=_MeanBackend(4))
    assert s.skipped == 3 and s.written == 3


# --- start-up and steady rate ----------------------------------------------------------------------------------------
def test_the_steady_rate_counts_from_the_moment_the_backend_is_ready():
    t = _Timing()
    t.ready = 10.0
    for i in range(4):  # continuous batching: nothing for 2 s, then 4 results at once, then one every 0.5 s
        t.arrived(12.0 + 1e-4 * i)
    for i in range(1, 5):
        t.arrived(12.0 + 0.5 * i)
    assert t.first == 12.0 and t.results == 8
    assert t.steady_rate() == pytest.approx(8 / 4.0)  # not 7 results / 2 s from the first one
    assert _Timing().steady_rate() is None


class _Paced(Backend):
    """Answers after a delay (its first request's latency), then one result every `step` seconds."""

    name = "paced"

    def __init__(self, delay: float, step: float) -> None:
        self.delay, self.step = delay, step

    def generate(self, requests):
        time.sleep(self.delay)
        for i, r in enumerate(requests):
            if i:
                time.sleep(self.step)
            yield r, Result(raw="<answer>No</answer>")


def test_the_summary_reports_start_up_and_steady_rate(tmp_path):
    test_file, root, _ = make_bench(tmp_path, n=6, corrupt=False, missing=False)
    kw = {"model": "m", "test_file": test_file, "image_root": root, "out": tmp_path / "o"}
    s = run_inference(**kw, engine=_Paced(0.3, 0.02))
    assert s.engine_s == 0.0 and 0 <= s.startup_s < s.first_result_s  # a backend passed in is built already
    assert s.first_result_s - s.startup_s >= 0.3
    assert 0 < s.steady_images_per_s <= 6 / (0.3 + 5 * 0.02)
    assert s.elapsed_s >= s.first_result_s
    nothing = run_inference(**kw, engine=_Paced(0, 0))  # all answered: no backend ran
    assert nothing.startup_s is None and nothing.first_result_s is None and nothing.steady_images_per_s is None


# --- the vLLM backend's CPU defaults and its own decoding (no vLLM needed) -------------------------------------------
@pytest.fixture
def recording_vllm(fake_vllm, monkeypatch):
    """`fake_vllm` on a machine the backend takes for a CPU, VLLM_ENABLE_V1_MULTIPROCESSING unset."""
    from iadr1.infer import vllm_backend

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setattr(vllm_backend, "vllm_on_cpu", lambda: True)
    return fake_vllm


def test_vllm_on_a_cpu_runs_eager_in_this_process_by_default(tiny_model, recording_vllm, monkeypatch):
    from iadr1.infer import vllm_backend
    from iadr1.infer.vllm_backend import VLLMBackend

    model = tiny_model("qwen2_vl")
    engine = VLLMBackend(model, GenerationOptions())
    assert recording_vllm.kwargs["enforce_eager"] is True and recording_vllm.multiprocessing == "0"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # set while vLLM builds its engine only
    assert any(n.startswith("vllm on CPU: the engine runs eager") for n in engine.notes)
    assert engine.params["detokenize"] is False  # iadr1 decodes the text and the candidates itself

    VLLMBackend(model, GenerationOptions(), enforce_eager=False)  # asked for: compiled, still in this process
    assert recording_vllm.kwargs["enforce_eager"] is False and recording_vllm.multiprocessing == "0"
    VLLMBackend(model, GenerationOptions(), tensor_parallel_size=2)  # several devices: vLLM's own processes
    assert recording_vllm.multiprocessing is None
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's choice wins
    VLLMBackend(model, GenerationOptions())
    assert recording_vllm.multiprocessing == "1"

    monkeypatch.setattr(vllm_backend, "vllm_on_cpu", lambda: False)  # a GPU: as before
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    gpu = VLLMBackend(model, GenerationOptions())
    assert recording_vllm.kwargs["enforce_eager"] is False and recording_vllm.multiprocessing is None
    assert not any(n.startswith("vllm on CPU") for n in gpu.notes)


def test_vllm_replies_and_scores_are_decoded_by_iadr1(tiny_model, recording_vllm):
    """With detokenize=False vLLM returns ids only: the reply is the tokenizer's decoding (as in the transformers
    backend) and P(yes) reads each candidate's text from `decode([id])`, as vLLM's `decoded_token` gives it."""
    import math

    from iadr1.infer.base import answer_position
    from iadr1.infer.vllm_backend import VLLMBackend

    engine = VLLMBackend(tiny_model("qwen2_vl"), GenerationOptions(prompt_style="iadr1"))
    tok = engine.tokenizer
    reply = "<think>fine</think><answer> yes</answer>"  # " yes" and " no" are single tokens of the tiny vocabulary
    ids = tok.encode(reply, add_special_tokens=False) + [tok.eos_token_id]
    pos = answer_position([tok.decode([t]) for t in ids], "iadr1")
    no_id = tok.encode(" no", add_special_tokens=False)[0]
    assert tok.decode([ids[pos]]) == " yes" and tok.decode([no_id]) == " no"
    steps = [{t: types.SimpleNamespace(logprob=-0.1, decoded_token=None)} for t in ids]
    steps[pos][no_id] = types.SimpleNamespace(logprob=-2.3, decoded_token=None)
    out = types.SimpleNamespace(
        outputs=[types.SimpleNamespace(token_ids=ids, text="", logprobs=steps)], prompt_token_ids=[1, 2, 3]
    )
    engine.llm = types.SimpleNamespace(
        llm_engine=types.SimpleNamespace(
            model_config=types.SimpleNamespace(hf_config=types.SimpleNamespace(eos_token_id=None), model="none")
        )
    )
    result = engine._result(out, time.perf_counter())
    assert result.raw == reply and result.token_ids == ids[:-1]
    assert result.p_yes == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.3)))


def test_futures_handed_out_before_the_end_still_complete():
    """A batching consumer takes every item before asking for results; the end of the items must not cancel them."""
    import threading

    from iadr1.infer.prefetch import prefetch

    gate = threading.Event()

    def slow(x: int) -> int:
        gate.wait(5)
        return x * 10

    taken = list(prefetch(range(5), slow, workers=1, ahead=5))  # the generator ran to its end
    gate.set()
    assert [f.result(timeout=5) for _, f in taken] == [0, 10, 20, 30, 40]
