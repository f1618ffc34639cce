"""Evaluation metrics, vectorised over groups (datasets, classes) and bootstrap replicates with numpy.

Everything here works on a confusion array `conf[..., truth, answer]`: truth 0 = anomalous, 1 = normal; answer
0 = yes (A), 1 = no (B), 2 = unanswered (E, counted wrong, as in the paper). Rates are in percent.

The paper's metric (REFERENCE.md section 6), per dataset:
    balanced accuracy = (normal_acc + anomaly_acc) / 2 * 100,  Overkill = (1 - normal_acc) * 100,
    Miss = (1 - anomaly_acc) * 100,
computed with exactly these floating-point operations, so published numbers are reproduced to the last digit.
"""

from __future__ import annotations

import itertools
import operator
import warnings
from collections.abc import Sequence

import numpy as np

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


# ------------------------------------------------------------------------------------------------------------
# Ranking metrics from p_yes
# ------------------------------------------------------------------------------------------------------------
def grouped_auroc_aupr(
    group: np.ndarray, n_groups: int, positive: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AUPR (fractions in [0, 1]) per group, over the items whose `score` is not NaN.

    AUROC is the Mann-Whitney statistic with tied scores given their average rank (ties count one half).
    AUPR is average precision, sum over distinct thresholds of (recall step) x precision, with no interpolation:
    the same number as scikit-learn's `roc_auc_score` / `average_precision_score`. NaN where a group lacks
    positives (both) or negatives (AUROC).
    """
    valid = ~np.isnan(score)
    g, y, s = group[valid].astype(np.int64), positive[valid].astype(bool), score[valid].astype(float)
    auroc = np.full(n_groups, np.nan)
    aupr = np.full(n_groups, np.nan)
    if g.size == 0:
        return auroc, aupr
    # By group, then ascending score: a score sort, then a stable sort by group (radix sort for small ints).
    by_score = np.argsort(s, kind="stable")
    small = np.uint16 if n_groups < 2**16 else np.int64
    order = by_score[np.argsort(g[by_score].astype(small), kind="stable")]
    g, y, s = g[order], y[order], s[order]
    m = g.size
    new_run = np.empty(m, bool)
    new_run[0] = True
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], m)  # exclusive
    run_group = g[run_start]
    run_id = np.cumsum(new_run) - 1
    first = np.zeros(n_groups, np.int64)  # index of each group's first item in sorted order
    group_start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    first[g[group_start]] = group_start

    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_all = np.bincount(g, minlength=n_groups).astype(float)
    n_neg = n_all - n_pos

    # AUROC: rank sum of positives, ranks 1-based within the group, tied runs at their mean rank.
    run_rank = (run_start + run_end - 1) / 2 - first[run_group] + 1
    rank_sum = np.bincount(g, weights=run_rank[run_id] * y, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = np.where(n_pos * n_neg > 0, (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan)

    # AUPR: thresholds from the top; at a run, everything in the run or above it is answered positive.
    run_tp = np.bincount(run_id, weights=y, minlength=run_start.size)
    run_n = (run_end - run_start).astype(float)
    below_tp = np.cumsum(run_tp) - run_tp  # global prefix, exclusive
    below_n = np.cumsum(run_n) - run_n
    group_first_run = run_id[first[run_group]]
    tp_above = n_pos[run_group] - (below_tp - below_tp[group_first_run])
    n_above = n_all[run_group] - (below_n - below_n[group_first_run])
    precision = tp_above / n_above
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.bincount(run_group, weights=run_tp * precision, minlength=n_groups) / n_pos
    aupr = np.where(n_pos > 0, ap, np.nan)
    return auroc, aupr


# ------------------------------------------------------------------------------------------------------------
# Consistency
# ------------------------------------------------------------------------------------------------------------
def _word(b: bytes) -> np.uint64:
    return np.uint64(int.from_bytes(b, "little"))


_START = _word(b"\x00<think>")
_YES_TAIL = [b"</type><answer>Yes</answer>", b"</type><answer>yes</answer>"]
_NO_TAIL = [b"</think><answer>No</answer>", b"</think><answer>no</answer>"]


def _tail_matches(words: np.ndarray, pos: np.ndarray, tails: list[bytes]) -> np.ndarray:
    """Whether the bytes at `pos` start with one of the `tails` (each 17..32 bytes), read as 8-byte words.

    Alternatives after the first are tried only where the earlier ones failed (the first is the common case).
    """
    ok = np.zeros(pos.size, bool)
    todo = np.arange(pos.size)
    for t in tails:
        p = pos[todo]
        hit = np.ones(p.size, bool)
        for o in [*range(0, len(t) - 7, 8), len(t) - 8]:
            hit &= words[p + o] == _word(t[o : o + 8])
        ok[todo[hit]] = True
        todo = todo[~hit]
        if todo.size == 0:
            break
    return ok


def _bulk_decide(raws: Sequence[str | None]) -> np.ndarray:
    """Decide consistency for most replies at once, without a Python loop: 1 / 0 where it is certain, -1 where
    `parse` must decide.

    1: the exact form a trained model writes, `<think>X</think><location>L</location><type>T</type><answer>Yes
    </answer>` or `<think>X</think><answer>No</answer>` (lower-case tags, no whitespace around them, X, L, T free
    of `<`, answer Yes/yes/No/no), which `parse` always calls well formed. 0: fewer than four `<` (both grammars
    need four tags at least: think and answer, each opened and closed), which `parse` never calls well formed.
    Works on all replies joined into one byte buffer: counts of `<` per reply, then 8-byte word comparisons at the
    tag positions. (A missing reply reads as the text "None": decided 0, and ignored by the caller.)
    """
    n = len(raws)
    out = np.full(n, -1, np.int8)
    texts = list(map(str, raws))
    joined = "\x00" + "\x00".join(texts) + "\x00" * 40
    if joined.count("\x00") != n + 40:  # a NUL inside a reply would shift the record boundaries
        return out
    if joined.isascii():  # one byte per character: boundaries from the lengths, no scan of the buffer
        buf = np.frombuffer(joined.encode("ascii"), np.uint8)
        nul = np.zeros(n + 1, np.int64)  # nul[r] precedes reply r, nul[r + 1] ends it
        np.cumsum(np.fromiter(map(len, texts), np.int64, n) + 1, out=nul[1:])
    else:
        buf = np.frombuffer(joined.encode("utf-8", "surrogatepass"), np.uint8)
        nul = np.flatnonzero(buf == 0)[: n + 1]
    del joined, texts
    words = np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=buf.data, strides=(1,))
    lt = np.flatnonzero(buf == ord("<"))
    bounds = np.searchsorted(lt, nul)  # one search per reply, not per '<'
    first_lt = bounds[:n]  # index in `lt` of each reply's first '<'
    counts = np.diff(bounds)
    out[counts < 4] = 0
    for n_tags, tails in ((8, _YES_TAIL), (4, _NO_TAIL)):
        r = np.flatnonzero(counts == n_tags)
        if r.size == 0:
            continue
        o = first_lt[r]
        ok = (lt[o] == nul[r] + 1) & (words[lt[o] - 1] == _START)
        p1 = lt[o + 1]
        if n_tags == 8:
            ok &= _tail_matches(words, p1, [b"</think><location>"])
            p3 = lt[o + 3]
            ok &= _tail_matches(words, p3, [b"</location><type>"])
            last = lt[o + 5]
        else:
            last = p1
        ok &= _tail_matches(words, last, tails) & (last + len(tails[0]) == nul[r + 1])
        out[r[ok]] = 1
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
    n_none = raws.count(None) if isinstance(raws, list) else sum(r is None for r in raws)
    if n_none == n:
        return out
    has = np.ones(n, bool) if n_none == 0 else np.fromiter(map(operator.is_not, raws, itertools.repeat(None)), bool, n)
    bulk = _bulk_decide(raws)
    out[has] = bulk[has]
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (an absent class) give NaN, as wanted
        q = np.nanpercentile(replicates, [lo, hi], axis=-1)
    return np.moveaxis(q, 0, -1)
