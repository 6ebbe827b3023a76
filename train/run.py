"""A whole training run: manifest in, a run directory with a bundle the node serves out.

``RUN_DIR/``: ``config.json`` (every setting, the manifest's digest, the code's commit),
``splits.json`` (patient ids), ``metrics.csv`` (one line per epoch), ``checkpoints/<task>/
fold<k>/`` (best and last state), ``predictions/<task>/val_fold<k>.csv`` and ``test.csv``,
``run.json`` (what evaluation reads), ``report/`` (the paper's tables and plots) and
``bundle/`` (loadable by ``molsub serve`` and ``molsub predict`` as it is).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from torch import nn

from common.durable import atomic_write_bytes
from model.bundle import write_bundle
from model.network import build_densenet121_cbam
from model.profiles import Profile
from model.tasks import TASK_NAMES, TASKS
from train.augment import AugmentSettings
from train.cache import CropCache
from train.check import check_manifest, format_report
from train.loop import EpochRecord, FoldTrainer, TrainSettings, predict_probs, seed_everything
from train.manifest import Manifest, ManifestRow, read_manifest, task_label
from train.predictions import Deploy, Predictions, task_predictions_dir, write_predictions
from train.splits import Splits, make_splits

CONFIG_JSON, SPLITS_JSON, RUN_JSON, METRICS_CSV = (
    "config.json",
    "splits.json",
    "run.json",
    "metrics.csv",
)
SYNTHETIC_MARK = "SYNTHETIC"


class DatasetError(ValueError):
    """The manifest has errors (``molsub dataset check`` lists them); nothing was trained."""


@dataclass(frozen=True)
class RunSettings:
    """What a run trains and how; ``train`` holds the per-network recipe."""

    tasks: tuple[str, ...] = TASK_NAMES
    train: TrainSettings = field(default_factory=TrainSettings)
    profile: Profile = Profile.DEFAULT
    bound_size: int = 100
    input_size: int = 224
    folds: int = 5
    test_fraction: float = 0.2
    deploy: Deploy = Deploy.BEST_FOLD
    pretrained: Path | None = None
    name: str = "trained"
    version: str = ""
    cache_dir: Path | None = None  # default: <manifest folder>/.molsub-crop-cache

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown or no tasks {unknown}; known: {', '.join(TASKS)}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError("test_fraction must be within [0, 1)")

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "train"}
        doc["tasks"] = list(self.tasks)
        doc["train"] = self.train.to_json()
        for key in ("profile", "deploy", "pretrained", "cache_dir"):
            doc[key] = None if doc[key] is None else str(doc[key])
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunSettings:
        train_doc = dict(doc["train"])
        augment = dict(train_doc.pop("augment"))
        augment.pop("interpolation", None)
        for key in ("rotation_deg", "shear_x_deg"):
            augment[key] = tuple(augment[key])
        train = TrainSettings(**train_doc, augment=AugmentSettings(**augment))
        return cls(
            tasks=tuple(doc["tasks"]),
            train=train,
            profile=Profile(doc["profile"]),
            bound_size=int(doc["bound_size"]),
            input_size=int(doc["input_size"]),
            folds=int(doc["folds"]),
            test_fraction=float(doc["test_fraction"]),
            deploy=Deploy(doc["deploy"]),
            pretrained=Path(doc["pretrained"]) if doc.get("pretrained") else None,
            name=str(doc["name"]),
            version=str(doc["version"]),
            cache_dir=Path(doc["cache_dir"]) if doc.get("cache_dir") else None,
        )


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    bundle_dir: Path
    reports: dict[str, dict[str, Any]]
    synthetic: bool


def train_run(
    manifest_path: Path,
    run_dir: Path,
    settings: RunSettings,
    *,
    device: str | None = None,
    progress: bool = True,
) -> RunResult:
    """Check the manifest, train every task on every fold, test, report, write the bundle."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir}: not empty (use --resume to continue a run)")
    manifest = _checked_manifest(Path(manifest_path))
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "settings": settings.to_json(),
        "manifest": {"path": str(manifest.path.resolve()), "sha256": manifest.sha256},
        "code": code_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json(run_dir / CONFIG_JSON, config)
    return _run(manifest, run_dir, settings, device=device, progress=progress)


