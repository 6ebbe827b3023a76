"""train.compare and `molsub compare`: DeLong's paired test and McNemar against references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, chi2, norm

from molsub.cli import main
from tests.stats_reference import (
    Row,
    delong_reference,
    random_rows,
    rows_to_predictions,
    write_csv,
)
from train.compare import (
    McNemarMethod,
    align_predictions,
    compare_predictions,
    compare_runs,
    delong_paired_test,
    format_comparison,
    mcnemar_from_counts,
    mcnemar_test,
)

# ---------------------------------------------------------------------------------- DeLong


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_paired_matches_quadratic_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 50
    y = rng.random(n) < 0.45
    y[:2] = [True, False]
    a = np.round(rng.normal(size=n) + 1.0 * y, 1)  # ties
    b = np.round(0.6 * a + rng.normal(size=n) * 0.8 + 0.3 * y, 1)  # correlated with a
    aucs, cov = delong_reference(np.vstack([a, b]), y)
    z_ref = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    test = delong_paired_test(y, a, b)
    assert test.auc_a == pytest.approx(aucs[0]) and test.auc_b == pytest.approx(aucs[1])
    assert test.z == pytest.approx(z_ref, rel=1e-10)
    assert test.p == pytest.approx(2 * norm.sf(abs(z_ref)), rel=1e-10)


def test_delong_paired_hand_example() -> None:
    # Positives (a, b): (0.9, 0.9), (0.8, 0.4), (0.4, 0.8); negatives (0.7, 0.7), (0.3, 0.3).
    # A: placements pos (1, 1, 1/2) neg (2/3, 1) -> AUC 5/6; B: pos (1, 1/2, 1) neg (2/3, 1)
    # -> AUC 5/6. S10 = [[1/12, -1/24], [-1/24, 1/12]], S01 = [[1/18, 1/18], [1/18, 1/18]].
    # var(A - B) = (1/12 + 1/12 + 1/12)/3 + 0/2 = 1/12; difference 0: z = 0, p = 1.
    y = np.array([1, 1, 1, 0, 0], bool)
    a = np.array([0.9, 0.8, 0.4, 0.7, 0.3])
    b = np.array([0.9, 0.4, 0.8, 0.7, 0.3])
    t = delong_paired_test(y, a, b)
    assert t.difference == pytest.approx(0.0)
    assert t.se == pytest.approx(math.sqrt(1 / 12))
    assert t.z == pytest.approx(0.0) and t.p == pytest.approx(1.0)


def test_delong_identical_scores_give_p_one() -> None:
    y = np.array([1, 0, 1, 0, 1, 0], bool)
    s = np.array([0.9, 0.2, 0.6, 0.7, 0.4, 0.1])
    t = delong_paired_test(y, s, s)
    assert (t.difference, t.z, t.p) == (0.0, 0.0, 1.0)


def test_delong_separates_clearly_different_models() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.5
    good = rng.normal(size=400) + 2.0 * y
    poor = rng.normal(size=400) + 0.2 * y
    t = delong_paired_test(y, good, poor)
    assert t.difference > 0.3 and t.p < 1e-10


# --------------------------------------------------------------------------------- McNemar


def test_mcnemar_textbook_chi_square() -> None:
    # Agresti, Categorical Data Analysis (2002), Table 10.1: approval of the president,
    # discordant pairs 150 and 86. Continuity-corrected statistic (|150 - 86| - 1)^2 / 236.
    t = mcnemar_from_counts(150, 86)
    assert t.method is McNemarMethod.CHI2_CC
    assert t.statistic == pytest.approx(16.8178, abs=1e-4)
    assert t.p == pytest.approx(chi2.sf(63**2 / 236, 1))
    assert t.p == pytest.approx(4.115e-5, rel=1e-3)


def test_mcnemar_exact_below_25_discordant() -> None:
    # b = 2, c = 9: p = 2 * (C(11,0) + C(11,1) + C(11,2)) / 2^11 = 134 / 2048.
    t = mcnemar_from_counts(2, 9)
    assert t.method is McNemarMethod.EXACT and t.statistic is None
    assert t.p == pytest.approx(134 / 2048)
    assert t.p == pytest.approx(binomtest(2, 11, 0.5).pvalue)


@pytest.mark.parametrize("b,c", [(0, 0), (5, 5), (0, 7), (12, 12), (3, 21), (13, 11)])
def test_mcnemar_exact_matches_scipy(b: int, c: int) -> None:
    t = mcnemar_from_counts(b, c)
    assert t.method is McNemarMethod.EXACT
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert t.p == pytest.approx(expected)


def test_mcnemar_switches_to_chi_square_at_25() -> None:
    assert mcnemar_from_counts(12, 12).method is McNemarMethod.EXACT
    t = mcnemar_from_counts(20, 5)
    assert t.method is McNemarMethod.CHI2_CC
    assert t.statistic == pytest.approx(14**2 / 25)


def test_mcnemar_from_correctness_vectors() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 1, 0, 0, 0], bool)
    t = mcnemar_test(a, b)
    assert (t.only_a_correct, t.only_b_correct) == (3, 1)


# ------------------------------------------------------------------------------- alignment


def test_align_uses_common_patients_and_says_so() -> None:
    rows = random_rows("tn", 10, 1, "P")
    a = rows_to_predictions(rows[:16], "tn")  # patients P0..P7
    b = rows_to_predictions(list(reversed(rows[4:])), "tn")  # patients P2..P9, other order
    a2, b2, notes = align_predictions(a, b)
    assert notes["patients_used"] == 6 and not notes["same_patients"]
    assert a2.case_ids == b2.case_ids == tuple(r[0] for r in rows[4:16])
    np.testing.assert_array_equal(b2.probs, np.array([r[4] for r in rows[4:16]]))
    assert "compared on the 6 patients in both" in notes["messages"][0]


def test_align_refuses_disagreeing_labels() -> None:
    rows = random_rows("tn", 4, 1, "P")
    flipped = [(c, p, les, 1 - y, pr) for c, p, les, y, pr in rows]
    with pytest.raises(ValueError, match="label differs"):
        align_predictions(rows_to_predictions(rows, "tn"), rows_to_predictions(flipped, "tn"))


def test_compare_predictions_binary_both_levels() -> None:
    rows = random_rows("her2", 30, 2, "P")
    other = random_rows("her2", 30, 2, "P")
    rng = np.random.default_rng(0)
    other = [
        (c, p, les, y, [1 - q, q])
        for (c, p, les, y, _), q in zip(other, rng.random(60), strict=True)
    ]
    res = compare_predictions(rows_to_predictions(rows, "her2"), rows_to_predictions(other, "her2"))
    y = np.array([r[3] == 1 for r in rows])
    aucs, cov = delong_reference(np.vstack([[r[4][1] for r in rows], [r[4][1] for r in other]]), y)
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res["delong"]["z"] == pytest.approx(z)
    correct_a = np.array([np.argmax(r[4]) == r[3] for r in rows])
    correct_b = np.array([np.argmax(r[4]) == r[3] for r in other])
    m = res["mcnemar"]
    assert m["only_a_correct"] == int((correct_a & ~correct_b).sum())
    assert m["only_b_correct"] == int((~correct_a & correct_b).sum())
    assert res["lesion_level"]["n"] == 30 and res["n"] == 60
    assert res["positive_class"] == "HER2-positive"


def test_compare_predictions_multiclass_identical_models() -> None:
    p = rows_to_predictions(random_rows("subtype5", 40, 5, "P"), "subtype5")
    res = compare_predictions(p, p, bootstrap_reps=200)
    macro = res["macro_auc"]
    assert macro["difference"] == 0.0 and macro["p"] == 1.0
    assert macro["difference_ci95"] == [0.0, 0.0]
    for entry in res["per_class"].values():
        assert entry["delong"]["p"] == 1.0
    assert res["mcnemar"]["p"] == 1.0


# ---------------------------------------------------------------------------- run compare


def _run(root: Path, name: str, tasks: dict[str, list[Row]], synthetic: bool = False) -> Path:
    run = root / name
    run.mkdir()
    meta: dict = {"tasks": list(tasks), "deploy": "ensemble"}
    if synthetic:
        meta["synthetic"] = True
    (run / "run.json").write_text(json.dumps(meta))
    for task, rows in tasks.items():
        write_csv(run / "predictions" / task / "test.csv", task, rows)
    return run


def test_compare_runs_on_shared_tasks_and_patients(tmp_path: Path) -> None:
    lum = random_rows("luminal", 30, 7, "P")
    lum_b = [(c, p, les, y, [pr[1], pr[0]]) for c, p, les, y, pr in lum[6:]]  # drops P0..P2
    five = random_rows("subtype5", 30, 8, "P")
    run_a = _run(
        tmp_path, "a", {"luminal": lum, "subtype5": five, "tn": random_rows("tn", 6, 1, "P")}
    )
    run_b = _run(tmp_path, "b", {"luminal": lum_b, "subtype5": five}, synthetic=True)
    res = compare_runs(run_a, run_b)
    assert set(res["tasks"]) == {"luminal", "subtype5"}
    assert res["tasks_only_in_a"] == ["tn"] and res["tasks_only_in_b"] == []
    assert res["synthetic"] is True
    lumres = res["tasks"]["luminal"]
    assert lumres["alignment"]["patients_used"] == 27
    assert lumres["n"] == 54
    # B is A with swapped probabilities: AUC_b = 1 - AUC_a on the shared cases.
    d = lumres["delong"]
    assert d["auc_b"] == pytest.approx(1 - d["auc_a"])
    text = format_comparison(res)
    assert "RESEARCH USE ONLY" in text and "SYNTHETIC" in text
    assert "compared on the 27 patients in both" in text
    assert "tasks only in run A (not compared): tn" in text
    assert "McNemar" in text and "DeLong" in text and "macro AUC" in text


def test_cli_compare_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = random_rows("tn", 20, 3, "P")
    run_a = _run(tmp_path, "a", {"tn": rows})
    run_b = _run(tmp_path, "b", {"tn": rows})
    assert main(["compare", str(run_a), str(run_b)]) == 0
    out = capsys.readouterr().out
    assert "RESEARCH USE ONLY" in out and "SYNTHETIC" not in out and "p = 1.0000" in out
    assert main(["compare", str(run_a), str(run_b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tasks"]["tn"]["delong"]["p"] == 1.0
    assert main(["compare", str(run_a), str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
