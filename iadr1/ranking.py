"""Ranking metrics (AUROC, AUPR) over scores, grouped: pure numpy, no other iadr1 module.

A leaf module so that every stage can use it without importing a later one: `iadr1.eval` scores `p_yes` with it,
and the vision warm-up (`iadr1.train.vision`) its tower's defect scores. The decision score and its threshold rule
(`decision_score`, `threshold_decision`) live here too: infer, predict, the app and eval apply the same one.
"""

from __future__ import annotations

import numpy as np


def decision_score(p_defect: float | None, p_yes: float | None) -> float | None:
    """The score an operating point thresholds: P(defect) read where the reply decides, else P(yes) (prediction
    files written before P(defect) existed, backends that give no decision position). None without either."""
    return p_defect if p_defect is not None else p_yes


def threshold_decision(score: float | None, threshold: float) -> str | None:
    """ "yes" (defective) when `score >= threshold`, "no" below it, None without a score."""
    return None if score is None else ("yes" if score >= threshold else "no")


def score_order(score: np.ndarray) -> np.ndarray:
    """Indices of the items that have a score (not NaN), by ascending score. The order of tied scores does not
    matter to `grouped_auroc_aupr` (ties are handled as runs), so one sort serves every grouping."""
    valid = np.flatnonzero(~np.isnan(score))
    return valid[np.argsort(score[valid])]


def grouped_auroc_aupr(
    group: np.ndarray,
    n_groups: int,
    positive: np.ndarray,
    score: np.ndarray,
    by_score: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AUPR (fractions in [0, 1]) per group, over the items whose `score` is not NaN.

    AUROC is the Mann-Whitney statistic with tied scores given their average rank (ties count one half).
    AUPR is average precision, sum over distinct thresholds of (recall step) x precision, with no interpolation:
    the same number as scikit-learn's `roc_auc_score` / `average_precision_score`. NaN where a group lacks
    positives (both) or negatives (AUROC). `by_score`: `score_order(score)`, when the caller already has it.
    """
    if by_score is None:
        by_score = score_order(score)
    auroc = np.full(n_groups, np.nan)
    aupr = np.full(n_groups, np.nan)
    if by_score.size == 0:
        return auroc, aupr
    # By group, then ascending score: the score order, then a stable sort by group (radix sort for small ints).
    small = np.uint16 if n_groups < 2**16 else np.int64
    order = by_score[np.argsort(group[by_score].astype(small), kind="stable")]
    g, y, s = group[order].astype(np.int64), positive[order].astype(bool), score[order].astype(float)
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
