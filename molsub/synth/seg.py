"""The multi-image lesion SEG: one BINARY SEG over a study's CC and MLO (`molsub synth`)."""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterator, Sequence
from io import BytesIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

# --------------------------------------------------------------------------------------------
# Multi-image lesion SEG


def build_lesion_seg(
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    *,
    segment_labels: Sequence[str] | None = None,
    seg_uid: str | None = None,
    series_uid: str | None = None,
    tracking_uids: Sequence[str] | None = None,
    dimension_organization_uid: str | None = None,
    content_datetime: datetime.datetime | None = None,
    series_description: str | None = None,
    manufacturer: str = "SYNTHETIC",
    manufacturer_model_name: str = "molsub-test",
) -> Dataset:
    """A BINARY SEG: ``masks[i]`` (HxW, or SxHxW for S segments) is over ``sources[i]``.

    highdicom builds a SEG over one image without a Frame of Reference (as MG images are) but
    not over several, so a SEG over CC and MLO together is made per image and the parts are
    merged frame by frame, as other toolkits write them. UIDs and dates left as None are
    random / now; pass them all for a byte-reproducible object.
    """
    seg_uid = seg_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    n_segments = max((m.shape[0] if m.ndim == 3 else 1) for m in masks)
    labels = list(segment_labels or [f"Lesion {i + 1}" for i in range(n_segments)])
    tracking = list(tracking_uids or [generate_uid() for _ in range(n_segments)])
    parts = [
        _single_seg(
            src,
            m,
            labels=labels,
            tracking_uids=tracking,
            seg_uid=seg_uid,
            series_uid=series_uid,
            series_description=series_description,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer_model_name,
        )
        for src, m in zip(sources, masks, strict=True)
    ]
    seg = parts[0] if len(parts) == 1 else _merge_segs(parts)
    if dimension_organization_uid:
        for item in seg.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = dimension_organization_uid
        for item in seg.DimensionIndexSequence:
            item.DimensionOrganizationUID = dimension_organization_uid
    if content_datetime is not None:
        date, time = content_datetime.strftime("%Y%m%d"), content_datetime.strftime("%H%M%S")
        seg.ContentDate = seg.InstanceCreationDate = seg.SeriesDate = date
        seg.ContentTime = seg.InstanceCreationTime = seg.SeriesTime = time
        for item in seg.get("ContributingEquipmentSequence", []):
            if item.get("Manufacturer") == "Highdicom open-source contributors":
                item.ContributionDateTime = date + time
    return seg


def _single_seg(
    source: Dataset,
    mask: np.ndarray,
    *,
    labels: Sequence[str],
    tracking_uids: Sequence[str],
    seg_uid: str,
    series_uid: str,
    series_description: str | None,
    manufacturer: str,
    manufacturer_model_name: str,
) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    stacked = mask if mask.ndim == 3 else mask[None]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=labels[i],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Mass,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=tracking_uids[i],
            tracking_id=labels[i],
        )
        for i in range(stacked.shape[0])
    ]
    # highdicom wants frames x rows x cols x segments.
    pixel_array = np.moveaxis(stacked, 0, -1)[None].astype(np.uint8)
    # highdicom logs every module it copies at INFO: noise on the `molsub synth` console.
    with _quiet("highdicom"):
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=100,
            sop_instance_uid=seg_uid,
            instance_number=1,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer_model_name,
            software_versions="0",
            device_serial_number="0",
            omit_empty_frames=True,
            series_description=series_description,
        )
    seg.PatientOrientation = source.PatientOrientation
    return seg


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Raise one library logger to WARNING for the duration of a call."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _merge_segs(parts: list[Dataset]) -> Dataset:
    """One SEG whose frames are all the parts' frames (parts share UIDs and segments).

    Functional groups that differ between parts (e.g. a lone segment's Segment
    Identification, which highdicom puts in the shared group) move into the per-frame items.
    """
    parts = [_roundtrip(p) for p in parts]
    merged = parts[0]
    shared = [p.SharedFunctionalGroupsSequence[0] for p in parts]
    to_move = [
        kw
        for kw in ("SegmentIdentificationSequence", "PixelMeasuresSequence")
        if any(kw in s for s in shared)
        and not all(kw in s and s[kw].value == shared[0][kw].value for s in shared)
    ]
    frames, per_frame, referenced = [], [], {}
    for part, part_shared in zip(parts, shared, strict=True):
        n = int(part.NumberOfFrames)
        bits = np.unpackbits(np.frombuffer(part.PixelData, np.uint8), bitorder="little")
        frames.append(bits[: n * part.Rows * part.Columns])
        for item in part.PerFrameFunctionalGroupsSequence:
            for kw in to_move:
                if kw in part_shared:
                    setattr(item, kw, part_shared[kw].value)
            per_frame.append(item)
        for series in part.ReferencedSeriesSequence:
            known = referenced.setdefault(series.SeriesInstanceUID, series)
            if known is not series:
                known.ReferencedInstanceSequence.extend(series.ReferencedInstanceSequence)
    for kw in to_move:
        if kw in shared[0]:
            delattr(shared[0], kw)
    for item in per_frame:
        segment = (
            item.get("SegmentIdentificationSequence") or shared[0].SegmentIdentificationSequence
        )
        item.FrameContentSequence[0].DimensionIndexValues = [
            int(segment[0].ReferencedSegmentNumber)
        ]
    merged.PerFrameFunctionalGroupsSequence = per_frame
    merged.NumberOfFrames = len(per_frame)
    merged.ReferencedSeriesSequence = list(referenced.values())
    merged.PixelData = np.packbits(np.concatenate(frames), bitorder="little").tobytes()
    return merged


def _roundtrip(ds: Dataset) -> Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)
