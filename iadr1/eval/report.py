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
    ("type_accuracy", "Type acc."),
    ("location_accuracy", "Location acc."),
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
# What each colour means, one rule per kind of metric, so that green is always good: an error rate (lower is better)
# is green at 0 and red from 50% up (a Miss of 30% is orange, never green); a rate where a constant answer scores
# 50 (balanced accuracy, AUROC) is red at 50 and green at 100; every other rate runs red at 0 to green at 100.
CHANCE_AT_50 = frozenset({"balanced_accuracy", "auroc"})


def goodness(key: str, value: float) -> float:
    """The heatmap colour position of `value` (percent) for metric `key`: 0 red, 100 green (`CHANCE_AT_50`)."""
    if key in LOWER_IS_BETTER:
        return max(0.0, 100.0 - 2.0 * value)
    if key in CHANCE_AT_50:
        return max(0.0, 2.0 * value - 100.0)
    return value


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
    if result.mmad is not None:
        for rule, name in (("mmad", "mmad_accuracy.csv"), ("iadr1", "mmad_accuracy_iadr1.csv")):
            paths[f"{rule}_csv"] = atomic_write_text(out / name, mmad_csv_text(result.mmad, rule))
    if plots:
        paths["heatmap"] = plot_heatmap(result, out / "heatmap.png")
        paths["classes"] = plot_classes(result, out / "classes.png")
        if has_scores(result):
            paths["roc"] = plot_roc(result, out / "roc.png")
            paths["threshold"] = plot_threshold(result, out / "threshold.png")
    from iadr1.eval.html import write_html

    paths["html"] = write_html(
        result,
        out / "report.html",
        image_root=image_root,
        gallery_max=gallery_max,
        plots=[p for k, p in paths.items() if k in ("heatmap", "classes", "roc", "threshold")],
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


def mmad_csv_text(mmad: dict[str, Any], rule: str) -> str:
    """MMAD's accuracy table (its scorer's CSV layout): a row per dataset, then `Average`; a column per question
    type, then `Average`; percent, empty where a dataset has no question of a type. `rule`: "mmad" (unusable
    answers dropped, comparable with MMAD's published figures) or "iadr1" (counted wrong)."""

    def cell(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    cols = [*mmad["types"], "average"]
    lines = ["," + ",".join([*mmad["types"], "Average"])]
    for name, d in mmad["datasets"].items():
        lines.append(name + "," + ",".join(cell(d[rule][c]) for c in cols))
    lines.append("Average," + ",".join(cell(mmad["average"][rule][c]) for c in cols))
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
    colour = np.array([[np.nan if np.isnan(v) else goodness(k, v) for v, (k, _) in zip(row, HEATMAP_METRICS,
                       strict=True)] for row in values])  # fmt: skip
    fig, ax = plt.subplots(figsize=(0.95 * len(HEATMAP_METRICS) + 2, 0.5 * len(rows) + 1.6))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#dddddd")  # grey: not defined (n/a)
    ax.imshow(np.ma.masked_invalid(colour), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(HEATMAP_METRICS)), [label for _, label in HEATMAP_METRICS], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j, (k, _) in enumerate(HEATMAP_METRICS):
            text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.1f}"
            cover = partial_coverage(blocks[i])
            if k in ("auroc", "aupr") and cover is not None:
                text += f"\n({cover:.0f}% scored)"
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if "\n" in text else 8)
    ax.set_title("Metrics per dataset (%); green is good: error rates red from 50%, balanced accuracy and AUROC "
                 "red at chance (50)", fontsize=9)  # fmt: skip
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


def has_scores(result: EvalResult) -> bool:
    """Whether any image has a decision score (P(defect) or P(yes)): the ROC and threshold plots need one."""
    import numpy as np

    return bool((~np.isnan(result.matched.score)).any())


def _score_groups(result: EvalResult) -> list[tuple[str, Any, Any]]:
    """(label, anomalous, score) for every dataset, and for all images pooled when there are several."""
    gt, score = result.gt, result.matched.score
    out = [
        (name, gt.anomalous[gt.dataset_idx == di], score[gt.dataset_idx == di])
        for di, name in sorted(enumerate(gt.datasets), key=lambda t: t[1])
    ]
    if len(out) > 1:
        out.append(("all images", gt.anomalous, score))
    return out


