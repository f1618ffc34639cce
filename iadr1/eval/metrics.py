"""Evaluation metrics, vectorised over groups (datasets, classes) and bootstrap replicates with numpy.

Everything here works on a confusion array `conf[..., truth, answer]`: truth 0 = anomalous, 1 = normal; answer
0 = yes (A), 1 = no (B), 2 = unanswered (E, counted wrong, as in the paper). Rates are in percent.

The paper's metric (docs/method.md §6), per dataset:
    balanced accuracy = (normal_acc + anomaly_acc) / 2 * 100,  Overkill = (1 - normal_acc) * 100,
    Miss = (1 - anomaly_acc) * 100,
computed with exactly these floating-point operations, so published numbers are reproduced to the last digit.
"""

from __future__ import annotations

import itertools
import operator
import re
import warnings
from collections.abc import Sequence

import numpy as np

from iadr1.ranking import grouped_auroc_aupr as grouped_auroc_aupr
from iadr1.ranking import score_order as score_order

ANOMALOUS, NORMAL = 0, 1
YES, NO, UNANSWERED = 0, 1, 2

# Metrics derived from the confusion array alone: these get bootstrap confidence intervals.
CONFUSION_METRICS = (
    "balanced_accuracy",
    "overkill",
    "miss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "unanswered_rate",
)


def confusion(group: np.ndarray, n_groups: int, anomalous: np.ndarray, letter_code: np.ndarray) -> np.ndarray:
    """Counts per group: an int array of shape (n_groups, 2, 3) indexed [group, truth, answer]."""
    truth = np.where(anomalous, ANOMALOUS, NORMAL)
    flat = (group.astype(np.int64) * 2 + truth) * 3 + letter_code.astype(np.int64)
    return np.bincount(flat, minlength=n_groups * 6).reshape(n_groups, 2, 3)


def rates(conf: np.ndarray) -> dict[str, np.ndarray]:
    """All confusion-based metrics (percent) for any leading shape of `conf` (..., 2, 3). NaN where undefined.

    Balanced accuracy of a group with only one class present is that class's accuracy (Overkill or Miss of the
    missing class is NaN). Precision is NaN when nothing was answered yes; F1 = 2TP / (2TP + FP + FN), which is
    0 rather than undefined when there are anomalies but no true positive.
    """
    conf = np.asarray(conf, dtype=np.int64)
    n_anom = conf[..., ANOMALOUS, :].sum(-1)
    n_norm = conf[..., NORMAL, :].sum(-1)
    n = n_anom + n_norm
    tp = conf[..., ANOMALOUS, YES]
    tn = conf[..., NORMAL, NO]
    fp = conf[..., NORMAL, YES]
    fn = n_anom - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        anomaly_acc = np.where(n_anom > 0, tp / np.maximum(n_anom, 1), np.nan)
        normal_acc = np.where(n_norm > 0, tn / np.maximum(n_norm, 1), np.nan)
        both = (normal_acc + anomaly_acc) / 2 * 100  # the paper's formula, operation for operation
        balanced = np.where(n_norm == 0, anomaly_acc * 100, np.where(n_anom == 0, normal_acc * 100, both))
        out = {
            "balanced_accuracy": balanced,
            "overkill": (1 - normal_acc) * 100,
            "miss": (1 - anomaly_acc) * 100,
            "accuracy": np.where(n > 0, (tp + tn) / np.maximum(n, 1) * 100, np.nan),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1) * 100, np.nan),
            "recall": anomaly_acc * 100,
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1) * 100, np.nan),
            "unanswered_rate": np.where(n > 0, conf[..., UNANSWERED].sum(-1) / np.maximum(n, 1) * 100, np.nan),
        }
    return out


def balanced_accuracy(anomalous_correct: int, n_anomalous: int, normal_correct: int, n_normal: int) -> float:
    """The paper's balanced accuracy (percent) from counts, e.g. 1014/1054 and 6619/6996 give 95.40806999499848."""
    conf = np.array(
        [
            [anomalous_correct, n_anomalous - anomalous_correct, 0],
            [0, normal_correct, n_normal - normal_correct],
        ]
    )
    return float(rates(conf)["balanced_accuracy"])


# Ranking metrics from p_yes: iadr1/ranking.py (a leaf module the training stage uses too).


