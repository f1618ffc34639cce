"""Inference: backends (vllm, transformers, openai-compatible) behind one interface, and a resumable runner.

from iadr1.infer import run_inference
summary = run_inference(model="ckpt/", test_file="test.json", image_root="images", out="runs/x")
summary.predictions  # runs/x/predictions.jsonl
"""

from iadr1.infer.base import Backend, GenerationOptions, Request, Result
from iadr1.infer.runner import InferConfig, InferenceSummary, load_config, predictions_path, run_inference

__all__ = [
    "Backend",
    "GenerationOptions",
    "InferConfig",
    "InferenceSummary",
    "Request",
    "Result",
    "load_config",
    "predictions_path",
    "run_inference",
]
