"""train.report and `molsub evaluate`: a run directory of known answer, read back from disk.

The CSVs are written here by hand (not by train.predictions) and the expected numbers are
counted by hand or computed with scikit-learn and the O(n^2) DeLong reference.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from model.tasks import TASKS
from molsub.cli import main
from tests.stats_reference import (
    Row,
    delong_reference,
    random_rows,
    rows_to_predictions,
    write_csv,
)
from train.metrics import Z95
from train.predictions import read_predictions
from train.report import evaluate_named_sets, evaluate_predictions, evaluate_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REQUIRED_KEYS = {
    "task",
    "positive_class",
    "n",
    "auc",
    "auc_ci95",
    "accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "operating_point",
    "lesion_level",
    "n_patients",
    "class_counts",
}
RATES = ("accuracy", "sensitivity", "specificity", "ppv", "npv")

# Luminal test set of known answer: 6 patients x (CC, MLO), p(Luminal) per view.
# Image level: positives .9 .7 .8 .6 .4 .2, negatives .6 .3 .3 .1 .25 .15; pairs won
# 6 + 6 + 6 + 5.5 (tie at .6) + 5 + 2 = 30.5 of 36. Argmax: TP 4, FN 2, FP 1, TN 5.
# Lesion level (mean of views): positives .8 .7 .3, negatives .45 .2 .2: AUC 8/9;
# TP 2, FN 1, FP 0, TN 3.
LUMINAL_TEST = {
    "P1": (1, 0.9, 0.7),
    "P2": (1, 0.8, 0.6),
    "P3": (1, 0.4, 0.2),
    "P4": (0, 0.6, 0.3),
    "P5": (0, 0.3, 0.1),
    "P6": (0, 0.25, 0.15),
}


def _luminal_rows() -> list[Row]:
    rows = []
    for patient, (label, cc, mlo) in LUMINAL_TEST.items():
        for view, p in (("CC", cc), ("MLO", mlo)):
            rows.append((f"{patient}-{view}", patient, f"{patient}-L", label, [1 - p, p]))
    return rows


def make_run(root: Path, *, synthetic: bool = True, folds: int = 5) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    meta = {"tasks": ["luminal", "subtype5"], "deploy": "best-fold", "seed": 1}
    if synthetic:
        meta["synthetic"] = True
    (run / "run.json").write_text(json.dumps(meta))
    write_csv(run / "predictions/luminal/test.csv", "luminal", _luminal_rows())
    write_csv(
        run / "predictions/subtype5/test.csv", "subtype5", random_rows("subtype5", 40, 99, "T")
    )
    for k in range(1, folds + 1):
        for task in ("luminal", "subtype5"):
            rows = random_rows(task, 16, 10 * k + len(task), f"F{k}-")
            write_csv(run / f"predictions/{task}/val_fold{k}.csv", task, rows)
    return run


def _sk_auc(rows: list[Row], c: int = 1) -> float:
    return roc_auc_score([r[3] == c for r in rows], [r[4][c] for r in rows])


def _fused(rows: list[Row]) -> list[Row]:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r[2], []).append(r)
    out = []
    for lesion, rs in groups.items():
        probs = np.mean([r[4] for r in rs], axis=0)
        out.append((lesion, rs[0][1], lesion, rs[0][3], list(probs / probs.sum())))
    return out


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] > 200 and img.size[1] > 200


@pytest.fixture(scope="module")
def run_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("run")
    run = make_run(root)
    reports = evaluate_run(run)
    return run, run / "report", reports


def test_run_luminal_test_numbers_are_the_known_answer(run_report: tuple) -> None:
    _, out, reports = run_report
    on_disk = json.loads((out / "luminal" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(reports["luminal"]))
    r = on_disk
    assert set(r) >= REQUIRED_KEYS | {"folds", "cv_mean_sd"}
    assert (r["task"], r["positive_class"], r["n"], r["n_patients"]) == (
        "luminal",
        "Luminal",
        12,
        6,
    )
    assert r["class_counts"] == {"non-Luminal": 6, "Luminal": 6}
    assert r["operating_point"] == "argmax"
    assert r["auc"] == pytest.approx(30.5 / 36)
    expected = {
        "accuracy": (9, 12),
        "sensitivity": (4, 6),
        "specificity": (5, 6),
        "ppv": (4, 5),
        "npv": (5, 7),
    }
    for name, (k, n) in expected.items():
        assert (r[name]["k"], r[name]["n"]) == (k, n), name
        assert r[name]["value"] == pytest.approx(k / n)
        assert r[name]["ci95"][0] < k / n < r[name]["ci95"][1] or k == n
    rows = _luminal_rows()
    positive = np.array([row[3] == 1 for row in rows])
    _, cov = delong_reference(np.array([row[4][1] for row in rows]), positive)
    se = float(np.sqrt(cov[0, 0]))
    assert r["auc_ci95"] == pytest.approx(
        [max(0, 30.5 / 36 - Z95 * se), min(1, 30.5 / 36 + Z95 * se)]
    )
    lesion = r["lesion_level"]
    assert set(lesion) >= REQUIRED_KEYS - {"lesion_level"}
    assert (lesion["n"], lesion["n_patients"]) == (6, 6)
    assert lesion["auc"] == pytest.approx(8 / 9)
    lesion_expected = {
        "accuracy": (5, 6),
        "sensitivity": (2, 3),
        "specificity": (3, 3),
        "ppv": (2, 2),
        "npv": (3, 4),
    }
    for name, (k, n) in lesion_expected.items():
        assert (lesion[name]["k"], lesion[name]["n"]) == (k, n), name


def test_run_folds_and_cv_mean_sd(run_report: tuple) -> None:
    run, _, reports = run_report
    for task in ("luminal", "subtype5"):
        r = reports[task]
        assert [f["fold"] for f in r["folds"]] == [1, 2, 3, 4, 5]
        fold_rows = [random_rows(task, 16, 10 * k + len(task), f"F{k}-") for k in range(1, 6)]
        if task == "luminal":
            aucs = [_sk_auc(rows) for rows in fold_rows]
            lesion_aucs = [_sk_auc(_fused(rows)) for rows in fold_rows]
        else:
            aucs = [
                roc_auc_score([x[3] for x in rows], [x[4] for x in rows], multi_class="ovr")
                for rows in fold_rows
            ]
            lesion_aucs = [
                roc_auc_score(
                    [x[3] for x in _fused(rows)], [x[4] for x in _fused(rows)], multi_class="ovr"
                )
                for rows in fold_rows
            ]
        assert [f["auc"] for f in r["folds"]] == pytest.approx(aucs)
        assert r["cv_mean_sd"]["auc"]["mean"] == pytest.approx(statistics.mean(aucs))
        assert r["cv_mean_sd"]["auc"]["sd"] == pytest.approx(statistics.stdev(aucs))
        lesion = r["lesion_level"]
        assert [f["auc"] for f in lesion["folds"]] == pytest.approx(lesion_aucs, abs=1e-6)
        assert lesion["cv_mean_sd"]["auc"]["mean"] == pytest.approx(
            statistics.mean(lesion_aucs), abs=1e-6
        )
        accs = [f["accuracy"]["value"] for f in r["folds"]]
        assert r["cv_mean_sd"]["accuracy"]["mean"] == pytest.approx(statistics.mean(accs))
        assert all(f["n"] == 32 for f in r["folds"])


def test_run_subtype5_macro_and_per_class(run_report: tuple) -> None:
    _, _, reports = run_report
    r = reports["subtype5"]
    rows = random_rows("subtype5", 40, 99, "T")
    labels = np.array([x[3] for x in rows])
    probs = np.array([x[4] for x in rows])
    assert r["positive_class"] == "macro one-vs-rest"
    assert r["auc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    lo, hi = r["auc_ci95"]
    assert lo < r["auc"] < hi
    for c, name in enumerate(TASKS["subtype5"].class_names):
        assert r["per_class"][name]["auc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    assert r["accuracy"]["value"] == pytest.approx(np.mean(probs.argmax(axis=1) == labels))
    assert r["n_patients"] == 40 and r["lesion_level"]["n"] == 40


def test_run_plots_and_markdown(run_report: tuple) -> None:
    _, out, _ = run_report
    for task in ("luminal", "subtype5"):
        assert_png(out / task / "roc.png")
        assert_png(out / task / "confusion.png")
    md = (out / "report.md").read_text()
    assert "Research use only" in md and "SYNTHETIC" in md
    for label in ("| Fold 1 |", "| Fold 5 |", "| CV mean ± SD |", "| Test |"):
        assert md.count(label) == 4, label  # 2 tasks x (image, lesion)
    assert "| Set | n | AUC (95% CI) | ACC | SENS | SPEC | PPV | NPV |" in md
    test_row = next(line for line in md.splitlines() if line.startswith("| Test | 12 |"))
    assert "0.8472 (" in test_row and "0.7500 (" in test_row  # AUC 61/72, ACC 9/12
    assert "Lesion level (views fused)" in md and "Test set per class" in md


def test_run_without_synthetic_flag_and_without_folds(tmp_path: Path) -> None:
    run = make_run(tmp_path, synthetic=False, folds=0)
    reports = evaluate_run(run, tmp_path / "out")
    assert reports["luminal"]["folds"] == [] and reports["luminal"]["synthetic"] is False
    md = (tmp_path / "out" / "report.md").read_text()
    assert "SYNTHETIC" not in md and "Research use only" in md
    assert "| CV mean ± SD |" not in md and "| Test |" in md


def test_run_youden_threshold_from_pooled_folds(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    r = evaluate_run(run, tmp_path / "out", youden_threshold=True)["luminal"]
    pooled = [x for k in range(1, 6) for x in random_rows("luminal", 16, 10 * k + 7, f"F{k}-")]
    y = [x[3] for x in pooled]
    s = [x[4][1] for x in pooled]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    expected = thr[1:][np.argmax((tpr - fpr)[1:])]
    assert r["operating_point"] == "threshold"
    assert r["threshold"] == pytest.approx(expected)
    called = np.array([row[4][1] >= expected for row in _luminal_rows()])
    positive = np.array([row[3] == 1 for row in _luminal_rows()])
    assert r["sensitivity"]["k"] == int((called & positive).sum())
    assert r["specificity"]["k"] == int((~called & ~positive).sum())
    sub = json.loads((tmp_path / "out" / "subtype5" / "report.json").read_text())
    assert sub["operating_point"] == "argmax" and sub["threshold"] is None


def test_run_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run.json"):
        evaluate_run(tmp_path)
    run = make_run(tmp_path)
    (run / "predictions/subtype5/test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="subtype5 has no test.csv"):
        evaluate_run(run)
    (run / "run.json").write_text(json.dumps({"tasks": ["luminal", "er"]}))
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_run(run)


def test_evaluate_predictions_writes_both_levels(tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    write_csv(path, "luminal", _luminal_rows())
    preds = read_predictions(path, "luminal")
    r = evaluate_predictions(preds, tmp_path / "rep", title="known answer", threshold=0.5)
    assert set(r) >= REQUIRED_KEYS
    assert r["operating_point"] == "threshold" and r["threshold"] == 0.5
    # p >= 0.5 calls the same images positive as argmax here (no p = 0.5 exactly).
    assert r["sensitivity"]["k"] == 4 and r["specificity"]["k"] == 5
    assert r["lesion_level"]["auc"] == pytest.approx(8 / 9)
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["auc"] == pytest.approx(
        30.5 / 36
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| Image level | 12 |" in md and "| Lesion level (views fused) | 6 |" in md
    assert "Research use only" in md and "SYNTHETIC" not in md
    assert_png(tmp_path / "rep" / "roc.png")
    assert_png(tmp_path / "rep" / "confusion.png")


def test_single_class_set_reports_nulls_and_still_plots(tmp_path: Path) -> None:
    rows = [r for r in _luminal_rows() if r[3] == 1]
    r = evaluate_predictions(rows_to_predictions(rows, "luminal"), tmp_path, title="one class")
    assert r["auc"] is None and r["auc_ci95"] is None
    assert r["specificity"] == {"value": None, "ci95": None, "k": 0, "n": 0}
    assert r["sensitivity"]["value"] == pytest.approx(4 / 6)
    assert_png(tmp_path / "roc.png")
    assert "| Image level | 6 | n/a |" in (tmp_path / "report.md").read_text()


def test_evaluate_named_sets_side_by_side(tmp_path: Path) -> None:
    rows = random_rows("her2", 30, 4, "N")
    noise = np.random.default_rng(8).random(len(rows))
    worse = [
        (case, patient, lesion, y, [1 - q, q])
        for (case, patient, lesion, y, pr), q in zip(
            rows, 0.5 * np.array([r[4][1] for r in rows]) + 0.5 * noise, strict=True
        )
    ]
    sets = {
        "profile-a": rows_to_predictions(rows, "her2"),
        "profile-b": rows_to_predictions(worse, "her2"),
    }
    r = evaluate_named_sets(sets, tmp_path / "cmp", "profiles", synthetic=True)
    assert set(r["sets"]) == {"profile-a", "profile-b"}
    assert r["sets"]["profile-a"]["auc"] == pytest.approx(_sk_auc(rows))
    assert r["sets"]["profile-b"]["auc"] == pytest.approx(_sk_auc(worse))
    assert r["paired_vs"] == "profile-a"
    paired = r["paired"]["profile-b"]["delong"]
    assert paired["auc_a"] == pytest.approx(_sk_auc(worse))
    assert paired["auc_b"] == pytest.approx(_sk_auc(rows))
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| profile-a | 60 |" in md and "| profile-b | 30 |" in md and "SYNTHETIC" in md
    assert "Paired tests against profile-a" in md
    assert_png(tmp_path / "cmp" / "roc.png")
    with pytest.raises(ValueError, match="one task"):
        evaluate_named_sets(
            {"a": sets["profile-a"], "b": rows_to_predictions(_luminal_rows(), "luminal")},
            tmp_path,
            "x",
        )


# -------------------------------------------------------------------------------- the CLI


def test_cli_evaluate_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, folds=2)
    assert main(["evaluate", str(run), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "RESEARCH USE ONLY" in out and "SYNTHETIC" in out
    assert "luminal (positive class: Luminal" in out and "AUC 0.847 (95% CI" in out
    assert "CV AUC mean ± SD over 2 folds" in out
    assert (tmp_path / "o" / "luminal" / "report.json").is_file()


def test_cli_evaluate_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.csv"
    write_csv(path, "luminal", _luminal_rows())
    argv = [
        "evaluate",
        "--predictions",
        str(path),
        "--task",
        "luminal",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "RESEARCH USE ONLY" in out and "SYNTHETIC" not in out
    assert "image level: n=12" in out and "lesion level" not in out
    assert main([*argv, "--lesion-level", "--synthetic"]) == 0
    out = capsys.readouterr().out
    assert "lesion level: n=6: AUC 0.889" in out and "SYNTHETIC" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate"],
        ["evaluate", "RUN", "--predictions", "x.csv", "--task", "luminal", "--out", "o"],
        ["evaluate", "--predictions", "x.csv", "--out", "o"],
        ["evaluate", "--predictions", "x.csv", "--task", "er", "--out", "o"],
        ["evaluate", "RUN", "--task", "luminal"],
    ],
)
def test_cli_evaluate_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_evaluate_bad_input_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,patient_id,label,p_non-Luminal,p_Luminal\nx,P,Luminal,0.9,0.9\n")
    argv = [
        "evaluate",
        "--predictions",
        str(bad),
        "--task",
        "luminal",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "row 2" in err and str(bad) in err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run.json" in err
