"""View fusion: one lesion's probabilities from all the views it is seen in (CC, MLO...).

The paper treats CC and MLO independently and names that its limitation. Here a lesion's
fused probabilities are the mean of its views' probabilities, per task. Why the mean: the two
views image the same tumour, so they are not independent evidence (a product of probabilities,
the naive-Bayes rule, would double-count and push calls to the extremes); the mean keeps the
scale of the per-view probabilities (what the threshold and calibration were chosen on) and one
poor view (a lesion cut by the edge, a bad compression) moves it only half-way. The same rule
is used by evaluation (train/) and by the node's SR (worker/results/sr.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FUSION_RULE = "mean"


def fuse_probabilities(views: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the per-view probability vectors (each over the same classes), float32."""
    if not views:
        raise ValueError("no views to fuse")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in views])
    if stacked.ndim != 2:
        raise ValueError(f"expected one probability vector per view, got {stacked.shape}")
    fused = stacked.mean(axis=0)
    return (fused / fused.sum()).astype(np.float32)
