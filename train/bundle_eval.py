"""A deployed bundle evaluated on a manifest, under one or several preprocessing profiles.

The question it answers: given the same images and the same weights, how much do the figures
move when the crops are made the node's way (``default``), with the authors' intensities
(``reference``) or exactly as the authors' code made them (``reference-exact``)? Each profile's
crops come from the crop cache (keyed by profile), the networks from the bundle, and the
report puts the sets side by side with paired tests against the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.bundle import load_bundle
from model.profiles import Profile
from train.cache import CropCache
from train.loop import predict_probs
from train.manifest import ManifestRow, task_label
from train.predictions import Predictions
from train.report import evaluate_named_sets


def bundle_predictions(
    bundle_dir: Path,
    rows: Sequence[ManifestRow],
    profile: Profile,
    cache: CropCache,
    *,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Predictions]:
    """Each task of the bundle on ``rows``, with crops made by ``profile`` at the bundle's
    input and bound size."""
    bundle = load_bundle(bundle_dir, device=device)
    crops = cache.crops(
        rows,
        profile=profile,
        bound_size=bundle.info.bound_size,
        input_size=bundle.info.input_size,
        progress=progress,
    )
    out = {}
    for task, network in bundle.networks.items():
        probs = predict_probs(network, crops, device=torch.device(device))
        out[task] = Predictions(
            task=task,
            case_ids=tuple(r.case_id for r in rows),
            patient_ids=tuple(r.patient_id for r in rows),
            labels=np.array([task_label(r, task) for r in rows]),
            probs=probs,
            lesion_ids=tuple(r.lesion_id for r in rows),
        )
    return out


def compare_profiles(
    bundle_dir: Path,
    rows: Sequence[ManifestRow],
    profiles: Sequence[Profile],
    out_dir: Path,
    cache: CropCache,
    *,
    synthetic: bool = False,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Per task: one report with a prediction set per profile (the first is the reference of
    the paired tests), written to ``out_dir/<task>/``."""
    if not profiles:
        raise ValueError("no preprocessing profiles to compare")
    by_profile = {
        str(p): bundle_predictions(bundle_dir, rows, p, cache, device=device) for p in profiles
    }
    tasks = next(iter(by_profile.values())).keys()
    return {
        task: evaluate_named_sets(
            {name: preds[task] for name, preds in by_profile.items()},
            out_dir / task,
            title=f"{task}: preprocessing profiles compared on the same images and weights",
            synthetic=synthetic,
        )
        for task in tasks
    }
