"""Write an evaluation: metrics.json, accuracy.csv (the original's layout), plots, the terminal table, report.html."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iadr1.data.io import atomic_write_json, atomic_write_text
from iadr1.eval.pipeline import EvalResult

QUESTION_TYPE = "Anomaly Detection"  # the one column of the benchmark's CSV

# Heatmap columns: (key in metrics.json, label).
HEATMAP_METRICS = (
    ("balanced_accuracy", "Bal. acc."),
    ("overkill", "Overkill"),
    ("miss", "Miss"),
    ("accuracy", "Accuracy"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("unanswered_rate", "Unanswered"),
    ("consistency_rate", "Consistency"),
    ("auroc", "AUROC"),
    ("aupr", "AUPR"),
)
# Lower is better for these: the heatmap colours them reversed so that green always means good.
LOWER_IS_BETTER = frozenset({"overkill", "miss", "unanswered_rate"})


def write_all(
    result: EvalResult,
    out: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    gallery_max: int = 300,
    plots: bool = True,
) -> dict[str, Path]:
    """Write every output into `out`; returns {kind: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": atomic_write_json(out / "metrics.json", result.to_json(), indent=2),
        "csv": write_accuracy_csv(result, out / "accuracy.csv"),
    }
    if plots:
        paths["heatmap"] = plot_heatmap(result, out / "heatmap.png")
        paths["classes"] = plot_classes(result, out / "classes.png")
    from iadr1.eval.html import write_html

    paths["html"] = write_html(
        result,
        out / "report.html",
        image_root=image_root,
        gallery_max=gallery_max,
        plots=[p for k, p in paths.items() if k in ("heatmap", "classes")],
    )
    return paths


def accuracy_csv_text(balanced: dict[str, float | None]) -> str:
    """The original's accuracy CSV: header `,Anomaly Detection,Average`, a row per dataset, then `Average`.

    Values are Python's shortest round-trip float text (what pandas writes), so equal numbers give equal files.
    """

    def cell(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    lines = [f",{QUESTION_TYPE},Average"]
    for name, v in balanced.items():
        lines.append(f"{name},{cell(v)},{cell(v)}")
    present = [v for v in balanced.values() if v is not None]
    avg = sum(present) / len(present) if present else None
    lines.append(f"Average,{cell(avg)},{cell(avg)}")
    return "\n".join(lines) + "\n"


def write_accuracy_csv(result: EvalResult, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, accuracy_csv_text({k: d["balanced_accuracy"] for k, d in result.datasets.items()}))


# ------------------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window (and no display on servers)
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(result: EvalResult, path: str | os.PathLike) -> Path:
    """Datasets (and Average) x metrics, cells annotated; colour 0-100 with lower-is-better metrics reversed."""
    import numpy as np

    plt = _pyplot()
    rows = list(result.datasets) + ["Average"]
    blocks = [*result.datasets.values(), result.average]
    values = np.array([[np.nan if d.get(k) is None else d[k] for k, _ in HEATMAP_METRICS] for d in blocks], dtype=float)
    goodness = values.copy()
    for j, (k, _) in enumerate(HEATMAP_METRICS):
        if k in LOWER_IS_BETTER:
            goodness[:, j] = 100 - goodness[:, j]
    fig, ax = plt.subplots(figsize=(1.0 * len(HEATMAP_METRICS) + 2, 0.5 * len(rows) + 1.6))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#dddddd")  # grey: not defined (n/a)
    ax.imshow(np.ma.masked_invalid(goodness), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(HEATMAP_METRICS)), [label for _, label in HEATMAP_METRICS], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(HEATMAP_METRICS)):
            text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_title("Metrics per dataset (%); green is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_classes(result: EvalResult, path: str | os.PathLike) -> Path:
    """Balanced accuracy per class as horizontal bars, coloured by dataset, with 95% bootstrap intervals."""
    plt = _pyplot()
    labels, values, errs, colours = [], [], [], []
    palette = plt.get_cmap("tab10")
    for di, (ds, d) in enumerate(result.datasets.items()):
        for cls, c in d["classes"].items():
            v = c["balanced_accuracy"]
            labels.append(f"{ds} / {cls}" if cls != ds else ds)
            values.append(v if v is not None else 0.0)
            ci = (c.get("ci95") or {}).get("balanced_accuracy")
            if ci and None not in ci and v is not None:
                errs.append((max(v - ci[0], 0.0), max(ci[1] - v, 0.0)))
            else:
                errs.append((0.0, 0.0))
            colours.append(palette(di % 10))
    height = max(2.0, 0.28 * len(labels) + 1.3)
    fig, ax = plt.subplots(figsize=(8, height))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, height=0.6, color=colours, xerr=list(zip(*errs, strict=True)) if errs else None, capsize=2)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 100)
    ax.axvline(50, color="grey", lw=0.8, ls="--")  # a constant answer scores 50
    ax.set_xlabel("balanced accuracy (%) with 95% bootstrap interval; dashed: chance (constant answer)")
    ax.set_title("Balanced accuracy per class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------------------------
# Terminal
# ------------------------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def rich_table(result: EvalResult):
    """The per-dataset table for the terminal (rich); fits 80 columns (the interval goes under the value)."""
    from rich import box
    from rich.table import Table

    title = "iadr1 eval" + (f": {result.run['name']}" if result.run.get("name") else "") + " (rates in %)"
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("dataset", no_wrap=True)
    for col in ("images", "bal. acc.", "overkill", "miss", "F1", "unans.", "consist.", "AUROC"):
        t.add_column(col, justify="right", no_wrap=True)

    def row(name: str, d: dict[str, Any], style: str | None = None) -> None:
        ci = (d.get("ci95") or {}).get("balanced_accuracy")
        ba = _fmt(d.get("balanced_accuracy"))
        if ci and None not in ci:
            ba += f"\n[dim]{_fmt(ci[0])}-{_fmt(ci[1])}[/]"
        t.add_row(
            name,
            str(d.get("n", "")),
            ba,
            _fmt(d.get("overkill")),
            _fmt(d.get("miss")),
            _fmt(d.get("f1")),
            _fmt(d.get("unanswered_rate")),
            _fmt(d.get("consistency_rate")),
            _fmt(d.get("auroc")),
            style=style,
        )

    for name, d in result.datasets.items():
        row(name, d)
    if result.datasets:
        t.add_section()
        row("Average", result.average, style="bold")
    return t


def species_table(result: EvalResult):
    """Accuracy per defect kind (`pipeline.per_specie`) for the terminal, or None when no dataset has a defect kind
    besides `defect` (nothing a folder names: the dataset table says it all)."""
    from rich import box
    from rich.table import Table

    rows = [(ds, sp, d) for ds, dd in result.datasets.items() for sp, d in dd.get("species", {}).items()]
    if not any(sp not in ("good", "defect") for _, sp, _ in rows):
        return None
    t = Table(title="per defect type (rates in %)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("dataset", no_wrap=True)
    t.add_column("type", no_wrap=True)
    for col in ("images", "accuracy", "location", "type acc."):
        t.add_column(col, justify="right", no_wrap=True)
    for ds, sp, d in rows:
        t.add_row(ds, sp, str(d["n"]), _fmt(d["accuracy"]), _fmt(d["location_accuracy"]), _fmt(d["type_accuracy"]))
    return t
