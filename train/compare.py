"""Paired comparison of two models on the same cases: DeLong for AUCs, McNemar for accuracy.

Paired tests need the same cases: predictions are joined on case_id, restricted to the
patients both sets contain (the output says how many were dropped and why).

- AUC (binary; per class one-vs-rest for multiclass): DeLong's test for correlated AUCs,
  z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab), covariance by the fast midrank
  algorithm (the authors' code used the wrong covariance; REFERENCE.md section 2).
- Macro AUC (multiclass): paired patient-level bootstrap (the same resampled patients for both
  models); percentile CI of the difference, two-sided p from z = difference / bootstrap SD.
- Accuracy: McNemar on the discordant pairs (b: only A right, c: only B right). Exact two-sided
  binomial test when b + c < 25; otherwise chi-square with continuity correction,
  (|b - c| - 1)^2 / (b + c), 1 degree of freedom. b + c = 0 gives p = 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom, chi2, norm

from train.metrics import (
    BOOTSTRAP_REPS,
    BOOTSTRAP_SEED,
    fast_delong,
    patient_bootstrap_weights,
    percentile_ci,
    predict_labels,
    weighted_auc,
)
from train.predictions import (
    Predictions,
    fuse_by_lesion,
    read_predictions,
    read_run_info,
    run_test_csv,
)

MCNEMAR_EXACT_BELOW = 25


class McNemarMethod(StrEnum):
    EXACT = "exact binomial"
    CHI2_CC = "chi-square with continuity correction"


@dataclass(frozen=True)
class DelongTest:
    """Two correlated AUCs on the same cases and DeLong's test of their difference."""

    auc_a: float
    auc_b: float
    difference: float
    se: float | None
    z: float | None
    p: float | None


def delong_paired_test(
    positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray
) -> DelongTest:
    """DeLong's two-sided test of AUC_a = AUC_b on the same cases.

    With zero variance of the difference (identical rankings) z and p are 0 and 1 when the
    AUCs are equal, None otherwise; with a single case of a class they are None.
    """
    result = fast_delong(np.vstack([scores_a, scores_b]), positive)
    a, b = (float(x) for x in result.aucs)
    cov = result.covariance
    diff = a - b
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not np.isfinite(var):
        return DelongTest(a, b, diff, None, None, None)
    if var <= 1e-15:
        return DelongTest(a, b, diff, 0.0, *((0.0, 1.0) if abs(diff) < 1e-12 else (None, None)))
    se = float(np.sqrt(var))
    z = diff / se
    return DelongTest(a, b, diff, se, z, float(2 * norm.sf(abs(z))))


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's test on the discordant pairs of two classifiers."""

    only_a_correct: int
    only_b_correct: int
    method: McNemarMethod
    statistic: float | None
    p: float


