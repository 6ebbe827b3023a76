"""Training throughput: a plain loop against the optimised one `molsub train` runs, one process.

    python bench/train.py [--patients N] [--epochs E] [--input-size S] [--workers W]
                          [--device cpu|cuda] [--threads T]

Both train the same DenseNet121-CBAM (same initial weights, same SYNTHETIC data from
``molsub synth``, same batch size and augmentations) and report images per second over whole
epochs, data preparation included:

- reference, the plain loop: each epoch reads every MG and its SEG from disk, decodes and crops
  (``model.preprocess.rois.lesion_input``), contiguous tensors, DataLoader without workers,
  fp32;
- ``train.loop.FoldTrainer`` (what `molsub train` runs) over crops from the on-disk
  ``train.cache.CropCache`` (the one-off cropping is timed separately), in three variants:
  contiguous without DataLoader workers; channels_last without workers (the CPU default);
  channels_last with ``--workers`` worker processes for the augmentations. On CUDA all three
  use mixed precision (fp16 autocast with gradient scaling).

Prints every rate and its ratio to the plain loop's. The data are SYNTHETIC; the figures are
about speed only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

# `python bench/train.py` puts bench/ first on sys.path, where this file would shadow the train
# package: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pydicom
import torch
from torch.nn import functional as F

from model.network import build_densenet121_cbam
from model.preprocess.rois import lesion_input
from molsub.synth import write_synthetic_studies
from train.augment import AugmentSettings, build_augment
from train.cache import CropCache
from train.from_dicom import manifest_from_dicom
from train.loop import FoldTrainer, TrainSettings
from train.manifest import task_label
from train.masks import RoiMasks


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=8, help="SYNTHETIC patients, 2 images each")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="optimised DataLoader workers (2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default)")
    return p.parse_args()


def plain_epochs(rows: list, network: torch.nn.Module, args: argparse.Namespace) -> float:
    """The reference: decode and crop every image each epoch; eager fp32, contiguous."""
    device = torch.device(args.device)
    network = network.to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.005)
    augment = build_augment(AugmentSettings())
    labels = torch.tensor([task_label(r, "luminal") for r in rows])
    seen = 0
    began = time.perf_counter()
    for _ in range(args.epochs):
        masks = RoiMasks()
        order = torch.randperm(len(rows)).tolist()
        for start in range(0, len(order), args.batch_size):
            batch_rows = order[start : start + args.batch_size]
            images = []
            for i in batch_rows:
                ds = pydicom.dcmread(rows[i].image_path)
                mask = masks.mask(rows[i].roi_path, ds, rows[i].segment)
                crop = lesion_input(ds, mask, input_size=args.input_size)
                images.append(augment(torch.from_numpy(crop)[None]))
            x = torch.stack(images).to(device)
            loss = F.cross_entropy(network(x), labels[batch_rows].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            seen += len(batch_rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - began)


def cached_epochs(
    rows: list,
    network: torch.nn.Module,
    crops: np.ndarray,
    work: Path,
    args: argparse.Namespace,
    *,
    channels_last: bool,
    workers: int,
) -> float:
    """FoldTrainer (what `molsub train` runs) over cached crops: images per second."""
    labels = np.array([task_label(r, "luminal") for r in rows])
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        oversampling={"luminal": 1.0},
        num_workers=workers,
        channels_last=channels_last,
        amp=True,
    )
    seconds: list[float] = []
    trainer = FoldTrainer(
        network, task="luminal", fold=1, settings=settings, fold_dir=work,
        device=torch.device(args.device), progress=False,
        on_epoch=lambda r: seconds.append(r.seconds),
    )  # fmt: skip
    # Validation on two images only, so that the epoch time is the training's.
    trainer.fit(crops, labels, crops[:2], labels[:2])
    return len(rows) * args.epochs / sum(seconds)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="molsub-bench-train-") as tmp:
        root = Path(tmp)
        write_synthetic_studies(root / "data", patients=args.patients, seed=11)
        manifest = manifest_from_dicom(root / "data", root / "data" / "labels.csv", root / "m.csv")
        rows = list(manifest.rows)
        torch.manual_seed(0)
        network = build_densenet121_cbam(2)
        copies = [copy.deepcopy(network) for _ in range(3)]
        plain = plain_epochs(rows, network, args)
        began = time.perf_counter()
        crops = CropCache(root / "cache").crops(
            rows, profile="default", bound_size=100, input_size=args.input_size, progress=False
        )
        crop_seconds = time.perf_counter() - began
        variants = [
            ("crop cache, contiguous, 0 workers", False, 0),
            ("crop cache, channels_last, 0 workers (molsub train's default)", True, 0),
            (f"crop cache, channels_last, {args.workers} workers", True, args.workers),
        ]
        rates = []
        for i, (name, channels_last, workers) in enumerate(variants):
            rate = cached_epochs(
                rows, copies[i], crops, root / f"fold{i}", args,
                channels_last=channels_last, workers=workers,
            )  # fmt: skip
            rates.append((name, rate))
    amp = "AMP fp16 autocast" if args.device == "cuda" else "fp32 (AMP is CUDA only)"
    threads = torch.get_num_threads()
    print(
        f"SYNTHETIC data: {len(rows)} images, {args.epochs} epochs, input {args.input_size} px, "
        f"batch {args.batch_size}, device {args.device} ({amp}), torch threads {threads}"
    )
    print(f"reference, plain loop (decode + crop every epoch, contiguous): {plain:6.2f} img/s")
    for name, rate in rates:
        print(f"{name:62s} {rate:6.2f} img/s  {rate / plain:5.2f}x")
    print(f"one-off cropping into the cache: {crop_seconds:.1f} s for {len(rows)} images")


if __name__ == "__main__":
    main()
