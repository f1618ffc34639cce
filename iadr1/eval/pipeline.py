"""`evaluate`: test files + predictions -> metrics per dataset and class, with the issues found on the way."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iadr1.data.io import gc_paused
from iadr1.eval import metrics as M
from iadr1.eval.load import (
    SHOW_FIRST,
    GroundTruth,
    Matched,
    TestFileReader,
    load_ground_truth,
    load_predictions,
    match,
)

# A predicted type counts as right when `type_score` is at least this: the same defect category, or texts equal
# or containing one another (docs/method.md §4); a same-group-only match (0.3) or a fuzzy guess does not.
TYPE_MATCH = 0.6


@dataclass
class EvalResult:
    """Metrics (`datasets`, `average`, as written to metrics.json) and what `report` needs for the gallery."""

    datasets: dict[str, dict[str, Any]]
    average: dict[str, Any]
    run: dict[str, Any]
    gt: GroundTruth
    matched: Matched
    consistent: np.ndarray  # int8 per image: 1, 0, or -1 without a reply
    notes: list[str] = field(default_factory=list)
    # Per image: location / type right (1.0), wrong (0.0), or not judged (NaN); see `_type_location`.
    location_ok: np.ndarray = field(default_factory=lambda: np.zeros(0))
    type_ok: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Inputs that look like a mistake (annotations or predictions that name no test image): one line each.
    warnings: list[str] = field(default_factory=list)
    # `iadr1.eval.threshold.operating_points` for the --target-miss values, plus `score` (where the decision
    # score came from); None when no target was asked for.
    operating: dict[str, Any] | None = None
    # `iadr1.eval.mmad.mmad_metrics` when the predictions answer MMAD's other questions; else None.
    mmad: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"datasets": self.datasets, "average": self.average, "run": self.run}
        if self.operating is not None:
            out["operating_points"] = self.operating
        if self.mmad is not None:
            out["mmad"] = self.mmad
        return out


def _num(x: Any, digits: int | None = None) -> float | None:
    """A JSON number: None for NaN (JSON has no NaN)."""
    x = float(x)
    if np.isnan(x):
        return None
    return round(x, digits) if digits is not None else x


def _type_location(gt: GroundTruth, matched: Matched) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per image: location and type correctness (1.0 / 0.0, NaN where not judged).

    Judged on true positives whose ground truth gives a location / type, with the functions of the training
    rewards (`iadr1.rewards`) so that eval and SC-GRPO agree on what a right location or type is.
    """
    n = len(gt)
    loc = np.full(n, np.nan)
    typ = np.full(n, np.nan)
    if not gt.defects:
        return loc, typ, []
    try:
        from iadr1.rewards import location_score, type_score
    except ImportError:
        return loc, typ, ["type/location accuracy skipped: iadr1.rewards has no location_score/type_score"]
    from iadr1.answers import parse

    for i, (gt_loc, gt_type) in gt.defects.items():
        if matched.letter_code[i] != M.YES:
            continue  # judged on detected defects only: a miss is already counted by Miss
        raw = matched.raw(i)
        reply = parse(raw) if raw else None
        if gt_loc:
            # strict: a reply naming no grid cell is wrong (the published reward counts it as "center").
            loc[i] = float(location_score((reply and reply.location) or "", gt_loc, strict=True) >= 1.0)
        if gt_type:
            typ[i] = float(type_score((reply and reply.type) or "", gt_type) >= TYPE_MATCH)
    return loc, typ, []


