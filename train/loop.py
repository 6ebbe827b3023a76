"""Training one network for one task on one cross-validation fold.

The paper's recipe (REFERENCE.md section 1) with the authors' code where the paper is silent:
AdamW (lr 1e-4, weight decay 0.005), cross-entropy, batch 8, 300 epochs, cosine annealing
stepped once per epoch with T_max 20 and eta_min 1e-5 (so over 300 epochs the rate cycles
every 40 epochs, as their ``CosineAnnealingLR(T_max=20)`` does), random oversampling of the
minority classes, the four image-plane augmentations. Unlike their code: the checkpoint kept
is the one with the best validation AUC (not the last epoch's), and seeds are set once per
run (not before every batch).

Resumable: after every epoch the whole training state (network, optimiser, schedule, scaler,
random generators, the best so far) is written atomically to ``<fold dir>/last.pt``; the best
network to ``best.pt``; ``done.json`` marks a finished fold.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common.durable import atomic_write_bytes
from train.augment import AugmentSettings, build_augment
from train.sampling import DEFAULT_RATES, epoch_indices


@dataclass(frozen=True)
class TrainSettings:
    """How one network is trained; every default is the paper's (or the authors' code's)."""

    epochs: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.005
    cosine_t_max: int = 20
    cosine_eta_min: float = 1e-5
    dropout: float = 0.3
    oversampling: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 0
    num_workers: int = 0
    channels_last: bool = True
    amp: bool = True  # mixed precision, on CUDA only
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ValueError("lr must be positive, weight_decay >= 0, dropout in [0, 1)")
        if self.cosine_t_max < 1:
            raise ValueError("cosine_t_max must be at least 1 epoch")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["augment"]["interpolation"] = str(self.augment.interpolation.value)
        return doc


@dataclass(frozen=True)
class EpochRecord:
    """One line of ``metrics.csv``."""

    task: str
    fold: int
    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_auc: float
    best_val_auc: float
    best_epoch: int
    seconds: float
    images_per_s: float


@dataclass(frozen=True)
class FoldOutcome:
    best_epoch: int
    best_val_auc: float
    best_path: Path
    val_probs: np.ndarray  # the best network's probabilities on the validation images


