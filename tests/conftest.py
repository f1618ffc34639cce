"""Shared fixtures. Tests build everything they need (tiny models, datasets) themselves: no hub, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _no_tqdm_monitor_thread() -> None:
    """tqdm starts a monitor thread with its first progress bar (a model load in one test) and keeps it for the
    session; eval's background reader forks only when no other thread runs (iadr1/eval/load.py), so that thread
    would turn its tests into skips (failures in CI). Bars still draw; only the monitor is off."""
    try:
        import tqdm
    except ImportError:
        return
    tqdm.tqdm.monitor_interval = 0


_no_tqdm_monitor_thread()


def missing(why: str) -> None:
    """A dependency of the test is missing: skip on a developer's machine (the summary says why), fail in CI
    (`CI=true`), where `make install` provides everything and a skip would hide a broken set-up."""
    if IN_CI:
        pytest.fail(f"missing in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark's real files in ../shared/data (a test file and a results CSV)."""
    if not (SHARED_DATA / "test_SDD_format.json").exists():
        missing("../shared/data is not present beside the checkout")
    return SHARED_DATA


# --- tiny models (iadr1.models.tiny): built once per family per session ----------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """`tiny_model_factory(family, **kwargs) -> Path`: a random tiny checkpoint, built once per (family, kwargs)."""
    from iadr1.models.tiny import build_tiny

    cache: dict[tuple, Path] = {}

    def make(family: str, **kwargs) -> Path:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = build_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"), **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory):
    """`tiny_model(family) -> Path` with the default tiny sizes (alias of the factory without options)."""
    return tiny_model_factory


# --- `vllm.LLM` without vLLM: the engine options and images the vLLM backend passes ---------------------------------
class FakeLLM:
    """Stands in for `vllm.LLM`: records its keyword arguments and VLLM_ENABLE_V1_MULTIPROCESSING while built."""

    kwargs: dict = {}
    multiprocessing: str | None = None

    def __init__(self, **kwargs) -> None:
        FakeLLM.kwargs = kwargs
        FakeLLM.multiprocessing = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")


@pytest.fixture
def fake_vllm(monkeypatch):
    """A `vllm` module whose `LLM` is `FakeLLM` (returned) and whose `SamplingParams` returns its arguments."""
    import sys
    import types

    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.kwargs, FakeLLM.multiprocessing = {}, None
    return FakeLLM


# --- the scripted OpenAI-compatible server (tests/openai_stub.py) -----------------------------------------------------
STUB_KEY_ENV = "IADR1_TEST_KEY"
STUB_KEY = "sk-test-0123456789"  # set in STUB_KEY_ENV for the test; must never appear in any file written


@pytest.fixture
def openai_server(monkeypatch):
    """A started `StubServer` on loopback, with `STUB_KEY` in the environment variable `STUB_KEY_ENV`."""
    from openai_stub import StubServer

    server = StubServer().start()
    monkeypatch.setenv(STUB_KEY_ENV, STUB_KEY)
    yield server
    server.stop()