def mcnemar_from_counts(only_a_correct: int, only_b_correct: int) -> McNemarTest:
    """Exact binomial when b + c < 25, else continuity-corrected chi-square (module doc)."""
    b, c = int(only_a_correct), int(only_b_correct)
    n = b + c
    if n < MCNEMAR_EXACT_BELOW:
        p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
        return McNemarTest(b, c, McNemarMethod.EXACT, None, p)
    stat = (abs(b - c) - 1) ** 2 / n
    return McNemarTest(b, c, McNemarMethod.CHI2_CC, float(stat), float(chi2.sf(stat, 1)))


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarTest:
    """McNemar from per-case correctness of A and B."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    return mcnemar_from_counts(int((a & ~b).sum()), int((~a & b).sum()))


# ------------------------------------------------------------------------------ alignment


def align_predictions(
    a: Predictions, b: Predictions
) -> tuple[Predictions, Predictions, dict[str, Any]]:
    """The cases both sets have, of the patients both sets have, in A's order.

    Raises ValueError when a shared case differs in patient, lesion or label, or when nothing
    is shared.
    """
    if a.task != b.task:
        raise ValueError(f"different tasks: {a.task} and {b.task}")
    patients_a, patients_b = set(a.patient_ids), set(b.patient_ids)
    common = patients_a & patients_b
    notes: dict[str, Any] = {
        "patients_a": len(patients_a),
        "patients_b": len(patients_b),
        "patients_used": len(common),
        "same_patients": patients_a == patients_b,
    }
    b_row = {case: i for i, case in enumerate(b.case_ids)}
    rows_a: list[int] = []
    rows_b: list[int] = []
    for i, case in enumerate(a.case_ids):
        if a.patient_ids[i] not in common or case not in b_row:
            continue
        j = b_row[case]
        for what, va, vb in (
            ("patient", a.patient_ids[i], b.patient_ids[j]),
            ("lesion", a.lesion_ids[i], b.lesion_ids[j]),
            ("label", int(a.labels[i]), int(b.labels[j])),
        ):
            if va != vb:
                raise ValueError(f"case {case!r}: {what} differs between the sets ({va} / {vb})")
        rows_a.append(i)
        rows_b.append(j)
    if not rows_a:
        raise ValueError("the two prediction sets share no case of a common patient")
    in_common_a = sum(p in common for p in a.patient_ids)
    in_common_b = sum(p in common for p in b.patient_ids)
    notes["cases_used"] = len(rows_a)
    notes["cases_dropped_a"] = len(a) - len(rows_a)
    notes["cases_dropped_b"] = len(b) - len(rows_b)
    messages = []
    if not notes["same_patients"]:
        messages.append(
            f"patient sets differ (A {len(patients_a)}, B {len(patients_b)}): compared on "
            f"the {len(common)} patients in both"
        )
    unmatched = (in_common_a - len(rows_a)) + (in_common_b - len(rows_b))
    if unmatched:
        messages.append(f"{unmatched} case(s) of shared patients are in one set only: dropped")
    notes["messages"] = messages
    return a.subset(rows_a), b.subset(rows_b), notes


# ------------------------------------------------------------------------------- compare


def _delong_dict(test: DelongTest) -> dict[str, Any]:
    return {**asdict(test), "method": "DeLong paired (fast midrank covariance)"}


def _mcnemar_dict(test: McNemarTest, n: int) -> dict[str, Any]:
    d = asdict(test)
    d["method"] = str(test.method)
    d["n"] = n
    return d


def _compare_level(
    a: Predictions, b: Predictions, *, bootstrap_reps: int, seed: int
) -> dict[str, Any]:
    """Paired tests of two aligned sets (same rows in the same order)."""
    spec = a.spec
    correct_a = predict_labels(a.probs) == a.labels
    correct_b = predict_labels(b.probs) == b.labels
    out: dict[str, Any] = {
        "n": len(a),
        "n_patients": len(set(a.patient_ids)),
        "accuracy_a": float(correct_a.mean()),
        "accuracy_b": float(correct_b.mean()),
        "mcnemar": _mcnemar_dict(mcnemar_test(correct_a, correct_b), len(a)),
        "operating_point": "argmax",
    }
    if spec.num_classes == 2:
        pos = a.labels == 1
        if pos.all() or not pos.any():
            out["delong"] = None
            out["delong_skipped"] = "only one class among the shared cases"
        else:
            out["delong"] = _delong_dict(delong_paired_test(pos, a.probs[:, 1], b.probs[:, 1]))
        out["positive_class"] = spec.class_names[1]
        return out
    per_class: dict[str, Any] = {}
    defined: list[int] = []
    for c, name in enumerate(spec.class_names):
        pos = a.labels == c
        if pos.all() or not pos.any():
            per_class[name] = {"delong": None, "skipped": "class absent among the shared cases"}
            continue
        defined.append(c)
        test = delong_paired_test(pos, a.probs[:, c], b.probs[:, c])
        per_class[name] = {"delong": _delong_dict(test)}
    out["positive_class"] = "one-vs-rest per class; macro by paired bootstrap"
    out["per_class"] = per_class
    out["macro_auc"] = _macro_auc_bootstrap(a, b, defined, reps=bootstrap_reps, seed=seed)
    return out


def _macro_auc_bootstrap(
    a: Predictions, b: Predictions, classes: list[int], *, reps: int, seed: int
) -> dict[str, Any] | None:
    """Macro one-vs-rest AUC difference with a paired patient bootstrap."""
    if not classes:
        return None
    names = [a.spec.class_names[c] for c in classes]
    auc_a = float(np.mean([_plain_auc(a, c) for c in classes]))
    auc_b = float(np.mean([_plain_auc(b, c) for c in classes]))
    diffs = []
    for w in patient_bootstrap_weights(a.patient_ids, reps, seed):
        ma = np.mean([weighted_auc(a.probs[:, c], a.labels == c, w) for c in classes], axis=0)
        mb = np.mean([weighted_auc(b.probs[:, c], b.labels == c, w) for c in classes], axis=0)
        diffs.append(ma - mb)
    d = np.concatenate(diffs)
    ci, valid = percentile_ci(d)
    finite = d[np.isfinite(d)]
    sd = float(finite.std(ddof=1)) if finite.size > 1 else None
    diff = auc_a - auc_b
    if sd is None or ci is None:
        z = p = None
    elif sd == 0.0:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (None, None)
    else:
        z = diff / sd
        p = float(2 * norm.sf(abs(z)))
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": diff,
        "difference_ci95": list(ci) if ci else None,
        "se": sd,
        "z": z,
        "p": p,
        "classes": names,
        "method": f"paired patient-level bootstrap, {reps} replicates, seed {seed}, "
        "percentile CI, p from z = difference / bootstrap SD",
        "valid_reps": valid,
    }


def _plain_auc(p: Predictions, c: int) -> float:
    ones = np.ones((1, len(p)))
    return float(weighted_auc(p.probs[:, c], p.labels == c, ones)[0])


def compare_predictions(
    a: Predictions,
    b: Predictions,
    *,
    bootstrap_reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Paired tests of A vs B at image level and at lesion level (views fused)."""
    a_al, b_al, notes = align_predictions(a, b)
    image = _compare_level(a_al, b_al, bootstrap_reps=bootstrap_reps, seed=seed)
    lesion = _compare_level(
        fuse_by_lesion(a_al), fuse_by_lesion(b_al), bootstrap_reps=bootstrap_reps, seed=seed
    )
    return {"task": a.task, "alignment": notes, **image, "lesion_level": lesion}