def resume_run(run_dir: Path, *, device: str | None = None, progress: bool = True) -> RunResult:
    """Continue an interrupted run with its own settings, splits and manifest (same digest)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_JSON
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_JSON}: not a training run to resume")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    settings = RunSettings.from_json(config["settings"])
    manifest = _checked_manifest(Path(config["manifest"]["path"]))
    if manifest.sha256 != config["manifest"]["sha256"]:
        raise DatasetError(
            f"{manifest.path}: changed since the run started (sha256 {manifest.sha256[:16]}, "
            f"run has {config['manifest']['sha256'][:16]}); start a new run"
        )
    return _run(manifest, run_dir, settings, device=device, progress=progress)


def _checked_manifest(path: Path) -> Manifest:
    manifest = read_manifest(path)
    report = check_manifest(manifest)
    if not report.ok:
        raise DatasetError(
            f"{path}: the manifest has errors; training refused.\n{format_report(report)}"
        )
    return manifest


def _run(
    manifest: Manifest,
    run_dir: Path,
    settings: RunSettings,
    *,
    device: str | None,
    progress: bool,
) -> RunResult:
    rows = list(manifest.rows)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cache = CropCache(settings.cache_dir or manifest.path.parent / ".molsub-crop-cache")
    crops = cache.crops(
        rows,
        profile=settings.profile,
        bound_size=settings.bound_size,
        input_size=settings.input_size,
        progress=progress,
    )
    splits = _splits(run_dir, rows, settings)
    synthetic = all_synthetic(rows)
    metrics = MetricsLog(run_dir / METRICS_CSV)
    deployed: dict[str, nn.Module | list[nn.Module]] = {}
    fold_summary: dict[str, list[dict[str, Any]]] = {}
    best_folds: dict[str, int] = {}
    for task in settings.tasks:
        task_run = _TaskRun(task, rows, crops, splits, settings, run_dir, torch_device, progress)
        networks, summary = task_run.train_folds(metrics)
        fold_summary[task] = summary
        best = max(summary, key=lambda s: _auc_key(s["best_val_auc"]))["fold"]
        best_folds[task] = best
        chosen = networks if settings.deploy is Deploy.ENSEMBLE else [networks[best - 1]]
        task_run.write_test_predictions(chosen)
        deployed[task] = chosen if len(chosen) > 1 else chosen[0]
    run_info = {
        "tasks": list(settings.tasks),
        "deploy": str(settings.deploy),
        "synthetic": synthetic,
        "best_fold": best_folds,
        "folds": fold_summary,
        "n_images": len(rows),
        "n_patients": len({r.patient_id for r in rows}),
    }
    _write_json(run_dir / RUN_JSON, run_info)
    from train.report import evaluate_run

    reports = evaluate_run(run_dir)
    bundle_dir = run_dir / "bundle"
    config = json.loads((run_dir / CONFIG_JSON).read_text(encoding="utf-8"))
    write_bundle(
        bundle_dir,
        deployed,
        name=settings.name,
        version=settings.version or config["created"][:10],
        profile=settings.profile,
        input_size=settings.input_size,
        bound_size=settings.bound_size,
        untrained=False,
        provenance=_provenance(config, run_info, splits, reports, synthetic),
        overwrite=True,
    )
    return RunResult(run_dir, bundle_dir, reports, synthetic)


class _TaskRun:
    """One task's folds, validation predictions and test predictions."""

    def __init__(
        self,
        task: str,
        rows: Sequence[ManifestRow],
        crops: np.ndarray,
        splits: Splits,
        settings: RunSettings,
        run_dir: Path,
        device: torch.device,
        progress: bool,
    ) -> None:
        self.task, self.rows, self.crops, self.splits = task, rows, crops, splits
        self.settings, self.run_dir = settings, run_dir
        self.device, self.progress = device, progress
        self.labels = np.array([task_label(r, task) for r in rows], dtype=np.int64)
        self.patients = np.array([r.patient_id for r in rows])
        self.out = task_predictions_dir(run_dir, task)
        self.out.mkdir(parents=True, exist_ok=True)

    def _rows_of(self, patients: Sequence[str]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.patients, list(patients)))

    def train_folds(self, metrics: MetricsLog) -> tuple[list[nn.Module], list[dict[str, Any]]]:
        networks, summary = [], []
        for k, fold in enumerate(self.splits.folds, start=1):
            train_idx, val_idx = self._rows_of(fold.train), self._rows_of(fold.val)
            fold_dir = self.run_dir / "checkpoints" / self.task / f"fold{k}"
            # Seeded once per fold (not per batch), so a resumed fold starts where it would have.
            seed_everything(_fold_seed(self.settings.train.seed, self.task, k))
            network = build_densenet121_cbam(
                TASKS[self.task].num_classes,
                imagenet_checkpoint=self.settings.pretrained,
                dropout=self.settings.train.dropout,
            )
            trainer = FoldTrainer(
                network, task=self.task, fold=k, settings=self.settings.train,
                fold_dir=fold_dir, device=self.device, on_epoch=metrics.append,
                progress=self.progress,
            )  # fmt: skip
            done = fold_dir / "done.json"
            if done.exists():
                network.load_state_dict(torch.load(trainer.best_path, weights_only=True))
                network.to(self.device)
                info = json.loads(done.read_text())
                best_epoch, best_auc = info["best_epoch"], info["best_val_auc"]
                val_probs = self._probs([network], val_idx)
            else:
                outcome = trainer.fit(
                    self.crops[train_idx], self.labels[train_idx],
                    self.crops[val_idx], self.labels[val_idx],
                )  # fmt: skip
                best_epoch, best_auc, val_probs = (
                    outcome.best_epoch,
                    outcome.best_val_auc,
                    outcome.val_probs,
                )
            write_predictions(self._predictions(val_idx, val_probs), self.out / f"val_fold{k}.csv")
            networks.append(network.eval())
            summary.append(
                {
                    "fold": k,
                    "best_epoch": best_epoch,
                    "best_val_auc": None if math.isnan(best_auc) else best_auc,
                    "n_train_images": int(train_idx.size),
                    "n_val_images": int(val_idx.size),
                }
            )
        return networks, summary

    def write_test_predictions(self, networks: Sequence[nn.Module]) -> None:
        test_idx = self._rows_of(self.splits.test)
        if test_idx.size == 0:
            return
        probs = self._probs(networks, test_idx)
        write_predictions(self._predictions(test_idx, probs), self.out / "test.csv")

    def _probs(self, networks: Sequence[nn.Module], idx: np.ndarray) -> np.ndarray:
        t = self.settings.train
        each = [
            predict_probs(
                n,
                self.crops[idx],
                device=self.device,
                batch_size=t.eval_batch_size,
                channels_last=t.channels_last,
            )  # fmt: skip
            for n in networks
        ]
        return np.mean(each, axis=0)

    def _predictions(self, idx: np.ndarray, probs: np.ndarray) -> Predictions:
        rows = [self.rows[i] for i in idx]
        return Predictions(
            task=self.task,
            case_ids=tuple(r.case_id for r in rows),
            patient_ids=tuple(r.patient_id for r in rows),
            labels=self.labels[idx],
            probs=probs,
            lesion_ids=tuple(r.lesion_id for r in rows),
            extra={
                "view": tuple(str(r.view) for r in rows),
                "laterality": tuple(str(r.laterality) for r in rows),
            },
        )


