"""Evaluation statistics: AUC with DeLong CIs, proportions with Wilson CIs, macro averages.

Written against the authors' defects (REFERENCE.md section 2): every CI is computed on the
evaluated cases themselves (not a t-interval over folds), multiclass rates are one-vs-rest per
class (not a 2x2 corner of the 5x5 matrix), DeLong's covariance is the structural-component one,
and the positive class of a binary task is named, never implied by an index.

Methods (also written into every report, ``METHODS``):
- AUC: scikit-learn. 95% CI: DeLong's variance by the fast midrank algorithm of Sun and Xu
  (2014); Wald interval AUC +- z(0.975) * SE on the AUC scale (no logit), clipped to [0, 1].
  Undefined (null) when a class is absent, and the SE when a class has a single case.
- Proportions: Wilson score interval; null when the denominator is 0.
- Multiclass: one-vs-rest per class; the macro value is the unweighted mean over the classes
  where the value is defined; its CI is a patient-level percentile bootstrap (patients drawn
  with replacement with all their rows, seeded), because the one-vs-rest AUCs of different
  classes share cases with different roles and DeLong's covariance does not cover their mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from train.predictions import Predictions

Z95 = float(norm.ppf(0.975))
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
MACRO_LABEL = "macro one-vs-rest"
RATE_NAMES = ("sensitivity", "specificity", "ppv", "npv")
METRIC_NAMES = ("auc", "accuracy", *RATE_NAMES)
# Weight matrices are processed in chunks of at most this many cells (memory bound).
_CHUNK_CELLS = 2_000_000

METHODS = {
    "auc": "scikit-learn roc_auc_score",
    "auc_ci95": "DeLong variance (fast midrank algorithm, Sun & Xu 2014); "
    "AUC +- z SE (z = 1.95996, the 97.5% normal quantile) on the AUC scale (no logit), "
    "clipped to [0, 1]",
    "proportion_ci95": "Wilson score interval",
    "macro": "unweighted mean over classes of one-vs-rest values (classes where defined)",
    "macro_ci95": f"patient-level percentile bootstrap, {BOOTSTRAP_REPS} replicates, "
    f"seed {BOOTSTRAP_SEED}",
    "rows": "each row (image, or lesion after fusion) counts as one case; images of one "
    "patient are not independent, so image-level DeLong and Wilson intervals are too narrow",
}


class OperatingPoint(StrEnum):
    """How a probability vector becomes a class call."""

    ARGMAX = "argmax"
    THRESHOLD = "threshold"


# ----------------------------------------------------------------------------- proportions


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside 0..n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


@dataclass(frozen=True)
class Proportion:
    """k of n, with its Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n > 0 else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson_interval(self.k, self.n)

    def as_dict(self) -> dict[str, Any]:
        ci = self.ci95
        return {"value": self.value, "ci95": list(ci) if ci else None, "k": self.k, "n": self.n}


def binary_rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, Proportion]:
    """Sensitivity, specificity, PPV and NPV of one 2x2 table."""
    return {
        "sensitivity": Proportion(tp, tp + fn),
        "specificity": Proportion(tn, tn + fp),
        "ppv": Proportion(tp, tp + fp),
        "npv": Proportion(tn, tn + fn),
    }


# ------------------------------------------------------------------------------------- AUC


@dataclass(frozen=True)
class DelongResult:
    """AUCs of one or more scores on the same cases and their DeLong covariance matrix."""

    aucs: np.ndarray
    covariance: np.ndarray


