"""Independent references for the statistics tests: DeLong's structural components computed
directly (O(n^2)), and prediction rows written to CSV by hand (not by train.predictions)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from model.tasks import TASKS
from train.predictions import Predictions


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def delong_reference(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong and Clarke-Pearson (1988) directly: V10 per positive, V01 per negative,
    S = S10/m + S01/n. Returns (aucs, covariance)."""
    scores = np.atleast_2d(scores)
    pos = np.asarray(positive, dtype=bool)
    k = scores.shape[0]
    xs = [s[pos] for s in scores]
    ys = [s[~pos] for s in scores]
    m, n = len(xs[0]), len(ys[0])
    v10 = np.array([[np.mean([_psi(x, y) for y in ys[r]]) for x in xs[r]] for r in range(k)])
    v01 = np.array([[np.mean([_psi(x, y) for x in xs[r]]) for y in ys[r]] for r in range(k)])
    aucs = v10.mean(axis=1)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = np.sum((v10[r] - aucs[r]) * (v10[s] - aucs[s])) / (m - 1)
            s01[r, s] = np.sum((v01[r] - aucs[r]) * (v01[s] - aucs[s])) / (n - 1)
    return aucs, s10 / m + s01 / n


Row = tuple[str, str, str, int, list[float]]  # case, patient, lesion, label index, probs


def write_csv(path: Path, task: str, rows: list[Row]) -> None:
    names = TASKS[task].class_names
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "patient_id", "label", *(f"p_{c}" for c in names), "lesion_id"])
        for case, patient, lesion, label, probs in rows:
            w.writerow([case, patient, names[label], *probs, lesion])


def random_rows(task: str, patients: int, seed: int, prefix: str) -> list[Row]:
    """Two views per patient, informative but noisy probabilities."""
    rng = np.random.default_rng(seed)
    k = TASKS[task].num_classes
    rows = []
    for i in range(patients):
        label = i % k if i < 2 * k else int(rng.integers(0, k))
        for view in ("CC", "MLO"):
            logits = rng.normal(size=k)
            logits[label] += 1.0
            probs = np.exp(logits) / np.exp(logits).sum()
            probs = np.round(probs, 4)
            probs[-1] = round(1 - probs[:-1].sum(), 4)
            rows.append(
                (f"{prefix}{i}-{view}", f"{prefix}{i}", f"{prefix}{i}-L", label, list(probs))
            )
    return rows


def rows_to_predictions(rows: list[Row], task: str) -> Predictions:
    """The rows as train.predictions would hold them, without going through a CSV."""
    return Predictions(
        task=task,
        case_ids=tuple(r[0] for r in rows),
        patient_ids=tuple(r[1] for r in rows),
        labels=np.array([r[3] for r in rows]),
        probs=np.array([r[4] for r in rows]),
        lesion_ids=tuple(r[2] for r in rows),
    )
