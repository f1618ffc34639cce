"""`iadr1 eval compare`: several evaluation folders side by side, as the paper's table (runs x datasets + average).

With a baseline (`--baseline`, or on its own when some run's images were perturbed, `iadr1 infer --perturb`), a
second table puts each run's average balanced accuracy and AUROC (and type / location accuracy where judged) beside
its change against the baseline run: the drop a perturbation costs is Δ = perturbed - clean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


# The robustness table's metrics: always the first two, the others where some run judged them.
DELTA_METRICS = ("balanced_accuracy", "auroc", "type_accuracy", "location_accuracy")
_ALWAYS = 2


@dataclass
class DeltaRow:
    """One run of the robustness table: its perturbations ([] clean, None unknown), and per metric its average over
    the run's datasets and Δ = this run - the baseline (None where either is undefined)."""

    name: str
    perturb: list[str] | None
    values: dict[str, float | None]
    deltas: dict[str, float | None]
    baseline: bool = False

    @property
    def perturb_label(self) -> str:
        return "?" if self.perturb is None else " + ".join(self.perturb) or "clean"


@dataclass
class CompareTable:
    """`rows[i]` = (run name, {dataset: value or None}, average or None); `datasets` are the columns.

    `delta` (with a baseline): the robustness table, one `DeltaRow` per run in the same order, over `delta_metrics`.
    """

    metric: str
    datasets: list[str]
    rows: list[tuple[str, dict[str, float | None], float | None]]
    baseline: str | None = None
    delta_metrics: list[str] = field(default_factory=list)
    delta: list[DeltaRow] = field(default_factory=list)


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


def _mean(run: RunMetrics, metric: str) -> float | None:
    present = [d[metric] for d in run.datasets.values() if isinstance(d.get(metric), int | float)]
    return sum(present) / len(present) if present else None


def _perturb_of(run: RunMetrics) -> list[str] | None:
    """The run's image perturbations as eval recorded them (`run.perturb`): [] clean, None not recorded."""
    value = run.run.get("perturb")
    return [str(x) for x in value] if isinstance(value, list) else None


def _baseline_index(baseline: str | int, folders: list[str | os.PathLike], names: list[str]) -> int:
    """The run `--baseline` names: a run name, a folder as given, or an index (0 = the first folder)."""
    text = str(baseline)
    for i, name in enumerate(names):
        if text == name:
            return i
    for i, folder in enumerate(folders):
        if text == str(folder) or Path(text).resolve() == Path(folder).resolve():
            return i
    try:
        index = int(text)
    except ValueError:
        index = -1
    if 0 <= index < len(folders):
        return index
    raise ConfigError(
        f"--baseline {text}: not a run name ({', '.join(names)}), a folder given, or an index 0..{len(folders) - 1}"
    )


