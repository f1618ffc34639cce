"""Run `iadr1.train.grpo.run_grpo` with TRL's colocated vLLM rollouts on vLLM's CPU build (.venv-vllm).

    .venv-vllm/bin/python tests/tooling/vllm_grpo.py spec.json

`spec.json` holds the `GRPORunConfig` fields (`vllm` is set to colocate here). Test tooling for
tests/test_train_vllm.py, never part of the package. Two things stand in for a CUDA machine, both only here:

- vLLM's CPU build repacks every linear layer's weight for its own matrix kernels and frees the original (or keeps a
  packed copy beside it), so the weights TRL pushes after each step would land nowhere. The shim below makes every
  such layer multiply with its own `weight` parameter (`torch.nn.functional.linear`), as the GPU build does, so a
  push reaches the next rollout.
- iadr1 refuses `vllm: colocate` without CUDA for that reason (GRPORunConfig.resolved_vllm_mode); with the shim in
  place the refusal is lifted for this process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def keep_linear_weights() -> None:
    import torch.nn.functional as F
    import vllm.model_executor.layers.utils as layer_utils

    def dispatch(layer, remove_weight: bool) -> None:  # vLLM's signature; the weight always stays
        layer.cpu_linear = lambda x, weight, bias: F.linear(x, weight, bias)

    layer_utils.dispatch_cpu_unquantized_gemm = dispatch


def main(spec_path: str) -> None:
    keep_linear_weights()
    from iadr1.train.config import GRPORunConfig
    from iadr1.train.grpo import run_grpo

    GRPORunConfig.resolved_vllm_mode = lambda self: "colocate"
    spec = json.loads(Path(spec_path).read_text())
    cfg = GRPORunConfig(**{**spec, "vllm": "colocate"})
    trl_kwargs = cfg.to_trl_kwargs()
    assert trl_kwargs["use_vllm"] and trl_kwargs["vllm_mode"] == "colocate", trl_kwargs
    out = run_grpo(cfg)
    print(json.dumps({"output_dir": str(out)}))


if __name__ == "__main__":
    main(sys.argv[1])