def roc_points(anomalous: Any, score: Any) -> tuple[Any, Any]:
    """(false positive rate, true positive rate) over the images that have a score, one point per distinct score
    (from the strictest threshold to the loosest), starting at (0, 0)."""
    import numpy as np

    keep = ~np.isnan(score)
    y, s = np.asarray(anomalous)[keep], np.asarray(score)[keep]
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, int)
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def _score_name(result: EvalResult) -> str:
    src = (result.operating or {}).get("score")
    if src is None:
        from iadr1.eval.threshold import score_sources

        src = score_sources(result.matched.p_defect, result.matched.p_yes)
    if src["p_defect"] and not src["p_yes"]:
        return "P(defect)"
    return "P(yes)" if not src["p_defect"] else "P(defect), else P(yes)"


def plot_roc(result: EvalResult, path: str | os.PathLike) -> Path:
    """ROC curves of the decision score per dataset (and pooled), over the images that have a score."""
    import numpy as np

    from iadr1.ranking import grouped_auroc_aupr

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, anomalous, score in _score_groups(result):
        has = ~np.isnan(score)
        if not has.any() or anomalous[has].all() or not anomalous[has].any():
            continue
        fpr, tpr = roc_points(anomalous, score)
        auc = grouped_auroc_aupr(np.zeros(len(score), int), 1, anomalous, score)[0][0]
        ax.plot(fpr * 100, tpr * 100, lw=1.6 if name == "all images" else 1.1,
                label=f"{name}: AUROC {auc * 100:.1f} ({has.mean() * 100:.0f}% scored)")  # fmt: skip
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false alarms: Overkill (%)")
    ax.set_ylabel("defects found: 100 - Miss (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100.5)
    ax.set_title(f"ROC of the decision score, {_score_name(result)}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_threshold(result: EvalResult, path: str | os.PathLike) -> Path:
    """Miss and Overkill (%) against the decision-score threshold, pooled over all images (images without a score
    count wrong at every threshold), with the --target-miss operating points marked."""
    from iadr1.eval.threshold import curve

    plt = _pyplot()
    gt = result.gt
    c = curve(result.matched.score, gt.anomalous)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(c["threshold"], c["miss"], color="#c0392b", label="Miss (defects called normal)")
    ax.plot(c["threshold"], c["overkill"], color="#2471a3", label="Overkill (normal parts called defective)")
    for p in (result.operating or {}).get("overall", []):
        if p.get("threshold") is not None:
            ax.axvline(p["threshold"], color="grey", lw=0.8, ls=":")
            label = f"Miss <= {p['target_miss'] * 100:g}%: T={p['threshold']:.3f}, Overkill {p['overkill']:.1f}%"
            at = (p["threshold"], p["overkill"])
            ax.annotate(label, at, fontsize=7, xytext=(4, 6), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100.5)
    ax.set_xlabel(f"threshold T on {_score_name(result)} (defective when score >= T)")
    ax.set_ylabel("%")
    ax.set_title("Miss and Overkill against the threshold, all images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------------------------
# Terminal
# ------------------------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def partial_coverage(d: dict[str, Any]) -> float | None:
    """The share (%) of images with a P(yes) when AUROC is defined and some images had none; else None."""
    cover = d.get("p_yes_coverage")
    return cover if d.get("auroc") is not None and cover is not None and cover < 99.95 else None


def rich_table(result: EvalResult):
    """The per-dataset table for the terminal (rich); fits 80 columns (the interval goes under the value)."""
    from rich import box
    from rich.table import Table

    title = "iadr1 eval" + (f": {result.run['name']}" if result.run.get("name") else "") + " (rates in %)"
    partial = any(partial_coverage(d) is not None for d in [*result.datasets.values(), result.average])
    caption = "AUROC (n%): ranked over the n% of images that had a P(yes)" if partial else None
    t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("dataset", no_wrap=True)
    for col in ("n", "bal.acc", "overk.", "miss", "type", "loc.", "F1", "unans", "cons.", "AUROC"):
        t.add_column(col, justify="right", no_wrap=True)

    def row(name: str, d: dict[str, Any], style: str | None = None) -> None:
        ci = (d.get("ci95") or {}).get("balanced_accuracy")
        ba = _fmt(d.get("balanced_accuracy"))
        if ci and None not in ci:
            ba += f"\n[dim]{_fmt(ci[0])}-{_fmt(ci[1])}[/]"
        auroc = _fmt(d.get("auroc"))
        if partial_coverage(d) is not None:
            auroc += f"\n[dim]({partial_coverage(d):.0f}%)[/]"
        t.add_row(
            name,
            str(d.get("n", "")),
            ba,
            _fmt(d.get("overkill")),
            _fmt(d.get("miss")),
            _fmt(d.get("type_accuracy")),
            _fmt(d.get("location_accuracy")),
            _fmt(d.get("f1")),
            _fmt(d.get("unanswered_rate")),
            _fmt(d.get("consistency_rate")),
            auroc,
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


def operating_table(result: EvalResult):
    """The --target-miss operating points for the terminal: threshold, Miss and Overkill, the 95% interval under
    each value (80 columns)."""
    from rich import box
    from rich.table import Table

    op = result.operating or {}
    chosen = next((p["chosen_on"] for p in op.get("overall", [])), "this data")
    where = "on the calibration set" if chosen == "calibration" else "on the data it is reported on"
    t = Table(
        title="operating points (rates in %)",
        caption=f"defective when {_score_name(result)} >= T; T chosen {where}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("dataset", "target miss", "T", "miss", "overkill", "no score"):
        t.add_column(col, justify="left" if col == "dataset" else "right", no_wrap=True)
    rows = [*op.get("datasets", {}).items(), ("all images", op.get("overall", []))]
    for name, points in rows:
        for p in points:
            ci = p.get("ci95") or {}

            def cell(key: str, digits: int = 1, p=p, ci=ci) -> str:
                v = p.get(key)
                lo_hi = ci.get(key)
                text = _fmt(v, digits)
                if v is not None and lo_hi and None not in lo_hi:
                    text += f"\n[dim]{_fmt(lo_hi[0], digits)}-{_fmt(lo_hi[1], digits)}[/]"
                return text

            t.add_row(
                name,
                f"{p['target_miss'] * 100:g}",
                cell("threshold", 3) if p["reachable"] else "[yellow]unreachable[/]",
                cell("miss"),
                cell("overkill"),
                str(p["n_without_score"]),
                style="bold" if name == "all images" else None,
            )
    return t


# Short column names of MMAD's question types for the terminal (80 columns).
MMAD_SHORT = {
    "Anomaly Detection": "AD",
    "Defect Classification": "DefCls",
    "Defect Localization": "DefLoc",
    "Defect Description": "DefDesc",
    "Defect Analysis": "DefAna",
    "Object Classification": "ObjCls",
    "Object Analysis": "ObjAna",
}


def mmad_table(result: EvalResult):
    """MMAD's accuracy per question type and dataset, both conventions (iadr1: unusable answers wrong; MMAD: dropped),
    for the terminal; None without MMAD questions."""
    from rich import box
    from rich.table import Table

    mmad = result.mmad
    if mmad is None:
        return None
    t = Table(
        title="MMAD questions (accuracy %; AD: balanced accuracy)",
        caption="iadr1: a question without a usable answer counts wrong; MMAD: dropped (its scorer's rule)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    t.add_column("dataset", no_wrap=True)
    t.add_column("rule", no_wrap=True)
    for c in mmad["types"]:
        t.add_column(MMAD_SHORT.get(c, c[:7]), justify="right", no_wrap=True)
    t.add_column("avg", justify="right", no_wrap=True)
    blocks = [*mmad["datasets"].items(), ("Average", mmad["average"])]
    for i, (name, d) in enumerate(blocks):
        if i == len(blocks) - 1:
            t.add_section()
        for rule, label in (("iadr1", "iadr1"), ("mmad", "MMAD")):
            values = [_fmt(d[rule].get(c)) for c in [*mmad["types"], "average"]]
            t.add_row(name if rule == "iadr1" else "", label, *values, style="bold" if name == "Average" else None)
    return t
