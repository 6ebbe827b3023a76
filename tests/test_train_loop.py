"""The fold trainer: keeps the best validation AUC's network, resumes exactly, logs each epoch.

A tiny CNN stands in for DenseNet121-CBAM (the trainer takes any classifier module), so these
tests are about the loop, not the network.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train.augment import AugmentSettings
from train.loop import EpochRecord, FoldTrainer, TrainSettings, validation_auc


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class 1 has a bright square, class 0 does not (SYNTHETIC)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (24, 16, 16)).astype(np.float32)
    y = np.array([0, 1] * 12)
    x[y == 1, 4:10, 4:10] += 2.0
    return x[:16], y[:16], x[16:], y[16:]


SETTINGS = TrainSettings(
    epochs=3, batch_size=4, lr=1e-3, augment=AugmentSettings(), channels_last=False
)


def _trainer(tmp: Path, settings: TrainSettings, records: list[EpochRecord]) -> FoldTrainer:
    return FoldTrainer(
        _tiny(), task="luminal", fold=1, settings=settings, fold_dir=tmp,
        device=torch.device("cpu"), on_epoch=records.append, progress=False,
    )  # fmt: skip


def test_the_kept_network_is_the_best_validation_epochs_not_the_last(tmp_path: Path) -> None:
    """After every epoch the head is negated, so validation AUC swings between a and 1 - a:
    the best epoch is never the last, and the trainer must return that epoch's network."""
    records: list[EpochRecord] = []
    settings = TrainSettings(epochs=3, batch_size=4, lr=1e-7, augment=AugmentSettings.none(),
                             channels_last=False)  # fmt: skip
    trainer = _trainer(tmp_path, settings, records)

    def flip(record: EpochRecord) -> None:
        records.append(record)
        with torch.no_grad():
            trainer.network[-1].weight.neg_()
            trainer.network[-1].bias.neg_()

    trainer.on_epoch = flip
    records.clear()
    x, y, vx, vy = _data()
    outcome = trainer.fit(x, y, vx, vy)
    aucs = [r.val_auc for r in records]
    assert len(records) == 3 and abs(aucs[0] - aucs[1]) > 0.1
    best = int(np.argmax(aucs)) + 1
    assert outcome.best_epoch == best != 3
    assert outcome.best_val_auc == pytest.approx(max(aucs))
    # The returned probabilities are the best network's, not the last one's.
    assert validation_auc(vy, outcome.val_probs) == pytest.approx(aucs[best - 1])
    assert (tmp_path / "done.json").exists() and (tmp_path / "best.pt").exists()


def test_an_interrupted_fold_resumes_to_the_same_network(tmp_path: Path) -> None:
    x, y, vx, vy = _data()
    straight: list[EpochRecord] = []
    torch.manual_seed(1)
    _trainer(tmp_path / "a", SETTINGS, straight).fit(x, y, vx, vy)

    class Interrupt(Exception):
        pass

    def stop_after_two(record: EpochRecord) -> None:
        resumed.append(record)
        if record.epoch == 2:
            raise Interrupt

    resumed: list[EpochRecord] = []
    torch.manual_seed(1)
    first = _trainer(tmp_path / "b", SETTINGS, resumed)
    first.on_epoch = stop_after_two
    with pytest.raises(Interrupt):
        first.fit(x, y, vx, vy)
    assert not (tmp_path / "b" / "done.json").exists()

    torch.manual_seed(99)  # a new process: whatever the global state, last.pt restores it
    second = _trainer(tmp_path / "b", SETTINGS, resumed)
    outcome = second.fit(x, y, vx, vy)
    assert [r.epoch for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert a.val_auc == pytest.approx(b.val_auc) or (math.isnan(a.val_auc))
    final_a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    final_b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key])
    assert outcome.best_epoch == straight[-1].best_epoch


def test_the_learning_rate_follows_the_authors_cosine_schedule(tmp_path: Path) -> None:
    """CosineAnnealingLR(T_max=20, eta_min=1e-5) stepped per epoch: down for 20 epochs, back
    up by epoch 40 (their 300 epochs cycle, not one anneal)."""
    records: list[EpochRecord] = []
    settings = TrainSettings(epochs=41, batch_size=16, lr=1e-4, cosine_t_max=20,
                             augment=AugmentSettings.none(), channels_last=False)  # fmt: skip
    x, y, vx, vy = _data()
    _trainer(tmp_path, settings, records).fit(x[:4], y[:4], vx, vy)
    lrs = [r.lr for r in records]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[20] == pytest.approx(1e-5)
    assert lrs[10] == pytest.approx(1e-5 + (1e-4 - 1e-5) / 2)
    assert lrs[40] == pytest.approx(1e-4)


def test_validation_auc_is_macro_one_vs_rest_for_five_classes() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 2)
    perfect = np.eye(5)[labels]
    assert validation_auc(labels, perfect) == pytest.approx(1.0)
    assert math.isnan(validation_auc(np.zeros(4, dtype=int), np.full((4, 2), 0.5)))