class MetricsLog:
    """``metrics.csv``: one line per epoch, appended and flushed as training goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns = [f.name for f in fields(EpochRecord)]

    def append(self, record: EpochRecord) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(asdict(record))


def _splits(run_dir: Path, rows: Sequence[ManifestRow], settings: RunSettings) -> Splits:
    path = run_dir / SPLITS_JSON
    if path.exists():
        return Splits.read(path)
    splits = make_splits(
        [r.patient_id for r in rows],
        [r.subtype for r in rows],
        test_fraction=settings.test_fraction,
        folds=settings.folds,
        seed=settings.train.seed,
        stratified_by="subtype5",
    )
    splits.write(path)
    return splits


def _fold_seed(seed: int, task: str, fold: int) -> int:
    digest = hashlib.sha256(f"{seed}:{task}:{fold}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _auc_key(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def all_synthetic(rows: Sequence[ManifestRow]) -> bool:
    """True when every image says it is SYNTHETIC (``molsub synth`` writes it in the header)."""
    for path in sorted({r.image_path for r in rows}):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        text = f"{ds.get('ImageComments', '')} {ds.get('DeidentificationMethod', '')}"
        if SYNTHETIC_MARK not in text:
            return False
    return bool(rows)


def code_version() -> dict[str, Any]:
    """The git commit of this code (and whether the tree had changes), when it is a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": bool(dirty) if commit else None}


def _provenance(
    config: dict[str, Any],
    run_info: dict[str, Any],
    splits: Splits,
    reports: dict[str, dict[str, Any]],
    synthetic: bool,
) -> dict[str, Any]:
    test_metrics = {
        task: {
            "n": r.get("n"),
            "auc": r.get("auc"),
            "auc_ci95": r.get("auc_ci95"),
            "accuracy": (r.get("accuracy") or {}).get("value"),
            "lesion_auc": (r.get("lesion_level") or {}).get("auc"),
            "cv_auc": (r.get("cv_mean_sd") or {}).get("auc"),
        }
        for task, r in reports.items()
    }
    return {
        "created": config["created"],
        "created_by": "molsub train",
        "code": config["code"],
        "manifest_sha256": config["manifest"]["sha256"],
        "manifest_path": config["manifest"]["path"],
        "training_data_synthetic": synthetic,
        "training_data": (
            "SYNTHETIC (molsub synth): predictions are meaningful on synthetic data only"
            if synthetic
            else "site manifest (see manifest_sha256)"
        ),
        "deploy": run_info["deploy"],
        "best_fold": run_info["best_fold"],
        "folds": run_info["folds"],
        "splits": splits.to_json(),
        "settings": config["settings"],
        "test_metrics": test_metrics,
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode("utf-8"))


def with_overrides(settings: RunSettings, **train_overrides: object) -> RunSettings:
    """``settings`` with some of its TrainSettings replaced (CLI flags that were given)."""
    given = {k: v for k, v in train_overrides.items() if v is not None}
    return replace(settings, train=replace(settings.train, **given))
