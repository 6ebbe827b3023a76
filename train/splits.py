"""Patient-level splits: a stratified 4:1 train/test split, then stratified group k-fold.

A patient's CC and MLO never fall on both sides of a split (the authors split by image, which
leaks). Both steps are seeded, and the result is written to ``RUN_DIR/splits.json`` so that a
run can be repeated or resumed exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from common.durable import atomic_write_bytes


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """Patient ids: the held-out test set and the cross-validation folds of the rest."""

    test: tuple[str, ...]
    folds: tuple[Fold, ...]
    seed: int
    stratified_by: str

    def to_json(self) -> dict[str, object]:
        return {
            "test": list(self.test),
            "folds": [{"train": list(f.train), "val": list(f.val)} for f in self.folds],
            "seed": self.seed,
            "stratified_by": self.stratified_by,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Splits:
        folds = doc["folds"]
        if not isinstance(folds, list):
            raise ValueError("splits.json: 'folds' must be a list")
        return cls(
            test=tuple(doc["test"]),  # type: ignore[arg-type]
            folds=tuple(Fold(tuple(f["train"]), tuple(f["val"])) for f in folds),
            seed=int(doc.get("seed", 0)),  # type: ignore[arg-type]
            stratified_by=str(doc.get("stratified_by", "")),
        )

    def write(self, path: Path) -> None:
        text = json.dumps(self.to_json(), indent=1) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def read(cls, path: Path) -> Splits:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def make_splits(
    patient_ids: Sequence[str],
    image_labels: Sequence[int],
    *,
    test_fraction: float = 0.2,
    folds: int = 5,
    seed: int = 0,
    stratified_by: str = "label",
) -> Splits:
    """Split patients (one entry per image, with the image's label) into test and k folds.

    The test split is stratified on each patient's label (a patient's images share one label;
    ``dataset check`` refuses a manifest where they do not); the folds use scikit-learn's
    StratifiedGroupKFold over images grouped by patient, so each fold's validation patients
    are disjoint and the class balance of images is kept as far as whole patients allow.
    """
    if len(patient_ids) != len(image_labels):
        raise ValueError("one label per image is needed")
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {folds}")
    per_patient: dict[str, int] = {}
    for patient, label in zip(patient_ids, image_labels, strict=True):
        if per_patient.setdefault(patient, int(label)) != int(label):
            raise ValueError(f"patient {patient} has images with different labels")
    patients = sorted(per_patient)
    labels = [per_patient[p] for p in patients]
    counts = Counter(labels)
    n_test = max(1, round(test_fraction * len(patients))) if test_fraction > 0 else 0
    if n_test and len(patients) - n_test < folds:
        raise ValueError(
            f"{len(patients)} patients are too few for a {test_fraction:.0%} test set and "
            f"{folds} folds"
        )
    stratify = labels if min(counts.values()) >= 2 and n_test >= len(counts) else None
    test: list[str] = []
    if n_test:
        _, test = train_test_split(
            patients, test_size=n_test, stratify=stratify, random_state=seed, shuffle=True
        )
    test_set = set(test)
    rows = [i for i, p in enumerate(patient_ids) if p not in test_set]
    groups = np.array([patient_ids[i] for i in rows])
    y = np.array([int(image_labels[i]) for i in rows])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for train_idx, val_idx in splitter.split(np.zeros(len(rows)), y, groups):
        out.append(
            Fold(
                train=tuple(sorted(set(groups[train_idx]))),
                val=tuple(sorted(set(groups[val_idx]))),
            )
        )
    return Splits(
        test=tuple(sorted(test)),
        folds=tuple(out),
        seed=seed,
        stratified_by=stratified_by if stratify is not None else "none (too few per class)",
    )
