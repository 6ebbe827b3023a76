"""Predictions CSV: one row per image (or per lesion after fusion), read and written strictly.

Every number a report shows comes from these files, so a malformed row is an error that names
the file, the row and the column instead of a silently wrong statistic.

Columns: ``case_id, patient_id, label`` (the class name as ``model.tasks`` spells it), then
``p_<class name>`` per class in class order; optional ``lesion_id, view, laterality,
image_path``; other columns are ignored.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from model.fusion import fuse_probabilities
from model.tasks import TASKS, TaskSpec

REQUIRED_COLUMNS = ("case_id", "patient_id", "label")
OPTIONAL_COLUMNS = ("lesion_id", "view", "laterality", "image_path")
PROB_SUM_TOLERANCE = 1e-3


def prob_column(class_name: str) -> str:
    """The CSV column holding the probability of one class."""
    return f"p_{class_name}"


@dataclass(frozen=True, eq=False)
class Predictions:
    """One task's predictions: row i is case_ids[i] with probabilities probs[i] (class order)."""

    task: str
    case_ids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    lesion_ids: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        n, k = len(self.case_ids), TASKS[self.task].num_classes
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        probs = np.asarray(self.probs, dtype=np.float64)
        lesions = self.lesion_ids or self.patient_ids
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "lesion_ids", tuple(lesions))
        if len(self.patient_ids) != n or len(self.lesion_ids) != n or labels.shape != (n,):
            raise ValueError("case_ids, patient_ids, lesion_ids and labels differ in length")
        if probs.shape != (n, k):
            raise ValueError(f"probs has shape {probs.shape}, expected ({n}, {k})")
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must be class indices in 0..{k - 1}")
        for name, values in self.extra.items():
            if len(values) != n:
                raise ValueError(f"extra column {name!r} has {len(values)} values, expected {n}")

    @property
    def spec(self) -> TaskSpec:
        return TASKS[self.task]

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, rows: Sequence[int]) -> Predictions:
        """The given rows, in the given order."""
        idx = np.asarray(rows, dtype=np.int64)
        pick = [int(i) for i in idx]
        return Predictions(
            task=self.task,
            case_ids=tuple(self.case_ids[i] for i in pick),
            patient_ids=tuple(self.patient_ids[i] for i in pick),
            labels=self.labels[idx],
            probs=self.probs[idx].reshape(len(pick), self.spec.num_classes),
            lesion_ids=tuple(self.lesion_ids[i] for i in pick),
            extra={k: tuple(v[i] for i in pick) for k, v in self.extra.items()},
        )


def _fail(path: Path, row: int, column: str, why: str) -> ValueError:
    return ValueError(f"{path}: row {row}, column {column!r}: {why}")


def read_predictions(path: Path, task: str) -> Predictions:
    """Read and check a predictions CSV for ``task`` (rows are numbered from 2: line numbers)."""
    path = Path(path)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    spec = TASKS[task]
    prob_columns = [prob_column(c) for c in spec.class_names]
    # utf-8-sig: a byte-order mark (spreadsheet exports) must not rename the first column.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in (*REQUIRED_COLUMNS, *prob_columns) if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} for task {task}")
        present_optional = [c for c in OPTIONAL_COLUMNS if c in header]
        case_ids: list[str] = []
        patients: list[str] = []
        lesions: list[str] = []
        labels: list[int] = []
        probs: list[list[float]] = []
        extra: dict[str, list[str]] = {c: [] for c in present_optional if c != "lesion_id"}
        seen: dict[str, int] = {}
        for row_no, row in enumerate(reader, start=2):
            case = (row["case_id"] or "").strip()
            patient = (row["patient_id"] or "").strip()
            for column, value in (("case_id", case), ("patient_id", patient)):
                if not value:
                    raise _fail(path, row_no, column, "empty")
            if case in seen:
                raise _fail(path, row_no, "case_id", f"duplicate of row {seen[case]}: {case!r}")
            seen[case] = row_no
            label = (row["label"] or "").strip()
            if label not in spec.class_names:
                raise _fail(
                    path,
                    row_no,
                    "label",
                    f"unknown label {label!r}; {task} classes: {', '.join(spec.class_names)}",
                )
            values = [_read_prob(path, row_no, c, row[c]) for c in prob_columns]
            total = math.fsum(values)
            if abs(total - 1.0) > PROB_SUM_TOLERANCE:
                raise _fail(
                    path,
                    row_no,
                    ",".join(prob_columns),
                    f"probabilities sum to {total:.6f}, not 1 (tolerance {PROB_SUM_TOLERANCE})",
                )
            case_ids.append(case)
            patients.append(patient)
            lesion = (row.get("lesion_id") or "").strip() if "lesion_id" in header else ""
            lesions.append(lesion or patient)
            labels.append(spec.class_names.index(label))
            probs.append(values)
            for column in extra:
                extra[column].append((row[column] or "").strip())
    if not case_ids:
        raise ValueError(f"{path}: no rows")
    return Predictions(
        task=task,
        case_ids=tuple(case_ids),
        patient_ids=tuple(patients),
        labels=np.array(labels, dtype=np.int64),
        probs=np.array(probs, dtype=np.float64),
        lesion_ids=tuple(lesions),
        extra={k: tuple(v) for k, v in extra.items()},
    )