def fast_delong(scores: np.ndarray, positive: np.ndarray) -> DelongResult:
    """DeLong's AUC covariance by Sun and Xu's midrank algorithm, O(k N log N).

    ``scores``: (N,) or (k, N), k scores of the same N cases; ``positive``: (N,) bool.
    The covariance is NaN when a class has fewer than 2 cases (its variance is undefined).
    """
    z = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    if z.shape[1] != pos.size:
        raise ValueError(f"{z.shape[1]} scores for {pos.size} labels")
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative case")
    tz = rankdata(z, axis=1)
    tx = rankdata(z[:, pos], axis=1)
    ty = rankdata(z[:, ~pos], axis=1)
    tz_pos, tz_neg = tz[:, pos], tz[:, ~pos]
    aucs = (tz_pos.sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # Structural components: for each positive, the fraction of negatives it outranks (ties
    # 1/2); for each negative, the fraction of positives that outrank it.
    v_pos = (tz_pos - tx) / n
    v_neg = 1.0 - (tz_neg - ty) / m
    k = z.shape[0]
    if m < 2 or n < 2:
        return DelongResult(aucs, np.full((k, k), np.nan))
    s_pos = np.atleast_2d(np.cov(v_pos, ddof=1))
    s_neg = np.atleast_2d(np.cov(v_neg, ddof=1))
    return DelongResult(aucs, s_pos / m + s_neg / n)


@dataclass(frozen=True)
class AucEstimate:
    """An AUC, its DeLong SE and 95% CI; all None where undefined."""

    auc: float | None
    se: float | None
    ci95: tuple[float, float] | None


def auc_with_ci(positive: np.ndarray, scores: np.ndarray) -> AucEstimate:
    """AUC (scikit-learn) with the DeLong 95% CI; None when a class is absent."""
    pos = np.asarray(positive, dtype=bool)
    if pos.all() or not pos.any():
        return AucEstimate(None, None, None)
    auc = float(roc_auc_score(pos, scores))
    var = float(fast_delong(scores, pos).covariance[0, 0])
    if not np.isfinite(var):
        return AucEstimate(auc, None, None)
    se = float(np.sqrt(max(var, 0.0)))
    return AucEstimate(auc, se, (max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)))


# -------------------------------------------------------------------- operating point


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class calls: argmax (ties to the lower index), or p(class 1) >= threshold (binary)."""
    probs = np.asarray(probs, dtype=np.float64)
    if threshold is None:
        return probs.argmax(axis=1)
    if probs.shape[1] != 2:
        raise ValueError("a probability threshold applies to binary tasks only")
    return (probs[:, 1] >= threshold).astype(np.int64)


def choose_threshold(val_predictions: Predictions) -> float:
    """Youden's J on validation data: the p(positive) cut-off maximising SENS + SPEC - 1.

    Cases with p >= threshold are called positive. Among equal J the highest cut-off wins
    (fewer positive calls).
    """
    if val_predictions.spec.num_classes != 2:
        raise ValueError(f"{val_predictions.task}: Youden's threshold is for binary tasks")
    pos = val_predictions.labels == 1
    if pos.all() or not pos.any():
        raise ValueError("Youden's threshold needs both classes in the validation data")
    fpr, tpr, thresholds = roc_curve(pos, val_predictions.probs[:, 1], drop_intermediate=False)
    j = (tpr - fpr)[1:]  # the first point is the +inf cut-off (no positive calls)
    return float(thresholds[1:][int(np.argmax(j))])


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows true class, columns predicted class."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predicted)), 1)
    return cm


# ---------------------------------------------------------------------------- bootstrap


def patient_bootstrap_weights(
    patient_ids: Sequence[str], reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
) -> Iterator[np.ndarray]:
    """Row weights of patient-level bootstrap replicates, in chunks of (b, N).

    A replicate draws the patients with replacement; each row's weight is how often its
    patient was drawn, which is the same data set as repeating the rows.
    """
    codes, index = np.unique(np.asarray(patient_ids, dtype=object), return_inverse=True)
    n_patients, n_rows = len(codes), len(index)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n_rows, 1))
    done = 0
    while done < reps:
        b = min(chunk, reps - done)
        counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=b)
        yield counts[:, index].astype(np.float64)
        done += b


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (ties count 1/2) of each row of case weights (b, N); NaN where a class weighs 0."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    pos = np.asarray(positive, dtype=bool)[order]
    w = np.atleast_2d(weights)[:, order]
    new_group = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], s_sorted.size]
    w_neg = w * ~pos
    w_pos = w * pos
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    below = cum[:, starts[group]]
    ties = cum[:, ends[group]] - below
    num = (w_pos * (below + 0.5 * ties)).sum(axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_confusion(
    labels: np.ndarray, predicted: np.ndarray, k: int, weights: np.ndarray
) -> np.ndarray:
    """(b, k, k) weighted confusion matrices, rows true class, columns predicted."""
    cell = np.asarray(labels) * k + np.asarray(predicted)
    onehot = np.zeros((cell.size, k * k))
    onehot[np.arange(cell.size), cell] = 1.0
    return (np.atleast_2d(weights) @ onehot).reshape(-1, k, k)


def ovr_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest SENS/SPEC/PPV/NPV per class of (..., k, k) matrices; NaN where undefined."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    actual = cm.sum(axis=-1)
    called = cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))[..., None]
    fn, fp = actual - tp, called - tp
    tn = total - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": np.where(actual > 0, tp / actual, np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "ppv": np.where(called > 0, tp / called, np.nan),
            "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan),
        }


def percentile_ci(
    values: np.ndarray, min_valid: float = 0.5
) -> tuple[tuple[float, float] | None, int]:
    """2.5th and 97.5th percentiles of the finite values, and how many there were.

    None when fewer than ``min_valid`` of the replicates were finite (the statistic was
    undefined in too many resamples for the interval to describe it).
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.size < min_valid * values.size:
        return None, int(finite.size)
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return (float(lo), float(hi)), int(finite.size)


