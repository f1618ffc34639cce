"""Operating points: the decision-score threshold that misses at most a target share of defects, and its Overkill.

The paper scores the model's bare yes/no. A production line picks its own trade-off instead: "miss at most 1% of the
defects, and tell me how many good parts that throws away". Given the decision score of every image (P(defect)
where the reply decides, else P(yes): `iadr1.ranking.decision_score`) an image is called defective when its score is
at least the threshold T. For a target Miss m, T is the highest threshold whose Miss is at most m (the one with the
fewest false alarms): with the anomalous scores sorted ascending, a_1 <= ... <= a_n, T = a_(k+1) where k =
floor(m n), so that at most k defects score below T.

An image without a score (no reply, no tags, a backend without log-probabilities) cannot be thresholded: it counts
wrong at every T, as an unanswered image counts wrong in the paper's metric (a defect missed, a normal part
flagged); how many there were is reported. When too many defects have no score, no threshold reaches the target
(`reachable` false).

The 95% intervals come from a stratified bootstrap (defects and normal images resampled apart, so that every
replicate has the counts the target is defined on). When T is chosen on the data it is reported on, each replicate
chooses its own T, so the interval carries the cost of that choice; with a calibration set, each replicate resamples
the calibration set too (T is chosen there) and scores the reported set at that T.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Most (replicates x distinct scores) cells one bootstrap draws; above it, fewer replicates (reported as `n_boot`).
BOOTSTRAP_CELLS = 50_000_000


def _prepared(score: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anomalous scores, normal scores) with a missing score as -inf for a defect (never reaches T) and +inf for a
    normal image (always reaches it): wrong at every threshold."""
    score = np.asarray(score, dtype=float)
    anomalous = np.asarray(anomalous, dtype=bool)
    a = np.where(np.isnan(score[anomalous]), -np.inf, score[anomalous])
    n = np.where(np.isnan(score[~anomalous]), np.inf, score[~anomalous])
    return a, n


def allowed_misses(target: float, n_anomalous: int) -> int:
    """k = floor(target * n): the most defects that may score below T (a hair of tolerance for 0.01 * 100)."""
    return int(math.floor(target * n_anomalous + 1e-9))


def threshold_for_miss(anomalous_scores: np.ndarray, target: float) -> float | None:
    """The highest T whose Miss is at most `target` (a fraction): the (k+1)-th smallest defect score. None when
    the defects without a score (-inf) already miss more than the target allows, or there are no defects."""
    a = np.sort(np.asarray(anomalous_scores, dtype=float))
    if a.size == 0:
        return None
    k = allowed_misses(target, a.size)
    if k >= a.size:
        return math.inf  # every defect may be missed: nothing needs to be called defective
    t = float(a[k])
    return None if t == -math.inf else t


def rates_at(anomalous_scores: np.ndarray, normal_scores: np.ndarray, t: float) -> tuple[float | None, float | None]:
    """(Miss %, Overkill %) at threshold `t`: defects below `t`, normal images at or above it."""
    a, n = np.asarray(anomalous_scores, float), np.asarray(normal_scores, float)
    miss = float((a < t).mean() * 100) if a.size else None
    overkill = float((n >= t).mean() * 100) if n.size else None
    return miss, overkill


def curve(score: np.ndarray, anomalous: np.ndarray, n_points: int = 201) -> dict[str, list[float]]:
    """Miss and Overkill (%) at `n_points` thresholds from 0 to 1: the plot's data."""
    a, n = _prepared(score, anomalous)
    ts = np.linspace(0.0, 1.0, n_points)
    sa, sn = np.sort(a), np.sort(n)
    miss = np.searchsorted(sa, ts, side="left") / max(sa.size, 1) * 100
    overkill = (sn.size - np.searchsorted(sn, ts, side="left")) / max(sn.size, 1) * 100
    return {"threshold": ts.tolist(), "miss": miss.tolist(), "overkill": overkill.tolist()}