def compare_runs(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Paired tests of two training runs' test predictions, for each task both runs have."""
    info_a, info_b = read_run_info(run_a), read_run_info(run_b)
    shared = [t for t in info_a.tasks if t in info_b.tasks]
    tasks: dict[str, Any] = {}
    for task in shared:
        a = read_predictions(run_test_csv(run_a, task), task)
        b = read_predictions(run_test_csv(run_b, task), task)
        tasks[task] = compare_predictions(a, b)
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "synthetic": info_a.synthetic or info_b.synthetic,
        "research_use_only": True,
        "tasks": tasks,
        "tasks_only_in_a": [t for t in info_a.tasks if t not in info_b.tasks],
        "tasks_only_in_b": [t for t in info_b.tasks if t not in info_a.tasks],
    }


# ---------------------------------------------------------------------------------- text


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def _delong_line(label: str, d: dict[str, Any] | None, why: str = "") -> str:
    if d is None:
        return f"  {label}: DeLong not computed ({why or 'undefined'})"
    return (
        f"  {label}: AUC A {_num(d['auc_a'])} vs B {_num(d['auc_b'])}, "
        f"difference {_num(d['difference'])}, z {_num(d['z'], 3)}, {_p(d['p'])} (DeLong)"
    )


def format_level(level: dict[str, Any], name: str) -> list[str]:
    """Text lines for one level (image or lesion) of a comparison."""
    lines = [f" {name} (n={level['n']}, {level['n_patients']} patients):"]
    if "per_class" in level:
        macro = level["macro_auc"]
        if macro is None:
            lines.append("  macro AUC: not computed (no class defined)")
        else:
            ci = macro["difference_ci95"]
            ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "n/a"
            lines.append(
                f"  macro AUC: A {_num(macro['auc_a'])} vs B {_num(macro['auc_b'])}, "
                f"difference {_num(macro['difference'])} (95% CI {ci_text}), "
                f"{_p(macro['p'])} (paired patient bootstrap)"
            )
        for cls, entry in level["per_class"].items():
            lines.append(_delong_line(cls, entry["delong"], entry.get("skipped", "")))
    else:
        lines.append(
            _delong_line(
                f"AUC ({level['positive_class']} positive)",
                level["delong"],
                level.get("delong_skipped", ""),
            )
        )
    m = level["mcnemar"]
    lines.append(
        f"  accuracy: A {_num(level['accuracy_a'])} vs B {_num(level['accuracy_b'])}; "
        f"discordant: only A right {m['only_a_correct']}, only B right {m['only_b_correct']}; "
        f"McNemar ({m['method']}) {_p(m['p'])}"
    )
    return lines


def format_comparison(result: dict[str, Any]) -> str:
    """Printable text of compare_runs' result."""
    lines = [f"Paired comparison: A = {result['run_a']}, B = {result['run_b']}"]
    lines.append("RESEARCH USE ONLY - not a medical device.")
    if result["synthetic"]:
        lines.append("SYNTHETIC data: these numbers say nothing about real performance.")
    for task, res in result["tasks"].items():
        lines.append(f"{task}:")
        lines.extend(f" note: {m}" for m in res["alignment"]["messages"])
        lines.extend(format_level(res, "image level"))
        lines.extend(format_level(res["lesion_level"], "lesion level (views fused)"))
    for side in ("a", "b"):
        only = result[f"tasks_only_in_{side}"]
        if only:
            lines.append(f"tasks only in run {side.upper()} (not compared): {', '.join(only)}")
    if not result["tasks"]:
        lines.append("no task in common: nothing compared")
    return "\n".join(lines)