# ----------------------------------------------------------------------------- reports


def _header(preds: Predictions) -> dict[str, Any]:
    spec = preds.spec
    counts = np.bincount(preds.labels, minlength=spec.num_classes)
    return {
        "task": preds.task,
        "classes": list(spec.class_names),
        "n": len(preds),
        "n_patients": len(set(preds.patient_ids)),
        "n_lesions": len(set(preds.lesion_ids)),
        "class_counts": {c: int(counts[i]) for i, c in enumerate(spec.class_names)},
    }


def _confusion_dict(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    return {
        "labels": list(class_names),
        "rows": "true class",
        "columns": "predicted class",
        "counts": cm.tolist(),
    }


def _auc_fields(est: AucEstimate) -> dict[str, Any]:
    return {
        "auc": est.auc,
        "auc_se": est.se,
        "auc_ci95": list(est.ci95) if est.ci95 else None,
    }


def compute_metrics(
    preds: Predictions,
    *,
    threshold: float | None = None,
    bootstrap_reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """All report statistics of one prediction set as a JSON-ready dict (see module doc)."""
    if len(preds) == 0:
        raise ValueError("no predictions to evaluate")
    if preds.spec.num_classes == 2:
        return binary_metrics(preds, threshold=threshold)
    if threshold is not None:
        raise ValueError(f"{preds.task}: a probability threshold applies to binary tasks only")
    return multiclass_metrics(preds, bootstrap_reps=bootstrap_reps, seed=seed)


def _operating_point(threshold: float | None) -> dict[str, Any]:
    op = OperatingPoint.ARGMAX if threshold is None else OperatingPoint.THRESHOLD
    return {"operating_point": str(op), "threshold": threshold}


def binary_metrics(preds: Predictions, *, threshold: float | None = None) -> dict[str, Any]:
    """Binary task: class index 1 is the positive class."""
    spec = preds.spec
    predicted = predict_labels(preds.probs, threshold)
    cm = confusion_counts(preds.labels, predicted, 2)
    (tn, fp), (fn, tp) = cm.tolist()
    rates = binary_rates(tp, fp, fn, tn)
    out = _header(preds)
    out["positive_class"] = spec.class_names[1]
    out.update(_auc_fields(auc_with_ci(preds.labels == 1, preds.probs[:, 1])))
    out["accuracy"] = Proportion(tp + tn, len(preds)).as_dict()
    out.update({name: rates[name].as_dict() for name in RATE_NAMES})
    out.update(_operating_point(threshold))
    out["confusion_matrix"] = _confusion_dict(cm, spec.class_names)
    out["methods"] = {k: METHODS[k] for k in ("auc", "auc_ci95", "proportion_ci95", "rows")}
    return out


def _macro(values: Sequence[float | None], classes: Sequence[str]) -> tuple[float | None, list]:
    kept = [(v, c) for v, c in zip(values, classes, strict=True) if v is not None]
    if not kept:
        return None, []
    return float(np.mean([v for v, _ in kept])), [c for _, c in kept]


def multiclass_metrics(
    preds: Predictions, *, bootstrap_reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """Multiclass task: per-class one-vs-rest values and their macro means (bootstrap CIs)."""
    spec = preds.spec
    k = spec.num_classes
    predicted = predict_labels(preds.probs)
    cm = confusion_counts(preds.labels, predicted, k)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(spec.class_names):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = len(preds) - tp - fn - fp
        est = auc_with_ci(preds.labels == c, preds.probs[:, c])
        rates = binary_rates(tp, fp, fn, tn)
        per_class[name] = {
            **_auc_fields(est),
            **{r: rates[r].as_dict() for r in RATE_NAMES},
            "n_positive": tp + fn,
        }
    names = list(spec.class_names)
    macro_auc, auc_classes = _macro([per_class[c]["auc"] for c in names], names)
    macro_rates = {r: _macro([per_class[c][r]["value"] for c in names], names) for r in RATE_NAMES}
    boot = _bootstrap_macro(
        preds,
        predicted,
        auc_classes=[names.index(c) for c in auc_classes],
        rate_classes={r: [names.index(c) for c in macro_rates[r][1]] for r in RATE_NAMES},
        reps=bootstrap_reps,
        seed=seed,
    )
    out = _header(preds)
    out["positive_class"] = MACRO_LABEL
    out["auc"] = macro_auc
    out["auc_se"] = None
    out["auc_ci95"] = boot["auc"]
    out["auc_classes"] = auc_classes
    out["accuracy"] = Proportion(int(np.trace(cm)), len(preds)).as_dict()
    for r in RATE_NAMES:
        value, classes = macro_rates[r]
        out[r] = {"value": value, "ci95": boot[r], "classes": classes}
    out.update(_operating_point(None))
    out["per_class"] = per_class
    out["confusion_matrix"] = _confusion_dict(cm, spec.class_names)
    out["bootstrap"] = {
        "unit": "patient",
        "reps": bootstrap_reps,
        "seed": seed,
        "valid_reps": boot["valid_reps"],
        "interval": "percentile 2.5-97.5",
    }
    out["methods"] = dict(METHODS)
    return out


def _bootstrap_macro(
    preds: Predictions,
    predicted: np.ndarray,
    *,
    auc_classes: list[int],
    rate_classes: dict[str, list[int]],
    reps: int,
    seed: int,
) -> dict[str, Any]:
    """Percentile CIs of the macro values; a replicate where one of the classes averaged in
    the point estimate is undefined does not count."""
    k = preds.spec.num_classes
    samples: dict[str, list[np.ndarray]] = {m: [] for m in ("auc", *RATE_NAMES)}
    for w in patient_bootstrap_weights(preds.patient_ids, reps, seed):
        if auc_classes:
            per = [weighted_auc(preds.probs[:, c], preds.labels == c, w) for c in auc_classes]
            samples["auc"].append(np.mean(per, axis=0))
        rates = ovr_rates(weighted_confusion(preds.labels, predicted, k, w))
        for r in RATE_NAMES:
            if rate_classes[r]:
                samples[r].append(rates[r][:, rate_classes[r]].mean(axis=1))
    out: dict[str, Any] = {"valid_reps": {}}
    for metric, chunks in samples.items():
        if not chunks:
            out[metric] = None
            out["valid_reps"][metric] = 0
            continue
        ci, valid = percentile_ci(np.concatenate(chunks))
        out[metric] = list(ci) if ci else None
        out["valid_reps"][metric] = valid
    return out


def summary_value(metrics: dict[str, Any], name: str) -> float | None:
    """The point value of one of METRIC_NAMES in a metrics dict."""
    return metrics["auc"] if name == "auc" else metrics[name]["value"]


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample SD (ddof 1) over folds of the values that are defined."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    return {
        "mean": float(kept.mean()) if kept.size else None,
        "sd": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "n_folds": int(kept.size),
    }


def roc_points(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, TPR) of the empirical ROC curve; None when a class is absent."""
    pos = np.asarray(positive, dtype=bool)
    if pos.all() or not pos.any():
        return None
    fpr, tpr, _ = roc_curve(pos, scores)
    return fpr, tpr