# ------------------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------------------
def _resample_counts(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, counts per replicate (n_boot, distinct)): resampling the items with replacement
    changes only how often each distinct value is drawn (multinomial over the observed shares)."""
    u, c = np.unique(values, return_counts=True)
    if values.size == 0:
        return u, np.zeros((n_boot, 0), np.int64)
    return u, rng.multinomial(values.size, c / values.size, size=n_boot)


def _boot_thresholds(u: np.ndarray, counts: np.ndarray, target: float) -> np.ndarray:
    """T per replicate (`threshold_for_miss` on each resample); NaN where unreachable."""
    n = int(counts[0].sum()) if counts.size else 0
    if n == 0:
        return np.full(counts.shape[0], np.nan)
    k = allowed_misses(target, n)
    if k >= n:
        return np.full(counts.shape[0], np.inf)
    cum = np.cumsum(counts, axis=1)
    idx = np.argmax(cum > k, axis=1)  # the first distinct value whose running count passes k
    t = u[idx]
    return np.where(t == -np.inf, np.nan, t)


def _boot_rates(u: np.ndarray, counts: np.ndarray, t: np.ndarray, below_is_wrong: bool) -> np.ndarray:
    """Per replicate, the % of items below `t` (defects: Miss) or at or above it (normal images: Overkill)."""
    n = counts.sum(axis=1)
    if not u.size:
        return np.full(t.shape, np.nan)
    cum = np.concatenate([np.zeros((counts.shape[0], 1), np.int64), np.cumsum(counts, axis=1)], axis=1)
    safe_t = np.where(np.isnan(t), np.inf, t)
    pos = np.searchsorted(u, safe_t, side="left")
    below = np.take_along_axis(cum, pos[:, None], axis=1)[:, 0]
    share = (below if below_is_wrong else n - below) / np.maximum(n, 1) * 100
    return np.where(np.isnan(t), np.nan, share)


def _interval(x: np.ndarray) -> list[float | None]:
    x = x[np.isfinite(x)]
    if not x.size:
        return [None, None]
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def _n_boot(n_boot: int, *sizes: int) -> int:
    cells = max(sizes, default=1) or 1
    return max(0, min(n_boot, BOOTSTRAP_CELLS // cells))


# ------------------------------------------------------------------------------------------------------------
# One group
# ------------------------------------------------------------------------------------------------------------
def operating_point(
    score: np.ndarray,
    anomalous: np.ndarray,
    target: float,
    *,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """The operating point for `target` Miss (a fraction) on one group of images (module docstring).

    `calibration`: (score, anomalous) of a validation set; T is chosen there and reported on `score`. Returns a
    JSON-ready dict: target_miss, threshold (None when unreachable), chosen_on ("calibration" or "this data"),
    reachable, miss and overkill (%) at T, the counts, the images without a score, and 95% intervals.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    a, n = _prepared(score, anomalous)
    cal = _prepared(*calibration) if calibration is not None else None
    ca = cal[0] if cal is not None else a
    t = threshold_for_miss(ca, target)
    miss, overkill = rates_at(a, n, t) if t is not None else (None, None)
    out: dict[str, Any] = {
        "target_miss": target,
        "threshold": None if t is None else (None if math.isinf(t) else t),
        "chosen_on": "calibration" if cal is not None else "this data",
        "reachable": t is not None,
        "miss": miss,
        "overkill": overkill,
        "n_anomalous": int(a.size),
        "n_normal": int(n.size),
        "n_without_score": int(np.isinf(a).sum() + np.isinf(n).sum()),
    }
    if cal is not None:
        out["n_calibration"] = int(cal[0].size + cal[1].size)
    if t is not None and math.isinf(t):
        out["note"] = "the target allows every defect to be missed: no image needs to be called defective"
    b = _n_boot(n_boot, np.unique(a).size, np.unique(n).size, np.unique(ca).size)
    if b and a.size and t is not None:
        ua, cnt_a = _resample_counts(a, b, rng)
        un, cnt_n = _resample_counts(n, b, rng)
        if cal is None:
            ts = _boot_thresholds(ua, cnt_a, target)
        else:
            uc, cnt_c = _resample_counts(ca, b, rng)
            ts = _boot_thresholds(uc, cnt_c, target)
        out["ci95"] = {
            "threshold": _interval(ts),
            "miss": _interval(_boot_rates(ua, cnt_a, ts, below_is_wrong=True)),
            "overkill": _interval(_boot_rates(un, cnt_n, ts, below_is_wrong=False)) if n.size else [None, None],
        }
        out["n_boot"] = b
    return out


# ------------------------------------------------------------------------------------------------------------
# Per dataset and overall
# ------------------------------------------------------------------------------------------------------------
def score_sources(p_defect: np.ndarray, p_yes: np.ndarray) -> dict[str, int]:
    """How many images the decision score came from P(defect), from P(yes) (files or backends without P(defect)),
    or from neither."""
    has_d = ~np.isnan(p_defect) if len(p_defect) else np.zeros(len(p_yes), bool)
    has_y = ~np.isnan(p_yes)
    return {"p_defect": int(has_d.sum()), "p_yes": int((~has_d & has_y).sum()), "none": int((~has_d & ~has_y).sum())}


def operating_points(
    datasets: list[str],
    dataset_idx: np.ndarray,
    anomalous: np.ndarray,
    score: np.ndarray,
    targets: list[float],
    *,
    calibration: tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """`{"overall": [point per target], "datasets": {name: [point per target]}}` (`operating_point`), each
    dataset's T chosen on its own images (or on the calibration set's images of the same dataset name), the
    overall T on all images pooled. `calibration`: (datasets, dataset_idx, anomalous, score) of the validation
    set. A dataset the calibration set lacks gets no point, and a line in `notes`."""
    rng = np.random.default_rng([seed, 17])  # apart from the metrics' bootstrap, which stays as it was
    notes: list[str] = []

    def points(sel: np.ndarray, cal_sel: np.ndarray | None) -> list[dict[str, Any]]:
        cal = None
        if calibration is not None and cal_sel is not None:
            cal = (calibration[3][cal_sel], calibration[2][cal_sel])
        return [
            operating_point(score[sel], anomalous[sel], m, calibration=cal, n_boot=n_boot, rng=rng) for m in targets
        ]

    out: dict[str, Any] = {"overall": points(np.ones(len(score), bool), _all(calibration)), "datasets": {}}
    for di in sorted(range(len(datasets)), key=datasets.__getitem__):
        name = datasets[di]
        cal_sel = None
        if calibration is not None:
            if name not in calibration[0]:
                notes.append(f"{name}: no calibration images of this dataset; no threshold chosen for it")
                continue
            cal_sel = calibration[1] == calibration[0].index(name)
        out["datasets"][name] = points(dataset_idx == di, cal_sel)
    out["notes"] = notes
    return out


def _all(calibration: tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    return None if calibration is None else np.ones(len(calibration[3]), bool)
