"""Builders of small MG images and lesion SEGs for tests. All data made here is SYNTHETIC.

The MG header and the multi-image SEG are made by ``molsub.synth`` (the `molsub synth`
generator), so tests and synthetic studies share one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from molsub.synth import (
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    VIEW_CODES,
    build_lesion_seg,
    build_mg,
)

__all__ = [
    "MG_FOR_PRESENTATION",
    "MG_FOR_PROCESSING",
    "VIEW_CODES",
    "disk_mask",
    "make_mg",
    "make_seg",
    "roundtrip",
]


def make_mg(
    pixels: np.ndarray | None = None,
    *,
    rows: int = 256,
    cols: int = 200,
    laterality: str = "L",
    view: str = "CC",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    for_processing: bool = False,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    seed: int = 0,
) -> Dataset:
    """A single-frame MG image with the header a real mammography unit writes (SYNTHETIC)."""
    if pixels is None:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 2**bits_stored, size=(rows, cols), dtype=np.uint16)
    return build_mg(
        pixels,
        laterality=laterality,
        view=view,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        sop_instance_uid=generate_uid(),
        patient_id=patient_id,
        photometric=photometric,
        bits_stored=bits_stored,
        for_processing=for_processing,
        window=window,
        voi_function=voi_function,
        rescale=rescale,
    )


def make_seg(
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    *,
    segment_labels: Sequence[str] | None = None,
    seg_uid: str | None = None,
) -> Dataset:
    """A BINARY SEG: ``masks[i]`` (HxW or SxHxW for S segments) is over ``sources[i]``.

    highdicom builds a SEG over one image without a Frame of Reference (as MG images are); a
    SEG over CC and MLO together is made by merging per-image SEGs frame by frame, as other
    toolkits write them (``molsub.synth.build_lesion_seg``).
    """
    return build_lesion_seg(sources, masks, segment_labels=segment_labels, seg_uid=seg_uid)


def roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, as a receiver would see the object."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def disk_mask(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return ((rr - center[0]) ** 2 + (cc - center[1]) ** 2) <= radius**2
