"""Patient-level splits and oversampling: no leakage, stratified, seeded, the authors' rates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.sampling import epoch_indices, minority_classes
from train.splits import Splits, make_splits


def _cohort(n_patients: int = 60, seed: int = 0) -> tuple[list[str], list[int]]:
    """Two images per patient (CC, MLO), five classes with the paper's imbalance."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n_patients, p=[0.26, 0.4, 0.14, 0.07, 0.13])
    labels[:10] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # every class at least twice
    patients = [f"P{i:03d}" for i in range(n_patients)]
    images = [p for p in patients for _ in range(2)]
    image_labels = [int(label) for label in labels for _ in range(2)]
    return images, image_labels


def test_no_patient_is_on_both_sides_of_any_split() -> None:
    images, labels = _cohort()
    splits = make_splits(images, labels, seed=3)
    everyone = set(images)
    test = set(splits.test)
    assert len(splits.folds) == 5
    vals = [set(f.val) for f in splits.folds]
    for fold in splits.folds:
        train, val = set(fold.train), set(fold.val)
        assert not train & val and not train & test and not val & test
        assert train | val | test == everyone
    # Each training patient is validated in exactly one fold.
    assert sum(len(v) for v in vals) == len(everyone - test)
    assert set().union(*vals) == everyone - test


def test_the_test_split_is_one_fifth_and_stratified() -> None:
    images, labels = _cohort(n_patients=100)
    splits = make_splits(images, labels, seed=0)
    per_patient = dict(zip(images, labels, strict=True))
    assert len(splits.test) == 20
    overall = Counter(per_patient.values())
    in_test = Counter(per_patient[p] for p in splits.test)
    for cls, count in overall.items():
        # Stratified: each class's share of the test set is its share of the cohort, to within
        # one patient.
        assert abs(in_test[cls] - count * 20 / 100) <= 1, (cls, in_test, overall)
    for fold in splits.folds:
        in_val = Counter(per_patient[p] for p in fold.val)
        n_val = len(fold.val)
        for cls, count in overall.items():
            assert abs(in_val[cls] - count * n_val / 100) <= 2, (cls, in_val)


def test_splits_are_seeded_and_round_trip_through_json(tmp_path: Path) -> None:
    images, labels = _cohort()
    a = make_splits(images, labels, seed=7)
    assert make_splits(images, labels, seed=7) == a
    assert make_splits(images, labels, seed=8) != a
    a.write(tmp_path / "splits.json")
    assert Splits.read(tmp_path / "splits.json") == a
    import json

    doc = json.loads((tmp_path / "splits.json").read_text())
    assert set(doc["test"]) == set(a.test)
    assert [set(f["val"]) for f in doc["folds"]] == [set(f.val) for f in a.folds]


def test_a_patient_whose_images_disagree_and_too_small_cohorts_are_refused() -> None:
    with pytest.raises(ValueError, match="patient P1 has images with different labels"):
        make_splits(["P1", "P1", "P2"], [0, 1, 0])
    images = [f"P{i}" for i in range(5) for _ in range(2)]
    with pytest.raises(ValueError, match="too few"):
        make_splits(images, [i % 2 for i in range(5) for _ in range(2)], folds=5)


def test_minority_classes_follow_the_authors_rule() -> None:
    assert minority_classes([0, 0, 0, 1]) == [1]
    assert minority_classes([0, 1, 1, 1]) == [0]
    assert minority_classes([0, 1]) == []
    # Five classes: every class below the mean count (here 4).
    assert minority_classes([0] * 8 + [1] * 6 + [2] * 3 + [3] * 2 + [4] * 1) == [2, 3, 4]


def test_an_oversampled_epoch_adds_rate_minus_one_times_n_minority_samples() -> None:
    labels = [0] * 70 + [1] * 30
    rng = np.random.default_rng(0)
    order = epoch_indices(labels, 1.7, rng)
    assert len(order) == 100 + 70
    counts = Counter(order.tolist())
    assert set(counts) == set(range(100))  # every image at least once
    extra = [i for i, c in counts.items() for _ in range(c - 1)]
    assert len(extra) == 70 and all(labels[i] == 1 for i in extra)
    # A rate of 1 is a plain shuffle; the next epoch draws again.
    assert sorted(epoch_indices(labels, 1.0, rng).tolist()) == list(range(100))
    assert not np.array_equal(order, epoch_indices(labels, 1.7, rng))
    with pytest.raises(ValueError, match="at least 1"):
        epoch_indices(labels, 0.5, rng)
