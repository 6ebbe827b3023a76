"""Random oversampling of minority classes, as the paper's authors do it.

An oversampling rate r adds int((r - 1) x N) extra samples to an epoch of N, drawn uniformly
(with replacement) from the images of the minority classes: for a binary task the smaller
class, for five classes every class below the mean count (their data_loader.py). Unlike their
code, the extra samples are drawn afresh every epoch from the run's seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The paper's rates (REFERENCE.md section 1).
DEFAULT_RATES: dict[str, float] = {"luminal": 1.3, "tn": 1.7, "her2": 1.5, "subtype5": 1.5}


def minority_classes(labels: Sequence[int]) -> list[int]:
    """Binary: the smaller class (none if equal). More classes: those below the mean count."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    if len(values) < 2:
        return []
    if len(values) == 2:
        if counts[0] == counts[1]:
            return []
        return [int(values[int(np.argmin(counts))])]
    return [int(v) for v, c in zip(values, counts, strict=True) if c < counts.mean()]


def epoch_indices(labels: Sequence[int], rate: float, rng: np.random.Generator) -> np.ndarray:
    """Every index once plus int((rate - 1) x N) drawn from the minority classes, shuffled."""
    if rate < 1:
        raise ValueError(f"oversampling rate must be at least 1, not {rate}")
    labels_arr = np.asarray(labels)
    base = np.arange(len(labels_arr))
    extra_n = int((rate - 1) * len(labels_arr))
    pool = np.flatnonzero(np.isin(labels_arr, minority_classes(labels)))
    extra = rng.choice(pool, size=extra_n, replace=True) if extra_n and pool.size else base[:0]
    return rng.permutation(np.concatenate([base, extra]))