def _group_dicts(
    conf: np.ndarray,
    cons: tuple[np.ndarray, np.ndarray],
    auc: tuple[np.ndarray, np.ndarray, np.ndarray],
    tl: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ci: dict[str, np.ndarray] | None,
) -> list[dict[str, Any]]:
    """One metrics dict per group, JSON-ready (NaN as null)."""
    r = M.rates(conf)
    cons_ok, cons_n = cons
    out = []
    for g in range(conf.shape[0]):
        c = conf[g]
        d: dict[str, Any] = {
            "n": int(c.sum()),
            "n_anomalous": int(c[M.ANOMALOUS].sum()),
            "n_normal": int(c[M.NORMAL].sum()),
        }
        d.update({k: _num(v[g]) for k, v in r.items()})
        d["consistency_rate"] = _num(cons_ok[g] / cons_n[g] * 100) if cons_n[g] else None
        d["auroc"] = _num(auc[0][g] * 100)
        d["aupr"] = _num(auc[1][g] * 100)
        # AUROC and AUPR rank the images that have a P(yes) only: the share that had one, beside them.
        d["p_yes_coverage"] = _num(auc[2][g] / d["n"] * 100) if d["n"] else None
        loc_ok, loc_n, typ_ok, typ_n = (a[g] for a in tl)
        d["location_accuracy"] = _num(loc_ok / loc_n * 100) if loc_n else None
        d["type_accuracy"] = _num(typ_ok / typ_n * 100) if typ_n else None
        d["n_location_judged"] = int(loc_n)
        d["n_type_judged"] = int(typ_n)
        d["confusion"] = {
            truth: {"yes": int(c[t, M.YES]), "no": int(c[t, M.NO]), "unanswered": int(c[t, M.UNANSWERED])}
            for t, truth in ((M.ANOMALOUS, "anomalous"), (M.NORMAL, "normal"))
        }
        if ci is not None:
            d["ci95"] = {k: [_num(v[g, 0]), _num(v[g, 1])] for k, v in ci.items()}
        out.append(d)
    return out


