"""train.metrics and train.predictions against independent references and known answers.

DeLong's fast algorithm is checked against an O(n^2) implementation of DeLong's structural
components written here, Wilson intervals against scipy and Newcombe (1998), rates against
constructed confusion matrices and scikit-learn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from tests.stats_reference import delong_reference
from train.metrics import (
    Z95,
    auc_with_ci,
    choose_threshold,
    compute_metrics,
    confusion_counts,
    fast_delong,
    mean_sd,
    patient_bootstrap_weights,
    predict_labels,
    weighted_auc,
    weighted_confusion,
    wilson_interval,
)
from train.predictions import (
    Predictions,
    concat_predictions,
    fuse_by_lesion,
    read_predictions,
    write_predictions,
)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_delong_matches_quadratic_reference_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(12, 60))
    positive = rng.random(n) < 0.4
    positive[:2] = [True, False]
    positive[2:4] = [True, False]
    # Scores on a coarse grid: many ties, within and across classes.
    base = positive * 0.3 + rng.random(n)
    scores = np.vstack(
        [np.round(base, 1), np.round(base + rng.normal(0, 0.3, n), 1), np.round(rng.random(n), 1)]
    )
    fast = fast_delong(scores, positive)
    ref_aucs, ref_cov = delong_reference(scores, positive)
    np.testing.assert_allclose(fast.aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.covariance, ref_cov, rtol=1e-10, atol=1e-14)
    for r in range(3):
        assert fast.aucs[r] == pytest.approx(roc_auc_score(positive, scores[r]), abs=1e-12)


def test_fast_delong_hand_example() -> None:
    # Positives 0.9, 0.8, 0.4; negatives 0.7, 0.3. Pairs won: 2 + 2 + 1 = 5 of 6.
    # Placements: positives (1, 1, 1/2), negatives (2/3, 1); S10 = 1/12, S01 = 1/18;
    # var = (1/12)/3 + (1/18)/2 = 1/18.
    r = fast_delong(np.array([0.9, 0.8, 0.4, 0.7, 0.3]), np.array([1, 1, 1, 0, 0], bool))
    assert r.aucs[0] == pytest.approx(5 / 6)
    assert r.covariance[0, 0] == pytest.approx(1 / 18)


def test_fast_delong_hand_example_with_tie() -> None:
    # Positives 0.5, 0.8; negatives 0.5, 0.2: the 0.5/0.5 tie counts 1/2: AUC 3.5/4.
    # Placements: positives (3/4, 1), negatives (3/4, 1): var = 1/32 / 2 + 1/32 / 2 = 1/32.
    r = fast_delong(np.array([0.5, 0.8, 0.5, 0.2]), np.array([1, 1, 0, 0], bool))
    assert r.aucs[0] == pytest.approx(0.875)
    assert r.covariance[0, 0] == pytest.approx(1 / 32)


def test_fast_delong_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        fast_delong(np.array([0.1, 0.2]), np.array([True, True]))


def test_auc_ci_is_wald_on_delong_se_clipped() -> None:
    est = auc_with_ci(np.array([1, 1, 1, 0, 0], bool), np.array([0.9, 0.8, 0.4, 0.7, 0.3]))
    se = math.sqrt(1 / 18)
    assert est.auc == pytest.approx(5 / 6)
    assert est.se == pytest.approx(se)
    assert est.ci95[0] == pytest.approx(5 / 6 - 1.959963984540054 * se)
    assert est.ci95[1] == 1.0  # 5/6 + 0.462 clipped


def test_auc_perfect_and_inverted_and_undefined() -> None:
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    perfect = auc_with_ci(y, s)
    assert (perfect.auc, perfect.se, perfect.ci95) == (1.0, 0.0, (1.0, 1.0))
    assert auc_with_ci(y, 1 - s).auc == 0.0
    assert auc_with_ci(np.ones(4, bool), np.arange(4.0)) == auc_with_ci(
        np.zeros(4, bool), np.arange(4.0)
    )
    assert auc_with_ci(np.ones(4, bool), np.arange(4.0)).auc is None
    single = auc_with_ci(np.array([1, 0, 0], bool), np.array([0.9, 0.1, 0.5]))
    assert single.auc == 1.0 and single.se is None and single.ci95 is None


# ---------------------------------------------------------------------------- proportions


@pytest.mark.parametrize("k,n", [(0, 1), (0, 7), (1, 1), (3, 10), (10, 10), (45, 97), (500, 1000)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


@pytest.mark.parametrize(
    "k,n,lo,hi",
    # Newcombe RG, Stat Med 1998;17:857-72, Table II, method 3 (score method).
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_textbook_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_zero_denominator_is_none() -> None:
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


# ------------------------------------------------------------------------- known answers


def _binary_from_counts(tp: int, fn: int, fp: int, tn: int, task: str = "luminal") -> Predictions:
    """Predictions whose argmax confusion is exactly the given table, one patient per row."""
    labels = [1] * (tp + fn) + [0] * (fp + tn)
    p1 = [0.8] * tp + [0.3] * fn + [0.7] * fp + [0.2] * tn
    n = len(labels)
    return Predictions(
        task=task,
        case_ids=tuple(f"c{i}" for i in range(n)),
        patient_ids=tuple(f"p{i}" for i in range(n)),
        labels=np.array(labels),
        probs=np.column_stack([1 - np.array(p1), p1]),
    )


def test_constructed_confusion_gives_exact_rates() -> None:
    m = compute_metrics(_binary_from_counts(tp=30, fn=10, fp=5, tn=55))
    assert m["positive_class"] == "Luminal"
    assert m["confusion_matrix"]["counts"] == [[55, 5], [10, 30]]
    assert m["accuracy"]["value"] == pytest.approx(85 / 100)
    assert m["sensitivity"]["value"] == pytest.approx(30 / 40)
    assert m["specificity"]["value"] == pytest.approx(55 / 60)
    assert m["ppv"]["value"] == pytest.approx(30 / 35)
    assert m["npv"]["value"] == pytest.approx(55 / 65)
    assert (m["sensitivity"]["k"], m["sensitivity"]["n"]) == (30, 40)
    ref = binomtest(30, 40).proportion_ci(method="wilson")
    assert m["sensitivity"]["ci95"] == pytest.approx([ref.low, ref.high])
    assert m["operating_point"] == "argmax" and m["threshold"] is None
    assert m["class_counts"] == {"non-Luminal": 60, "Luminal": 40}
    assert (m["n"], m["n_patients"]) == (100, 100)


def test_no_positive_calls_gives_null_ppv_not_a_crash() -> None:
    m = compute_metrics(_binary_from_counts(tp=0, fn=4, fp=0, tn=6, task="tn"))
    assert m["ppv"] == {"value": None, "ci95": None, "k": 0, "n": 0}
    assert m["sensitivity"]["value"] == 0.0
    assert m["positive_class"] == "triple-negative"


def test_single_class_set_has_null_auc() -> None:
    m = compute_metrics(_binary_from_counts(tp=3, fn=1, fp=0, tn=0, task="her2"))
    assert m["auc"] is None and m["auc_ci95"] is None
    assert m["specificity"]["value"] is None


def test_perfect_separation_reproduces_perfect_scores() -> None:
    m = compute_metrics(_binary_from_counts(tp=12, fn=0, fp=0, tn=9))
    assert m["auc"] == 1.0 and m["auc_ci95"] == [1.0, 1.0]
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert m[name]["value"] == 1.0


def test_argmax_ties_go_to_lower_index_and_threshold_is_inclusive() -> None:
    probs = np.array([[0.5, 0.5], [0.4, 0.6], [0.7, 0.3]])
    assert predict_labels(probs).tolist() == [0, 1, 0]
    assert predict_labels(probs, 0.3).tolist() == [1, 1, 1]
    assert predict_labels(probs, 0.55).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="binary"):
        predict_labels(np.full((2, 5), 0.2), 0.5)


def test_threshold_metrics_are_recorded() -> None:
    preds = _binary_from_counts(tp=3, fn=2, fp=1, tn=4)
    m = compute_metrics(preds, threshold=0.25)
    # p1 of the FN rows is 0.3 >= 0.25 and TN rows 0.2 < 0.25: all positives called positive.
    assert m["operating_point"] == "threshold" and m["threshold"] == 0.25
    assert m["sensitivity"]["value"] == 1.0
    assert m["specificity"]["value"] == pytest.approx(4 / 5)


def _youden_brute_force(pos: np.ndarray, s: np.ndarray) -> float:
    best, best_t = -2.0, math.inf
    for t in sorted(set(s.tolist()), reverse=True):
        called = s >= t
        j = called[pos].mean() - called[~pos].mean()
        if j > best + 1e-12:
            best, best_t = j, t
    return best_t


def test_choose_threshold_youden_known_answer() -> None:
    # Cut-off 0.7: SENS 3/4, SPEC 1 (J 0.75); 0.35: SENS 1, SPEC 3/5 (J 0.6); 0.8: J 0.5.
    pos_scores = [0.9, 0.8, 0.7, 0.35]
    neg_scores = [0.6, 0.4, 0.3, 0.2, 0.1]
    p1 = np.array(pos_scores + neg_scores)
    labels = np.array([1] * 4 + [0] * 5)
    preds = Predictions(
        task="her2",
        case_ids=tuple(f"c{i}" for i in range(9)),
        patient_ids=tuple(f"p{i}" for i in range(9)),
        labels=labels,
        probs=np.column_stack([1 - p1, p1]),
    )
    assert choose_threshold(preds) == pytest.approx(0.7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_threshold_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 80
    labels = (rng.random(n) < 0.35).astype(int)
    p1 = np.clip(np.round(0.2 * labels + rng.random(n) * 0.8, 2), 0, 1)
    preds = Predictions(
        task="luminal",
        case_ids=tuple(f"c{i}" for i in range(n)),
        patient_ids=tuple(f"p{i}" for i in range(n)),
        labels=labels,
        probs=np.column_stack([1 - p1, p1]),
    )
    assert choose_threshold(preds) == pytest.approx(_youden_brute_force(labels == 1, p1))


def test_choose_threshold_refuses_multiclass() -> None:
    with pytest.raises(ValueError, match="binary"):
        choose_threshold(_five_class_from_matrix(np.eye(5, dtype=int) * 2))


# ---------------------------------------------------------------------------- multiclass


def _five_class_from_matrix(cm: np.ndarray, rng: np.random.Generator | None = None) -> Predictions:
    """Predictions with argmax confusion exactly ``cm`` (rows true, columns predicted)."""
    rng = rng or np.random.default_rng(0)
    labels, probs = [], []
    for t in range(5):
        for p in range(5):
            for _ in range(int(cm[t, p])):
                v = rng.random(5) * 0.5
                v[p] = 1.0
                probs.append(v / v.sum())
                labels.append(t)
    n = len(labels)
    return Predictions(
        task="subtype5",
        case_ids=tuple(f"c{i}" for i in range(n)),
        patient_ids=tuple(f"p{i // 2}" for i in range(n)),
        labels=np.array(labels),
        probs=np.array(probs),
    )


def test_multiclass_one_vs_rest_from_constructed_matrix() -> None:
    cm = np.array(
        [
            [10, 3, 1, 0, 1],
            [4, 12, 2, 1, 1],
            [1, 2, 6, 1, 0],
            [0, 1, 1, 4, 0],
            [1, 1, 0, 1, 7],
        ]
    )
    preds = _five_class_from_matrix(cm)
    m = compute_metrics(preds, bootstrap_reps=300)
    n = cm.sum()
    assert m["positive_class"] == "macro one-vs-rest"
    assert m["confusion_matrix"]["counts"] == cm.tolist()
    assert m["accuracy"]["value"] == pytest.approx(np.trace(cm) / n)
    sens = np.diag(cm) / cm.sum(axis=1)
    ppv = np.diag(cm) / cm.sum(axis=0)
    spec = [(n - cm[c].sum() - cm[:, c].sum() + cm[c, c]) / (n - cm[c].sum()) for c in range(5)]
    npv = [(n - cm[c].sum() - cm[:, c].sum() + cm[c, c]) / (n - cm[:, c].sum()) for c in range(5)]
    names = preds.spec.class_names
    for c, name in enumerate(names):
        pc = m["per_class"][name]
        assert pc["sensitivity"]["value"] == pytest.approx(sens[c])
        assert pc["ppv"]["value"] == pytest.approx(ppv[c])
        assert pc["specificity"]["value"] == pytest.approx(spec[c])
        assert pc["npv"]["value"] == pytest.approx(npv[c])
        assert pc["auc"] == pytest.approx(roc_auc_score(preds.labels == c, preds.probs[:, c]))
    assert m["sensitivity"]["value"] == pytest.approx(sens.mean())
    assert m["specificity"]["value"] == pytest.approx(np.mean(spec))
    assert m["ppv"]["value"] == pytest.approx(ppv.mean())
    assert m["npv"]["value"] == pytest.approx(np.mean(npv))
    predicted = predict_labels(preds.probs)
    assert recall_score(preds.labels, predicted, average="macro") == pytest.approx(sens.mean())
    assert precision_score(preds.labels, predicted, average="macro") == pytest.approx(ppv.mean())
    ref_macro = roc_auc_score(preds.labels, preds.probs, multi_class="ovr", average="macro")
    assert m["auc"] == pytest.approx(ref_macro)
    lo, hi = m["auc_ci95"]
    assert lo < m["auc"] < hi
    for r in ("sensitivity", "specificity", "ppv", "npv"):
        lo, hi = m[r]["ci95"]
        assert lo <= m[r]["value"] <= hi
    assert m["bootstrap"]["reps"] == 300 and m["bootstrap"]["unit"] == "patient"


def test_multiclass_never_predicted_class_is_left_out_of_macro_ppv() -> None:
    cm = np.array(
        [
            [5, 1, 0, 0, 0],
            [1, 5, 0, 0, 0],
            [1, 1, 3, 0, 0],
            [0, 1, 1, 0, 0],  # HER2+/HR- never predicted: its PPV is undefined
            [0, 0, 1, 0, 4],
        ]
    )
    m = compute_metrics(_five_class_from_matrix(cm), bootstrap_reps=200)
    assert m["per_class"]["HER2+/HR-"]["ppv"]["value"] is None
    ppv = [5 / 7, 5 / 8, 3 / 5, 4 / 4]
    assert m["ppv"]["value"] == pytest.approx(np.mean(ppv))
    assert "HER2+/HR-" not in m["ppv"]["classes"]
    assert m["per_class"]["HER2+/HR-"]["sensitivity"]["value"] == 0.0


# ----------------------------------------------------------------------------- bootstrap


def test_weighted_auc_equals_auc_of_repeated_rows() -> None:
    rng = np.random.default_rng(5)
    n = 40
    s = np.round(rng.random(n), 1)
    y = rng.random(n) < 0.5
    w = rng.integers(0, 4, size=(3, n)).astype(float)
    got = weighted_auc(s, y, w)
    for b in range(3):
        rows = np.repeat(np.arange(n), w[b].astype(int))
        assert got[b] == pytest.approx(roc_auc_score(y[rows], s[rows]), abs=1e-12)
    assert np.isnan(weighted_auc(s, y, (w[:1] * ~y))[0])  # no positive weight


def test_weighted_confusion_equals_counts_of_repeated_rows() -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 5, 30)
    predicted = rng.integers(0, 5, 30)
    w = rng.integers(0, 3, size=(2, 30)).astype(float)
    got = weighted_confusion(labels, predicted, 5, w)
    for b in range(2):
        rows = np.repeat(np.arange(30), w[b].astype(int))
        np.testing.assert_array_equal(got[b], confusion_counts(labels[rows], predicted[rows], 5))


def test_patient_bootstrap_weights_resample_patients_whole() -> None:
    patients = ["a", "a", "b", "c", "c", "c", "d"]
    chunks = list(patient_bootstrap_weights(patients, reps=50, seed=3))
    w = np.concatenate(chunks)
    assert w.shape == (50, 7)
    # Rows of one patient always carry the same weight; the patient draws sum to 4.
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert (w[:, [0, 2, 3, 6]].sum(axis=1) == 4).all()
    again = np.concatenate(list(patient_bootstrap_weights(patients, reps=50, seed=3)))
    np.testing.assert_array_equal(w, again)


def test_bootstrap_interval_agrees_with_delong_on_independent_rows() -> None:
    # One row per patient: the patient bootstrap and DeLong estimate the same sampling spread.
    rng = np.random.default_rng(11)
    n = 300
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 0.8 * y
    delong = auc_with_ci(y, s)
    reps = np.concatenate(
        [
            weighted_auc(s, y, w)
            for w in patient_bootstrap_weights([str(i) for i in range(n)], 2000, 0)
        ]
    )
    assert np.std(reps, ddof=1) == pytest.approx(delong.se, rel=0.1)
    assert np.percentile(reps, 2.5) == pytest.approx(delong.ci95[0], abs=0.02)
    assert np.percentile(reps, 97.5) == pytest.approx(delong.ci95[1], abs=0.02)


def test_mean_sd_over_folds() -> None:
    got = mean_sd([0.7, 0.6, None, 0.8])
    assert got == {"mean": pytest.approx(0.7), "sd": pytest.approx(0.1), "n_folds": 3}
    assert mean_sd([None]) == {"mean": None, "sd": None, "n_folds": 0}
    assert mean_sd([0.5])["sd"] is None
    assert abs(Z95 - 1.959964) < 1e-6


# ------------------------------------------------------------------------ predictions CSV

HEADER = "case_id,patient_id,label,p_non-Luminal,p_Luminal"


def _write(tmp_path: Path, text: str, name: str = "preds.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_predictions_and_round_trip(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "case_id,patient_id,label,p_non-Luminal,p_Luminal,view,lesion_id,site\n"
        "a1,P1,Luminal,0.2,0.8,CC,L1,x\n"
        "a2,P1,Luminal,0.4,0.6,MLO,L1,y\n"
        "b1,P2,non-Luminal,0.9,0.1,CC,,z\n",
    )
    preds = read_predictions(path, "luminal")
    assert preds.case_ids == ("a1", "a2", "b1")
    assert preds.lesion_ids == ("L1", "L1", "P2")  # empty lesion_id: the patient
    assert preds.labels.tolist() == [1, 1, 0]
    assert preds.extra == {"view": ("CC", "MLO", "CC")}
    out = tmp_path / "out" / "again.csv"
    write_predictions(preds, out)
    again = read_predictions(out, "luminal")
    assert again.case_ids == preds.case_ids and again.lesion_ids == preds.lesion_ids
    np.testing.assert_array_equal(again.probs, preds.probs)
    assert again.extra == preds.extra
    assert out.read_text().splitlines()[0].startswith(HEADER)


def test_byte_order_mark_does_not_hide_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(f"\ufeff{HEADER}\nx,P9,Luminal,0.5,0.5\n".encode())
    assert read_predictions(path, "luminal").case_ids == ("x",)


def test_lesion_defaults_to_patient_without_column(tmp_path: Path) -> None:
    preds = read_predictions(_write(tmp_path, f"{HEADER}\nx,P9,Luminal,0.5,0.5\n"), "luminal")
    assert preds.lesion_ids == ("P9",)


@pytest.mark.parametrize(
    "body,pattern",
    [
        ("case_id,patient_id,label,p_Luminal\nx,P,Luminal,1\n", r"missing column.*p_non-Luminal"),
        (
            f"{HEADER}\nx,P,Luminal,0.5,0.5\ny,P,Lumina,0.5,0.5\n",
            r"row 3, column 'label'.*'Lumina'",
        ),
        (f"{HEADER}\nx,P,Luminal,0.5,0.6\n", r"row 2.*sum to 1.100000"),
        (f"{HEADER}\nx,P,Luminal,nan,0.5\n", r"row 2, column 'p_non-Luminal'.*finite"),
        (
            f"{HEADER}\nx,P,Luminal,0.5,0.5\nx,Q,Luminal,0.5,0.5\n",
            r"row 3, column 'case_id'.*row 2",
        ),
        (f"{HEADER}\nx,P,Luminal,abc,0.5\n", r"row 2, column 'p_non-Luminal'.*not a number"),
        (f"{HEADER}\nx,,Luminal,0.5,0.5\n", r"row 2, column 'patient_id'.*empty"),
        (f"{HEADER}\n", r"no rows"),
    ],
)
def test_read_predictions_errors_name_file_row_and_column(
    tmp_path: Path, body: str, pattern: str
) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ValueError, match=pattern) as err:
        read_predictions(path, "luminal")
    assert str(path) in str(err.value)


def test_probabilities_within_tolerance_are_accepted(tmp_path: Path) -> None:
    preds = read_predictions(_write(tmp_path, f"{HEADER}\nx,P,Luminal,0.3,0.7009\n"), "luminal")
    assert preds.probs[0, 1] == pytest.approx(0.7009)


def test_fuse_by_lesion_means_the_views(tmp_path: Path) -> None:
    preds = read_predictions(
        _write(
            tmp_path,
            f"{HEADER},lesion_id\n"
            "a1,P1,Luminal,0.2,0.8,L1\n"
            "b1,P2,non-Luminal,0.7,0.3,L2\n"
            "a2,P1,Luminal,0.6,0.4,L1\n",
        ),
        "luminal",
    )
    fused = fuse_by_lesion(preds)
    assert fused.case_ids == ("L1", "L2")
    assert fused.patient_ids == ("P1", "P2")
    assert fused.labels.tolist() == [1, 0]
    np.testing.assert_allclose(fused.probs, [[0.4, 0.6], [0.7, 0.3]], atol=1e-6)


@pytest.mark.parametrize(
    "rows,pattern",
    [
        ("a1,P1,Luminal,0.2,0.8,L1\na2,P1,non-Luminal,0.6,0.4,L1\n", "different labels"),
        ("a1,P1,Luminal,0.2,0.8,L1\na2,P2,Luminal,0.6,0.4,L1\n", "different patients"),
    ],
)
def test_fuse_by_lesion_refuses_inconsistent_lesions(
    tmp_path: Path, rows: str, pattern: str
) -> None:
    preds = read_predictions(_write(tmp_path, f"{HEADER},lesion_id\n{rows}"), "luminal")
    with pytest.raises(ValueError, match=pattern):
        fuse_by_lesion(preds)


def test_concat_predictions_keeps_rows_in_order() -> None:
    a = _binary_from_counts(1, 1, 1, 1)
    b = _binary_from_counts(2, 0, 0, 1)
    both = concat_predictions([a, b])
    assert len(both) == 7
    np.testing.assert_array_equal(both.labels, np.concatenate([a.labels, b.labels]))
    with pytest.raises(ValueError, match="different tasks"):
        concat_predictions([a, _binary_from_counts(1, 1, 1, 1, task="tn")])