def _read_prob(path: Path, row: int, column: str, text: str | None) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise _fail(path, row, column, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _fail(path, row, column, f"not a finite number: {text!r}")
    if value < -PROB_SUM_TOLERANCE or value > 1 + PROB_SUM_TOLERANCE:
        raise _fail(path, row, column, f"probability {value} outside [0, 1]")
    return value


def write_predictions(preds: Predictions, path: Path) -> None:
    """Write ``preds`` in the CSV format ``read_predictions`` reads (lesion_id always written)."""
    spec = preds.spec
    extra_columns = [c for c in OPTIONAL_COLUMNS if c in preds.extra]
    header = [
        *REQUIRED_COLUMNS,
        *(prob_column(c) for c in spec.class_names),
        "lesion_id",
        *extra_columns,
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(len(preds)):
            writer.writerow(
                [
                    preds.case_ids[i],
                    preds.patient_ids[i],
                    spec.class_names[int(preds.labels[i])],
                    *(repr(float(p)) for p in preds.probs[i]),
                    preds.lesion_ids[i],
                    *(preds.extra[c][i] for c in extra_columns),
                ]
            )


def fuse_by_lesion(preds: Predictions) -> Predictions:
    """One row per lesion: its views' probabilities fused by ``model.fusion`` (the node's rule).

    The fused row's case_id is the lesion_id. Rows come out in order of first appearance.
    """
    groups: dict[str, list[int]] = {}
    for i, lesion in enumerate(preds.lesion_ids):
        groups.setdefault(lesion, []).append(i)
    patients: list[str] = []
    labels: list[int] = []
    probs: list[np.ndarray] = []
    for lesion, rows in groups.items():
        row_patients = {preds.patient_ids[i] for i in rows}
        row_labels = {int(preds.labels[i]) for i in rows}
        if len(row_patients) > 1:
            raise ValueError(
                f"lesion {lesion!r}: rows of different patients {sorted(row_patients)}"
            )
        if len(row_labels) > 1:
            names = sorted(preds.spec.class_names[j] for j in row_labels)
            raise ValueError(f"lesion {lesion!r}: rows with different labels {names}")
        patients.append(preds.patient_ids[rows[0]])
        labels.append(int(preds.labels[rows[0]]))
        probs.append(fuse_probabilities([preds.probs[i] for i in rows]).astype(np.float64))
    return Predictions(
        task=preds.task,
        case_ids=tuple(groups),
        patient_ids=tuple(patients),
        labels=np.array(labels, dtype=np.int64),
        probs=np.array(probs, dtype=np.float64).reshape(len(groups), preds.spec.num_classes),
        lesion_ids=tuple(groups),
    )


def concat_predictions(parts: Sequence[Predictions]) -> Predictions:
    """Rows of several prediction sets of one task (e.g. all validation folds), in order."""
    if not parts:
        raise ValueError("nothing to concatenate")
    tasks = {p.task for p in parts}
    if len(tasks) > 1:
        raise ValueError(f"predictions of different tasks: {sorted(tasks)}")
    shared = set.intersection(*(set(p.extra) for p in parts))
    return Predictions(
        task=parts[0].task,
        case_ids=tuple(c for p in parts for c in p.case_ids),
        patient_ids=tuple(c for p in parts for c in p.patient_ids),
        labels=np.concatenate([p.labels for p in parts]),
        probs=np.concatenate([p.probs for p in parts]),
        lesion_ids=tuple(c for p in parts for c in p.lesion_ids),
        extra={k: tuple(v for p in parts for v in p.extra[k]) for k in sorted(shared)},
    )


# ------------------------------------------------------------------ training run directory

RUN_JSON = "run.json"
_FOLD_FILE = re.compile(r"^val_fold(\d+)\.csv$")


class Deploy(StrEnum):
    """Which model made a run's test predictions."""

    BEST_FOLD = "best-fold"
    ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class RunInfo:
    """What evaluation needs from a training run's run.json."""

    path: Path
    tasks: tuple[str, ...]
    deploy: Deploy | None
    synthetic: bool
    raw: dict[str, Any]


def read_run_info(run_dir: Path) -> RunInfo:
    """Read RUN_DIR/run.json: its tasks (known to model.tasks), deploy mode, synthetic flag."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RUN_JSON}: not a training run directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{path}: 'tasks' must be a non-empty list of task names")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"{path}: unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    deploy = raw.get("deploy")
    try:
        deploy_mode = Deploy(deploy) if deploy is not None else None
    except ValueError:
        choices = ", ".join(d.value for d in Deploy)
        raise ValueError(f"{path}: 'deploy' is {deploy!r}, expected one of {choices}") from None
    return RunInfo(
        path=run_dir,
        tasks=tuple(tasks),
        deploy=deploy_mode,
        synthetic=raw.get("synthetic") is True,
        raw=raw,
    )


def task_predictions_dir(run_dir: Path, task: str) -> Path:
    return Path(run_dir) / "predictions" / task


def run_test_csv(run_dir: Path, task: str) -> Path:
    """RUN_DIR/predictions/<task>/test.csv (the deployed model on the held-out test set)."""
    return task_predictions_dir(run_dir, task) / "test.csv"


def run_fold_csvs(run_dir: Path, task: str) -> list[tuple[int, Path]]:
    """(k, RUN_DIR/predictions/<task>/val_fold<k>.csv) for the folds present, by k."""
    folder = task_predictions_dir(run_dir, task)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _FOLD_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)