def _grouped(
    group: np.ndarray,
    n_groups: int,
    gt: GroundTruth,
    matched: Matched,
    consistent: np.ndarray,
    loc: np.ndarray,
    typ: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    by_score: np.ndarray,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    conf = M.confusion(group, n_groups, gt.anomalous, matched.letter_code)
    has_reply = consistent >= 0
    cons = (
        np.bincount(group[has_reply], weights=consistent[has_reply], minlength=n_groups),
        np.bincount(group[has_reply], minlength=n_groups),
    )
    auc = (
        *M.grouped_auroc_aupr(group, n_groups, gt.anomalous, matched.p_yes, by_score),
        np.bincount(group[~np.isnan(matched.p_yes)], minlength=n_groups),
    )
    tl_parts = []
    for a in (loc, typ):
        judged = ~np.isnan(a)
        tl_parts += [
            np.bincount(group[judged], weights=a[judged], minlength=n_groups),
            np.bincount(group[judged], minlength=n_groups),
        ]
    reps = M.bootstrap(conf, n_boot, rng) if n_boot > 0 else None
    ci = {k: M.percentile_interval(v) for k, v in reps.items()} if reps is not None else None
    return _group_dicts(conf, cons, auc, tuple(tl_parts), ci), reps  # type: ignore[arg-type]


def _average(per_dataset: list[dict[str, Any]], ba_reps: np.ndarray | None) -> dict[str, Any]:
    """The mean over datasets of every rate (as the paper's Average column), counts summed."""
    avg: dict[str, Any] = {}
    if not per_dataset:
        return avg
    for k in per_dataset[0]:
        if k in ("classes", "species", "confusion", "ci95"):
            continue
        vals = [d[k] for d in per_dataset]
        if k.startswith("n"):
            avg[k] = int(sum(vals))
        else:
            present = [x for x in vals if x is not None]
            avg[k] = sum(present) / len(present) if present else None  # as accuracy.csv's Average row
    avg["n_datasets"] = len(per_dataset)
    if ba_reps is not None:
        # Datasets are resampled independently; each replicate's average is one draw of the average.
        with np.errstate(invalid="ignore"):
            lo_hi = M.percentile_interval(np.nanmean(ba_reps, axis=0))
        avg["ci95"] = {"balanced_accuracy": [_num(lo_hi[0]), _num(lo_hi[1])]}
    return avg


def per_specie(result: EvalResult) -> dict[str, dict[str, dict[str, Any]]]:
    """Results per dataset and defect kind: `{dataset: {specie: {n, n_right, accuracy, location_accuracy,
    type_accuracy, n_location_judged, n_type_judged}}}`, `good` (the normal images) first, then by name.

    The specie of an image is `iadr1.data.keys.specie_of` (the folder under `test/` of its key, `good` for a normal
    image). `accuracy`: percent of the specie's images answered right (yes for a defect, no for `good`); unanswered
    counts as wrong. Location and type accuracy as the dataset's (judged on true positives with ground truth), None
    for `good` and where nothing was judged.
    """
    gt, m = result.gt, result.matched
    n_sp = len(gt.species)
    group = gt.dataset_idx * n_sp + gt.specie_idx
    size = len(gt.datasets) * n_sp
    right = np.where(gt.anomalous, m.letter_code == M.YES, m.letter_code == M.NO)
    n = np.bincount(group, minlength=size)
    n_right = np.bincount(group, weights=right, minlength=size)
    judged = []
    for a in (result.location_ok, result.type_ok):
        a = a if len(a) else np.full(len(gt), np.nan)  # no annotations: nothing judged
        ok = ~np.isnan(a)
        judged.append((np.bincount(group[ok], weights=a[ok], minlength=size), np.bincount(group[ok], minlength=size)))
    order = [0, *sorted(range(1, n_sp), key=gt.species.__getitem__)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for di in sorted(range(len(gt.datasets)), key=gt.datasets.__getitem__):
        rows: dict[str, dict[str, Any]] = {}
        for si in order:
            g = di * n_sp + si
            if not n[g]:
                continue
            d: dict[str, Any] = {"n": int(n[g]), "n_right": int(n_right[g]), "accuracy": _num(n_right[g] / n[g] * 100)}
            for name, (ok_sum, ok_n) in zip(("location", "type"), judged, strict=True):
                d[f"{name}_accuracy"] = _num(ok_sum[g] / ok_n[g] * 100) if ok_n[g] else None
                d[f"n_{name}_judged"] = int(ok_n[g])
            rows[gt.species[si]] = d
        out[gt.datasets[di]] = rows
    return out


def evaluate(
    test_files: Sequence[str | os.PathLike],
    prediction_files: Sequence[str | os.PathLike],
    *,
    compat: bool = False,
    annotations: Sequence[str | os.PathLike] = (),
    n_boot: int = 1000,
    seed: int = 0,
    name: str | None = None,
    target_miss: Sequence[float] = (),
    calibrate_on: Sequence[str | os.PathLike] = (),
    calibrate_test_files: Sequence[str | os.PathLike] = (),
) -> EvalResult:
    """Score predictions against test files: metrics per dataset, per class, and averaged over datasets.

    `compat` labels images by the original rule ("good" in the path means normal) instead of the test file's
    answers. `n_boot` bootstrap replicates (0: none) give 95% intervals, reproducible for a given `seed`.
    `target_miss` (fractions): an operating point per target (`iadr1.eval.threshold`), its threshold chosen on
    `calibrate_on` predictions when given (labelled by `calibrate_test_files`, default the test files: then only
    the images those predictions name count), else on the predictions scored.
    """
    # Millions of records, no reference cycles: the cyclic collector would only rescan them (about 10% of the time
    # while reading; during the metrics, each full collection walks the lists of a million strings again).
    with gc_paused():
        result = _evaluate(
            test_files, prediction_files, compat=compat, annotations=annotations, n_boot=n_boot, seed=seed, name=name
        )
        if result.matched.n_skipped:  # records of MMAD's other question types
            from iadr1.eval.mmad import mmad_metrics

            result.mmad = mmad_metrics(test_files, prediction_files)
            if result.mmad is not None:
                skipped = f"{result.matched.n_skipped} record(s) of another question type than Anomaly Detection"
                result.notes[:] = [
                    f"{skipped}: scored by question type (MMAD)" if n.startswith(skipped) else n for n in result.notes
                ]
        if target_miss:
            result.operating = _operating(
                result, list(target_miss), calibrate_on, calibrate_test_files or test_files, compat, n_boot, seed
            )
            result.run["target_miss"] = list(target_miss)
            result.run["calibrate_on"] = [str(f) for f in calibrate_on]
            result.notes.extend(result.operating["notes"])
        return result


def _operating(
    result: EvalResult,
    targets: list[float],
    calibrate_on: Sequence[str | os.PathLike],
    calibrate_test_files: Sequence[str | os.PathLike],
    compat: bool,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The operating points of `result` (`iadr1.eval.threshold.operating_points`), with where the score came from."""
    from iadr1.errors import ConfigError
    from iadr1.eval.threshold import operating_points, score_sources

    bad = [m for m in targets if not 0 <= m < 1]
    if bad:
        raise ConfigError(f"--target-miss {bad[0]}: a fraction in [0, 1), e.g. 0.01 for at most 1% missed")
    gt, m = result.gt, result.matched
    calibration = None
    if calibrate_on:
        cal_gt = load_ground_truth(calibrate_test_files, compat=compat)
        cal_m = match(cal_gt, load_predictions(calibrate_on))
        keep = cal_m.has_prediction
        if not keep.any():
            raise ConfigError(
                f"--calibrate-on {', '.join(map(str, calibrate_on))}: none of its predictions names an image of "
                f"{', '.join(map(str, calibrate_test_files))} (give its own test file with --calibrate-test-file)"
            )
        calibration = (cal_gt.datasets, cal_gt.dataset_idx[keep], cal_gt.anomalous[keep], cal_m.score[keep])
        if set(cal_gt.images[i] for i in np.flatnonzero(keep)) & set(gt.images):
            result.warnings.append(
                "the calibration predictions and the scored ones share images: the threshold is partly chosen on "
                "the data it is reported on"
            )
    out = operating_points(
        gt.datasets, gt.dataset_idx, gt.anomalous, m.score, targets, calibration=calibration, n_boot=n_boot, seed=seed
    )
    out["score"] = score_sources(m.p_defect, m.p_yes)
    return out


def _evaluate(
    test_files: Sequence[str | os.PathLike],
    prediction_files: Sequence[str | os.PathLike],
    *,
    compat: bool,
    annotations: Sequence[str | os.PathLike],
    n_boot: int,
    seed: int,
    name: str | None,
) -> EvalResult:
    reader = TestFileReader.start(test_files)  # big test files: read on the other core meanwhile
    if reader is None:
        gt = load_ground_truth(test_files, compat=compat, annotations=annotations)
        preds = load_predictions(prediction_files)
    else:
        try:
            preds = load_predictions(prediction_files)
        except BaseException:
            reader.cancel()
            raise
        gt = load_ground_truth(test_files, compat=compat, annotations=annotations, reader=reader)
    matched = match(gt, preds)
    n_predictions = len(preds.images)
    # In file order, where the reply strings lie in memory in order (2x faster than in test-file order).
    flags = M.consistency_flags(preds.raws)
    del preds  # the records are no longer needed: free them before the metrics
    consistent = np.full(len(gt), -1, np.int8)
    consistent[matched.has_prediction] = flags[matched.pred_index[matched.has_prediction]]
    loc, typ, notes = _type_location(gt, matched)
    rng = np.random.default_rng(seed)
    by_score = M.score_order(matched.p_yes)  # one sort for both groupings
    args = (gt, matched, consistent, loc, typ, n_boot, rng, by_score)
    ds_dicts, ds_reps = _grouped(gt.dataset_idx, len(gt.datasets), *args)
    cls_dicts, _ = _grouped(gt.class_idx, len(gt.classes), *args)
    datasets: dict[str, dict[str, Any]] = {}
    order = sorted(range(len(gt.datasets)), key=lambda i: gt.datasets[i])
    for i in order:
        d = ds_dicts[i]
        d["classes"] = {
            cls: cls_dicts[ci]
            for ci, (ds, cls) in sorted(enumerate(gt.classes), key=lambda t: t[1])
            if ds == gt.datasets[i]
        }
        datasets[gt.datasets[i]] = d
    ba_reps = ds_reps["balanced_accuracy"][order] if ds_reps is not None else None
    average = _average([datasets[k] for k in datasets], ba_reps)

    n_missing, n_unknown = len(matched.missing), len(matched.unknown)
    if n_missing:
        notes.append(f"{n_missing} test image(s) without a prediction, scored unanswered: {_first(matched.missing)}")
    if n_unknown:
        notes.append(f"{n_unknown} prediction(s) for images not in the test files, ignored: {_first(matched.unknown)}")
    if matched.n_error:
        notes.append(f"{matched.n_error} prediction(s) carry an error (image unreadable at inference): unanswered")
    if matched.n_skipped:
        notes.append(f"{matched.n_skipped} record(s) of another question type than Anomaly Detection, ignored")
    if matched.n_label_disagreements:
        notes.append(
            f"{matched.n_label_disagreements} original record(s) whose correct_answer differs from the "
            f"{'path rule' if compat else 'test file'}; the {'path rule' if compat else 'test file'} is used"
        )
    warnings = _input_warnings(gt, matched, n_predictions)
    perturb = _perturbations(prediction_files, notes, warnings)
    run = {
        "name": name,
        "test_files": [str(f) for f in test_files],
        "predictions": [str(f) for f in prediction_files],
        "perturb": perturb,
        "annotations": [str(f) for f in annotations],
        "compat": compat,
        "bootstrap": n_boot,
        "seed": seed,
        "n_images": len(gt),
        "n_predictions": n_predictions,
        "missing": {"count": n_missing, "first": matched.missing[:SHOW_FIRST]},
        "unknown": {"count": n_unknown, "first": matched.unknown[:SHOW_FIRST]},
        "errors": matched.n_error,
        "notes": notes,
        "warnings": warnings,
    }
    result = EvalResult(datasets, average, run, gt, matched, consistent, notes, loc, typ, warnings)
    for ds, species in per_specie(result).items():
        datasets[ds]["species"] = species
    return result


def _perturbations(
    prediction_files: Sequence[str | os.PathLike], notes: list[str], warnings: list[str]
) -> list[str] | None:
    """The image perturbations the predictions were made with (`iadr1 infer --perturb`), from the run manifests
    beside the files (`predictions*.run.json`): [] for a clean run, None when no manifest says (a note names them
    when there are some; files of different perturbations are a warning, and None)."""
    import json
    from pathlib import Path

    found: set[tuple[str, ...]] = set()
    for f in prediction_files:
        try:
            settings = json.loads(Path(f).with_suffix(".run.json").read_text()).get("settings")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(settings, dict):
            found.add(tuple(str(x) for x in settings.get("perturb") or ()))
    if len(found) > 1:
        shown = "; ".join(" + ".join(p) or "clean" for p in sorted(found))
        warnings.append(f"the prediction files were made with different image perturbations ({shown}): mixed metrics")
        return None
    perturb = list(found.pop()) if found else None
    if perturb:
        notes.append(f"images perturbed at inference (iadr1 infer --perturb): {', '.join(perturb)}")
    return perturb


def _input_warnings(gt: GroundTruth, matched: Matched, n_predictions: int) -> list[str]:
    """One line per input none of whose images is a test image: a key-convention mistake, not a few strays
    (docs/convert.md, "Keys")."""
    like = f"test images look like {gt.images[0]!r}" if len(gt) else "there are no test images"
    out = [
        f"none of the {a.n} annotations in {a.file} match a test image (first: {a.unmatched_first[0]!r}; {like}): "
        "no location or type is judged from it"
        for a in gt.annotation_matches
        if a.n and not a.matched
    ]
    if n_predictions and len(matched.unknown) == n_predictions:
        out.append(
            f"none of the {n_predictions} predictions match a test image (first: {matched.unknown[0]!r}; {like}): "
            "every test image is scored unanswered"
        )
    return out


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:SHOW_FIRST])
    return shown + (f" and {len(items) - SHOW_FIRST} more" if len(items) > SHOW_FIRST else "")