class CropSet(Dataset):
    """Normalised crops (N x H x W) and labels; augmented per sample when training."""

    def __init__(
        self,
        crops: np.ndarray,
        labels: np.ndarray,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.crops = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.crops[index][None]
        if self.augment is not None:
            image = self.augment(image)
        return image, self.labels[index]


def validation_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary: AUC of the class-1 probability. More classes: macro one-vs-rest AUC over the
    classes present. NaN when the validation set has a single class."""
    present = np.unique(labels)
    if present.size < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(aucs))


def predict_probs(
    network: nn.Module,
    crops: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 32,
    channels_last: bool = True,
) -> np.ndarray:
    """Softmax probabilities of ``network`` (eval mode, no augmentation), N x classes."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(np.asarray(crops[start : start + batch_size]))[:, None]
            batch = batch.to(device).contiguous(memory_format=fmt)
            out.append(F.softmax(network(batch).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class FoldTrainer:
    """Trains ``network`` for ``task`` on one fold, writing its state under ``fold_dir``."""

    def __init__(
        self,
        network: nn.Module,
        *,
        task: str,
        fold: int,
        settings: TrainSettings,
        fold_dir: Path,
        device: torch.device,
        on_epoch: Callable[[EpochRecord], None] = lambda _record: None,
        progress: bool = True,
    ) -> None:
        self.task, self.fold, self.settings = task, fold, settings
        self.fold_dir = fold_dir
        self.device = device
        self.on_epoch = on_epoch
        self.progress = progress
        self.format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.network = network.to(device, memory_format=self.format)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=settings.cosine_t_max, eta_min=settings.cosine_eta_min
        )
        self.amp = settings.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.rng = np.random.default_rng([settings.seed, fold])

    @property
    def best_path(self) -> Path:
        return self.fold_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.fold_dir / "last.pt"

    def fit(
        self,
        train_crops: np.ndarray,
        train_labels: np.ndarray,
        val_crops: np.ndarray,
        val_labels: np.ndarray,
    ) -> FoldOutcome:
        s = self.settings
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        start_epoch, best_auc, best_loss, best_epoch = self._resume()
        train_set = CropSet(train_crops, train_labels, build_augment(s.augment))
        rate = s.oversampling.get(self.task, 1.0)
        for epoch in range(start_epoch, s.epochs + 1):
            began = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            order = epoch_indices(train_labels, rate, self.rng)
            with tqdm(
                total=math.ceil(len(order) / s.batch_size),
                desc=f"{self.task} fold {self.fold} epoch {epoch}/{s.epochs}",
                unit="batch",
                disable=not self.progress,
            ) as bar:
                train_loss = self._train_epoch(train_set, order, bar)
                probs = predict_probs(
                    self.network, val_crops, device=self.device,
                    batch_size=s.eval_batch_size, channels_last=s.channels_last,
                )  # fmt: skip
                val_loss = float(
                    F.nll_loss(
                        torch.log(torch.from_numpy(probs).clamp_min(1e-12)),
                        torch.as_tensor(val_labels, dtype=torch.long),
                    )
                )
                auc = validation_auc(np.asarray(val_labels), probs)
                bar.set_postfix(loss=f"{train_loss:.4f}", val_auc=f"{auc:.3f}")
            if _better(auc, val_loss, best_auc, best_loss):
                best_auc, best_loss, best_epoch = auc, val_loss, epoch
                _save(self.best_path, self.network.state_dict())
            self.scheduler.step()
            seconds = time.perf_counter() - began
            self._save_last(epoch, best_auc, best_loss, best_epoch)
            self.on_epoch(
                EpochRecord(
                    task=self.task, fold=self.fold, epoch=epoch, lr=lr,
                    train_loss=train_loss, val_loss=val_loss, val_auc=auc,
                    best_val_auc=best_auc, best_epoch=best_epoch, seconds=seconds,
                    images_per_s=len(order) / seconds if seconds > 0 else math.nan,
                )
            )  # fmt: skip
        self.network.load_state_dict(_load(self.best_path))
        val_probs = predict_probs(
            self.network, val_crops, device=self.device,
            batch_size=s.eval_batch_size, channels_last=s.channels_last,
        )  # fmt: skip
        done = {"best_epoch": best_epoch, "best_val_auc": best_auc, "best_val_loss": best_loss}
        atomic_write_bytes(self.fold_dir / "done.json", json.dumps(done).encode())
        return FoldOutcome(best_epoch, best_auc, self.best_path, val_probs)

    def _train_epoch(self, data: CropSet, order: np.ndarray, bar: tqdm) -> float:
        s = self.settings
        loader = DataLoader(
            data,
            batch_size=s.batch_size,
            sampler=order.tolist(),
            num_workers=s.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )
        self.network.train()
        total, seen = 0.0, 0
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.format)
            labels = labels.to(self.device, non_blocking=True)
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
            with autocast:
                loss = F.cross_entropy(self.network(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach()) * len(labels)
            seen += len(labels)
            bar.update()
            bar.set_postfix(loss=f"{total / seen:.4f}")
        return total / max(seen, 1)

    def _resume(self) -> tuple[int, float, float, int]:
        """(first epoch to run, best AUC, best loss, best epoch) from ``last.pt`` if any."""
        if not self.last_path.exists():
            return 1, math.nan, math.inf, 0
        state = torch.load(self.last_path, map_location="cpu", weights_only=False)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        return state["epoch"] + 1, state["best_auc"], state["best_loss"], state["best_epoch"]

    def _save_last(self, epoch: int, best_auc: float, best_loss: float, best_epoch: int) -> None:
        _save(
            self.last_path,
            {
                "epoch": epoch,
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "best_auc": best_auc,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
            },
        )


def _better(auc: float, loss: float, best_auc: float, best_loss: float) -> bool:
    """Higher validation AUC wins; where AUC is undefined (one class), lower loss."""
    if math.isnan(auc) or math.isnan(best_auc):
        if math.isnan(best_auc) and not math.isnan(auc):
            return True
        return math.isnan(auc) and math.isnan(best_auc) and loss < best_loss
    return auc > best_auc or (auc == best_auc and loss < best_loss)


def _save(path: Path, obj: object) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def seed_everything(seed: int) -> None:
    """Once per run (the authors reseeded before every batch: the same shuffles and dropout
    masks every epoch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
