"""vLLM engine settings without vLLM: the default `max_model_len` (the model's own context) and the one-line
errors a failed engine start turns into. The real engine is checked in tests/test_infer_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from iadr1.errors import ConfigError
from iadr1.infer.runner import load_config
from iadr1.infer.vllm_backend import default_max_model_len, engine_start_error, model_context_length


def _model(tmp_path: Path, config: dict, tokenizer: dict | None = None) -> Path:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.mark.parametrize(
    ("config", "tokenizer", "context", "default"),
    [
        # transformers 5 saves VLMs (Qwen2-VL, LLaVA-1.5-7B: 4096) with the language model's settings nested
        ({"model_type": "llava", "text_config": {"max_position_embeddings": 4096}}, None, 4096, 4096),
        ({"model_type": "qwen2_vl", "max_position_embeddings": 32768}, None, 32768, 8192),  # older layout, capped
        ({"model_type": "internvl_chat", "llm_config": {"max_position_embeddings": 2048}}, None, 2048, 2048),
        # the tokenizer's model_max_length lowers it, as vLLM does; an unset one (a huge number) does not
        ({"text_config": {"max_position_embeddings": 4096}}, {"model_max_length": 1024}, 1024, 1024),
        ({"text_config": {"max_position_embeddings": 4096}}, {"model_max_length": 10**30}, 4096, 4096),
        ({"model_type": "llava"}, None, None, 8192),
    ],
)
def test_default_max_model_len_is_the_models_context(tmp_path, config, tokenizer, context, default):
    path = _model(tmp_path, config, tokenizer)
    assert model_context_length(path) == context
    value, note = default_max_model_len(path)
    assert value == default
    assert note.startswith(f"vllm: max_model_len {default} (") and note.endswith("; --max-model-len to change)")


def test_the_config_default_leaves_max_model_len_to_the_model():
    cfg = load_config(None, model="m", test_file="t", image_root="r", out="o", backend="vllm")
    assert cfg.max_model_len is None


class _ModelConfig(BaseModel):
    """Stands in for vLLM's pydantic config classes, whose validators raise ValueErrors like these."""

    max_model_len: int

    @field_validator("max_model_len")
    @classmethod
    def _derived(cls, v: int) -> int:
        raise ValueError(
            f"User-specified max_model_len ({v}) is greater than the derived max_model_len "
            "(max_position_embeddings=4096.0 or model_max_length=None in model's config.json). To allow overriding "
            "this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be "
            "used with extreme caution. If the model uses relative position encoding (RoPE), positions exceeding "
            "derived_max_model_len lead to nan."
        )


def _pydantic_error() -> ValidationError:
    try:
        _ModelConfig(max_model_len=8192)
    except ValidationError as e:
        return e
    raise AssertionError("no error")


# vLLM 0.32's messages (vllm/v1/core/kv_cache_utils.py, vllm/v1/worker/utils.py, vllm/v1/engine/utils.py)
_KV = (
    "To serve at least one request with the model's max seq len (8192), (0.25 GiB KV cache is needed, which is "
    "larger than the available KV cache memory (0.06 GiB). Based on the available memory, the estimated maximum "
    "model length is 2048. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU "
    "backend) or decreasing `max_model_len` when initializing the engine."
)
_NO_CACHE = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing"
_FREE = (
    "Free memory on device cuda:0 (10.5/139.8 GiB) on startup is less than desired GPU memory utilization "
    "(0.9, 125.8 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            _pydantic_error(),
            "vLLM cannot start: max_model_len 8192 is longer than the model's context (max_position_embeddings 4096 "
            "in config.json): pass --max-model-len 4096 or less, or leave it out (the default is the model's own)",
        ),
        (
            ValueError(_KV),
            "vLLM cannot start: one request of the full context needs 0.25 GiB of KV cache and 0.06 GiB is free: "
            "lower --max-model-len (now 8192; 2048 fits), or raise --gpu-memory-utilization (now 0.9; on CPU: "
            "VLLM_CPU_KVCACHE_SPACE, in GiB)",
        ),
        (ValueError(_NO_CACHE), "vLLM cannot start: no memory is left for the KV cache once the model is loaded"),
        (ValueError(_FREE), "vLLM cannot start: the GPU has less free memory than --gpu-memory-utilization 0.9"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "vLLM ran out of memory while starting"),
        (
            RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}"),
            "vLLM cannot start (its engine process failed; vLLM's log above says why): check --max-model-len",
        ),
        (
            RuntimeError("something new\n  at line 2\n  at line 3"),
            "vLLM cannot start (RuntimeError: something new): check --max-model-len (now 8192), "
            "--gpu-memory-utilization (now 0.9), --tensor-parallel-size",
        ),
    ],
)
def test_engine_start_failures_become_one_line_naming_the_setting(exc, expected):
    err = engine_start_error(exc, 8192, 0.9)
    assert isinstance(err, ConfigError)
    assert str(err).startswith(expected) and "\n" not in str(err)
