"""`iadr1 eval compare`: several evaluation folders side by side, as the paper's table (runs x datasets + average)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from iadr1.data.io import read_json
from iadr1.data.schemas import format_validation_error
from iadr1.errors import ConfigError, DataError


class RunMetrics(BaseModel):
    """The part of a metrics.json that compare reads."""

    model_config = ConfigDict(extra="allow")

    datasets: dict[str, dict[str, Any]]
    average: dict[str, Any] = {}
    run: dict[str, Any] = {}


@dataclass
class CompareTable:
    """`rows[i]` = (run name, {dataset: value or None}, average or None); `datasets` are the columns."""

    metric: str
    datasets: list[str]
    rows: list[tuple[str, dict[str, float | None], float | None]]


def load_run(folder: str | os.PathLike) -> RunMetrics:
    folder = Path(folder)
    path = folder / "metrics.json" if folder.is_dir() else folder
    if not path.is_file():
        raise DataError(f"{folder}: not an evaluation folder (no metrics.json; run `iadr1 eval --out {folder}` first)")
    obj = read_json(path)
    try:
        return RunMetrics.model_validate(obj)
    except ValidationError as e:
        raise DataError(format_validation_error(path, "metrics", e)) from None


def compare(
    folders: list[str | os.PathLike], metric: str = "balanced_accuracy", names: list[str] | None = None
) -> CompareTable:
    """Read each folder's metrics.json. Run names: `names`, else the run's own name, else the folder name.

    The average of a run is the mean of `metric` over the datasets it has (for balanced accuracy, the paper's
    Average column); a run without some dataset shows a blank there and its average covers fewer datasets.
    """
    if not folders:
        raise ConfigError("give at least one evaluation folder to compare")
    if names is not None and len(names) != len(folders):
        raise ConfigError(f"--name given {len(names)} times for {len(folders)} folders")
    runs = [load_run(f) for f in folders]
    datasets = sorted({ds for r in runs for ds in r.datasets})
    rows = []
    for i, (folder, r) in enumerate(zip(folders, runs, strict=True)):
        name = names[i] if names else (r.run.get("name") or Path(folder).resolve().name)
        if r.datasets and not any(metric in d for d in r.datasets.values()):
            raise ConfigError(f"{folder}: metrics.json has no metric {metric!r}")
        values = {ds: r.datasets[ds].get(metric) if ds in r.datasets else None for ds in datasets}
        present = [v for v in values.values() if v is not None]
        rows.append((name, values, sum(present) / len(present) if present else None))
    return CompareTable(metric, datasets, rows)


def to_markdown(table: CompareTable, digits: int = 1) -> str:
    def cell(x: float | None) -> str:
        return "" if x is None else f"{x:.{digits}f}"

    lines = [
        "| run | " + " | ".join(table.datasets) + " | Average |",
        "|---|" + "---|" * (len(table.datasets) + 1),
    ]
    for name, values, avg in table.rows:
        lines.append(f"| {name} | " + " | ".join(cell(values[d]) for d in table.datasets) + f" | {cell(avg)} |")
    return "\n".join(lines) + "\n"


def to_csv(table: CompareTable) -> str:
    """Full-precision CSV: header `,DATASET...,Average`, one row per run."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", *table.datasets, "Average"])
    for name, values, avg in table.rows:
        w.writerow(
            [
                name,
                *("" if values[d] is None else repr(values[d]) for d in table.datasets),
                "" if avg is None else repr(avg),
            ]
        )
    return buf.getvalue()


def rich_table(table: CompareTable, digits: int = 1):
    from rich.table import Table

    t = Table(title=f"{table.metric} (%)")
    t.add_column("run")
    for d in [*table.datasets, "Average"]:
        t.add_column(d, justify="right")
    for name, values, avg in table.rows:
        cells = ["-" if values[d] is None else f"{values[d]:.{digits}f}" for d in table.datasets]
        t.add_row(name, *cells, "-" if avg is None else f"{avg:.{digits}f}")
    return t