# ------------------------------------------------------------------------------------------------------------
# Consistency
# ------------------------------------------------------------------------------------------------------------
# The two forms a trained model writes, exactly: think, location, type contents free of '<' (so no tag can hide in
# them), no whitespace around the tags, lower-case tags, answer Yes/yes with location and type, No/no without.
_CANONICAL = re.compile(
    r"<think>[^<]*</think>"
    r"(?:<answer>[Nn]o</answer>|<location>[^<]*</location><type>[^<]*</type><answer>[Yy]es</answer>)"
)


def _bulk_decide(texts: Sequence[str]) -> np.ndarray:
    """Decide consistency for most replies at once: 1 / 0 where it is certain, -1 where `parse` must decide.

    - 1: the reply is exactly one of the two canonical forms (`_CANONICAL`). Its only '<' are those of its own
      tags, so `parse` finds this answer tag, reads yes (no) from it, and sees exactly the defect (normal) tag
      sequence with nothing around the tags: well formed.
    - 0: fewer than four '<'. Both grammars need four tags at least (think and answer, opened and closed), each
      starting with '<', so `parse` never calls such a reply well formed.
    One C-level call per reply, no Python frame: the regex is anchored at both ends and has no nested repeats
    (each `[^<]*` stops at the next '<'), so it runs in time linear in the reply, about 0.25 us for 130 characters.
    """
    n = len(texts)
    canonical = np.fromiter(map(bool, map(_CANONICAL.fullmatch, texts)), bool, n)
    out = canonical.astype(np.int8)
    other = ~canonical
    idx = np.flatnonzero(other)
    if idx.size:
        rest = list(itertools.compress(texts, other.tolist()))
        n_lt = np.fromiter(map(str.count, rest, itertools.repeat("<")), np.int64, idx.size)
        out[idx[n_lt >= 4]] = -1
    return out


def consistency_flags(raws: Sequence[str | None]) -> np.ndarray:
    """Per reply: 1 when its structure matches its own answer (`iadr1.answers.parse(raw).well_formed`: location
    and type tags for yes, none for no), 0 when not (unanswered replies included), -1 when there is no reply.

    The exact rule is `parse`; most replies (a trained model's, and untagged baseline replies) are decided in
    bulk first (`_bulk_decide`), and the rest are parsed once per distinct text.
    """
    from iadr1.answers import parse

    n = len(raws)
    out = np.full(n, -1, np.int8)
    try:  # the common case, every reply a string; the string methods of `_bulk_decide` refuse None
        out[:] = _bulk_decide(raws)  # type: ignore[arg-type]
        has = np.ones(n, bool)
    except TypeError:
        has = np.fromiter(map(operator.is_not, raws, itertools.repeat(None)), bool, n)
        out[has] = _bulk_decide(list(itertools.compress(raws, has.tolist())))  # type: ignore[arg-type]
    cache: dict[str, bool] = {}
    for i in np.flatnonzero(has & (out == -1)).tolist():
        r = raws[i]
        v = cache.get(r)  # type: ignore[arg-type]
        if v is None:
            v = cache[r] = parse(r).well_formed  # type: ignore[index]
        out[i] = v
    return out


# ------------------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------------------
def bootstrap(conf: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every confusion metric: arrays of shape (groups, n_boot).

    Resampling a group's images with replacement changes its result only through the confusion counts, and the
    counts of a resample are multinomial(n, observed cell shares): drawing those counts directly gives the same
    distribution as the image-level bootstrap in O(n_boot) work per group, whatever the number of images.
    """
    groups = conf.shape[0]
    draws = np.zeros((groups, n_boot, 2, 3), np.int64)
    for gi in range(groups):
        n = int(conf[gi].sum())
        if n:
            draws[gi] = rng.multinomial(n, conf[gi].ravel() / n, size=n_boot).reshape(n_boot, 2, 3)
    return rates(draws)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """(lower, upper) percentile interval along the last axis, ignoring NaN replicates: shape (..., 2)."""
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    replicates = np.asarray(replicates, dtype=float)
    rows = replicates.reshape(-1, replicates.shape[-1])
    q = np.empty((2, rows.shape[0]))
    # `np.nanpercentile` works one row at a time; rows without NaN (most) go through `np.percentile` at once,
    # which computes the same numbers (NaN removal aside, both are the same sort-and-interpolate).
    has_nan = np.isnan(rows).any(axis=-1)
    q[:, ~has_nan] = np.percentile(rows[~has_nan], [lo, hi], axis=-1)
    if has_nan.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (an absent class) give NaN, as wanted
            q[:, has_nan] = np.nanpercentile(rows[has_nan], [lo, hi], axis=-1)
    return np.moveaxis(q.reshape(2, *replicates.shape[:-1]), 0, -1)
