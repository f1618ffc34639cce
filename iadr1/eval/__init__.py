"""Evaluation: metrics per dataset and class, reports, comparisons (docs/eval.md).

    from iadr1.eval import evaluate
    result = evaluate(["test_SDD_format.json"], ["predictions.jsonl"])
    result.datasets["SDD"]["balanced_accuracy"]
    per_specie(result)["SDD"]["defect"]["accuracy"]  # accuracy per defect type (`good`: the normal images)

Modules: `load` (test files, both prediction formats, annotations, matching), `decoders` (the msgspec decoders and
their pydantic twins), `metrics` (vectorised numbers), `pipeline` (`evaluate`, `per_specie`: read, match, score),
`report` (metrics.json, accuracy.csv, plots, terminal tables), `html` (report.html), `compare` (runs side by side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iadr1.eval.pipeline import EvalResult, evaluate, per_specie

__all__ = ["EvalResult", "evaluate", "per_specie"]


def __getattr__(name: str) -> Any:
    # Lazy: `import iadr1.eval` stays cheap (numpy and msgspec load on first use).
    if name in __all__:
        from iadr1.eval import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
