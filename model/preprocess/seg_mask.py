"""Lesion masks from a DICOM SEG, one per (segment, referenced MG image).

The masks are read with highdicom. highdicom (0.28) writes SEGs over MG images whose Pixel
Measures lack SliceThickness (MG has none) and then refuses to parse its own output; we parse a
copy with a placeholder SliceThickness, which no 2-D projection image uses.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from common.errors import InputError
from common.seg_refs import referenced_image_uids
from common.sop_classes import SEGMENTATION


@dataclass
class SegmentMask:
    segment_number: int
    segment_label: str
    source_sop_instance_uid: str
    mask: np.ndarray  # bool, in the source image's pixel grid


def _parse(seg: Dataset) -> hd.seg.Segmentation:
    seg_uid = str(seg.get("SOPInstanceUID", "")) or None
    if str(seg.get("SOPClassUID", "")) != SEGMENTATION:
        raise InputError(seg_uid, "is not a DICOM Segmentation")
    patched = copy.deepcopy(seg)
    for group in patched.get("SharedFunctionalGroupsSequence", []):
        for measures in group.get("PixelMeasuresSequence", []):
            if "SliceThickness" not in measures:
                measures.SliceThickness = 1.0
    try:
        return hd.seg.Segmentation.from_dataset(patched, copy=False)
    except Exception as exc:  # highdicom raises several types for malformed SEGs
        raise InputError(seg_uid, f"cannot be read as a DICOM SEG: {exc}") from exc


def segment_masks(seg: Dataset, images: Mapping[str, Dataset]) -> list[SegmentMask]:
    """Every non-empty (segment, image) mask, ordered by segment number then reference order.

    Errors name the SEG: an image it references that was not given, a grid that does not match
    the image, a segment empty on every image. FRACTIONAL SEGs are thresholded at 0.5.
    """
    seg_uid = str(seg.SOPInstanceUID)
    parsed = _parse(seg)
    sources = referenced_image_uids(seg)
    for uid in sources:
        if uid not in images:
            raise InputError(seg_uid, f"references image {uid} which was not received")
        image = images[uid]
        seg_grid = (int(seg.Rows), int(seg.Columns))
        image_grid = (int(image.Rows), int(image.Columns))
        if seg_grid != image_grid:
            raise InputError(
                seg_uid,
                f"grid {seg_grid[0]}x{seg_grid[1]} does not match image {uid} "
                f"({image_grid[0]}x{image_grid[1]})",
            )
    fractional = str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    masks: list[SegmentMask] = []
    for item in seg.SegmentSequence:
        number, label = int(item.SegmentNumber), str(item.get("SegmentLabel", ""))
        found = []
        for uid in sources:
            pixels = _pixels(parsed, uid, number)
            if pixels is None:
                continue
            mask = pixels >= 0.5 if fractional else pixels > 0
            if mask.any():
                found.append(SegmentMask(number, label, uid, mask))
        if not found:
            raise InputError(seg_uid, f"segment {number} ({label}) is empty")
        masks.extend(found)
    return masks


def _pixels(parsed: hd.seg.Segmentation, source_uid: str, segment: int) -> np.ndarray | None:
    try:
        arr = parsed.get_pixels_by_source_instance(
            source_sop_instance_uids=[source_uid],
            segment_numbers=[segment],
            ignore_spatial_locations=True,
        )
    except (ValueError, KeyError, IndexError):
        return None  # this segment has no frame on that image
    return np.asarray(arr[0, :, :, 0])