def compare(
    folders: list[str | os.PathLike],
    metric: str = "balanced_accuracy",
    names: list[str] | None = None,
    baseline: str | int | None = None,
    delta: bool | None = None,
) -> CompareTable:
    """Read each folder's metrics.json. Run names: `names`, else the run's own name, else the folder name.

    The average of a run is the mean of `metric` over the datasets it has (for balanced accuracy, the paper's
    Average column); a run without some dataset shows a blank there and its average covers fewer datasets.

    The robustness table (`CompareTable.delta`) is built when `delta` is true, or when `delta` is None and either a
    `baseline` is named or some run's images were perturbed (its metrics.json `run.perturb`). The baseline is
    `baseline` (a run name, a folder, or an index, 0 the first), else the first folder.
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
    table = CompareTable(metric, datasets, rows)
    if delta is None:
        delta = baseline is not None or any(_perturb_of(r) for r in runs)
    if not delta:
        return table
    run_names = [name for name, _, _ in rows]
    base = _baseline_index(0 if baseline is None else baseline, folders, run_names)
    extra = [metric] if metric not in DELTA_METRICS else []
    metrics = [
        m
        for i, m in enumerate([*DELTA_METRICS, *extra])
        if i < _ALWAYS or m in extra or any(_mean(r, m) is not None for r in runs)
    ]
    means = [{m: _mean(r, m) for m in metrics} for r in runs]
    for i, (name, r) in enumerate(zip(run_names, runs, strict=True)):
        deltas = {
            m: None if means[i][m] is None or means[base][m] is None else means[i][m] - means[base][m] for m in metrics
        }
        table.delta.append(DeltaRow(name, _perturb_of(r), means[i], deltas, baseline=i == base))
    table.baseline = run_names[base]
    table.delta_metrics = metrics
    return table


_SHORT = {"balanced_accuracy": "balanced acc.", "auroc": "AUROC", "type_accuracy": "type acc.",
          "location_accuracy": "location acc."}  # fmt: skip


def _label(metric: str) -> str:
    return _SHORT.get(metric, metric)


def _signed(x: float | None, digits: int) -> str:
    return "" if x is None else f"{x:+.{digits}f}"


def delta_markdown(table: CompareTable, digits: int = 1) -> str:
    """The robustness table as markdown: run, perturbation, then each metric and its Δ against the baseline."""
    heads = [h for m in table.delta_metrics for h in (_label(m), "Δ")]
    lines = [
        f"Against the baseline **{table.baseline}** (Δ = run - baseline; averages over each run's datasets, %):",
        "",
        "| run | perturbation | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for row in table.delta:
        cells = []
        for m in table.delta_metrics:
            value = row.values[m]
            cells += [
                "" if value is None else f"{value:.{digits}f}",
                "" if row.baseline else _signed(row.deltas[m], digits),
            ]
        name = f"{row.name} (baseline)" if row.baseline else row.name
        lines.append(f"| {name} | {row.perturb_label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(table: CompareTable, digits: int = 1) -> str:
    """The runs x datasets table; with a baseline, the robustness table after it (`delta_markdown`)."""

    def cell(x: float | None) -> str:
        return "" if x is None else f"{x:.{digits}f}"

    lines = [
        "| run | " + " | ".join(table.datasets) + " | Average |",
        "|---|" + "---|" * (len(table.datasets) + 1),
    ]
    for name, values, avg in table.rows:
        lines.append(f"| {name} | " + " | ".join(cell(values[d]) for d in table.datasets) + f" | {cell(avg)} |")
    text = "\n".join(lines) + "\n"
    return text + "\n" + delta_markdown(table, digits) if table.delta else text


def to_csv(table: CompareTable) -> str:
    """Full-precision CSV: header `,DATASET...,Average`, one row per run. With a baseline, more columns after these:
    `perturbation`, `baseline` (1 for the baseline run), then per metric its average and `delta_METRIC`."""
    import csv
    import io

    def num(x: float | None) -> str:
        return "" if x is None else repr(x)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = ["perturbation", "baseline", *(h for m in table.delta_metrics for h in (m, f"delta_{m}"))]
    w.writerow(["", *table.datasets, "Average", *(extra if table.delta else [])])
    for i, (name, values, avg) in enumerate(table.rows):
        more: list[str] = []
        if table.delta:
            row = table.delta[i]
            more = [row.perturb_label, "1" if row.baseline else "0"]
            more += [c for m in table.delta_metrics for c in (num(row.values[m]), num(row.deltas[m]))]
        w.writerow([name, *(num(values[d]) for d in table.datasets), num(avg), *more])
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


_TERSE = {"balanced_accuracy": "bal.acc", "auroc": "AUROC", "type_accuracy": "type", "location_accuracy": "loc."}


def rich_delta_table(table: CompareTable, digits: int = 1):
    """The robustness table for the terminal (None without a baseline): per metric one column, the value then its
    Δ (a drop in red, a gain in green), so that the four usual metrics fit in 80 columns."""
    if not table.delta:
        return None
    from rich import box
    from rich.table import Table

    width = digits + 4  # "-38.2"
    t = Table(title=f"against {table.baseline} (Δ = run - baseline, %)", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("run", overflow="fold")
    longest = max(len(row.perturb_label) for row in table.delta)
    t.add_column("perturbation", overflow="fold", min_width=min(longest, 24))
    for m in table.delta_metrics:
        t.add_column(f"{_TERSE.get(m, m)} Δ", justify="right", no_wrap=True)
    for row in table.delta:
        cells = []
        for m in table.delta_metrics:
            value, d = row.values[m], row.deltas[m]
            shown = "—" if row.baseline else "" if d is None else _signed(d, digits)
            colour = "red" if d is not None and round(d, digits) < 0 else "green" if d and round(d, digits) > 0 else ""
            shown = f"[{colour}]{shown:>{width}}[/]" if colour and not row.baseline else f"{shown:>{width}}"
            cells.append(f"{'-' if value is None else f'{value:.{digits}f}'} {shown}")
        t.add_row(row.name, row.perturb_label, *cells)
    return t
