"""Shared fixtures. Tests build everything they need (tiny models, datasets) themselves: no hub, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark's real files in ../shared/data (a test file and a results CSV)."""
    if not (SHARED_DATA / "test_SDD_format.json").exists():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA
