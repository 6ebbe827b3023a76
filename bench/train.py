"""Training throughput: a plain loop against the optimised one `molsub train` runs, one process.

    python bench/train.py [--patients N] [--epochs E] [--input-size S] [--workers W]
                          [--device cpu|cuda] [--threads T]

Both train the same DenseNet121-CBAM (same initial weights, same SYNTHETIC data from
``molsub synth``, same batch size and augmentations) and report images per second over whole
epochs, data preparation included:

- reference, the plain loop: each epoch reads every MG and its SEG from disk, decodes and crops
  (``model.preprocess.rois.lesion_input``), contiguous tensors, DataLoader without workers,
  fp32;
- optimised, ``train.loop.FoldTrainer``: crops from the on-disk ``train.cache.CropCache`` (the
  first epoch's cropping is counted separately, as a one-off), channels_last, DataLoader worker
  processes for the augmentations, and mixed precision when the device is CUDA.

Prints both rates and their ratio. The data are SYNTHETIC; the figures are about speed only.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

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


def optimised_epochs(
    rows: list, network: torch.nn.Module, cache_dir: Path, work: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """FoldTrainer over cached crops: (images per second, seconds the first cropping took)."""
    began = time.perf_counter()
    crops = CropCache(cache_dir).crops(
        rows, profile="default", bound_size=100, input_size=args.input_size, progress=False
    )
    crop_seconds = time.perf_counter() - began
    labels = np.array([task_label(r, "luminal") for r in rows])
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        oversampling={"luminal": 1.0},
        num_workers=args.workers,
        channels_last=True,
        amp=True,
    )
    seconds: list[float] = []
    images: list[int] = []
    trainer = FoldTrainer(
        network, task="luminal", fold=1, settings=settings, fold_dir=work,
        device=torch.device(args.device), progress=False,
        on_epoch=lambda r: (seconds.append(r.seconds), images.append(len(rows))),
    )  # fmt: skip
    # Validation on two images only, so that the epoch time is the training's.
    trainer.fit(crops, labels, crops[:2], labels[:2])
    return sum(images) / sum(seconds), crop_seconds


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
        twin = copy.deepcopy(network)
        plain = plain_epochs(rows, network, args)
        fast, crop_seconds = optimised_epochs(rows, twin, root / "cache", root / "fold", args)
    amp = "AMP fp16" if args.device == "cuda" else "no AMP (CPU)"
    threads = torch.get_num_threads()
    print(
        f"SYNTHETIC data: {len(rows)} images, {args.epochs} epochs, input {args.input_size} px, "
        f"batch {args.batch_size}, device {args.device}, torch threads {threads}"
    )
    print(f"plain loop (decode + crop each epoch, contiguous, fp32, 0 workers): {plain:.2f} img/s")
    print(f"optimised (crop cache, channels_last, {args.workers} workers, {amp}): {fast:.2f} img/s")
    print(f"one-off cropping into the cache: {crop_seconds:.1f} s for {len(rows)} images")
    print(f"speed-up: {fast / plain:.2f}x")


if __name__ == "__main__":
    main()
