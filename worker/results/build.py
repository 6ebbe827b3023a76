"""Assemble the result objects of one unit from the per-IOD builders."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydicom.dataset import Dataset

from common.settings import ResultsSettings
from model.bundle_info import BundleInfo
from model.roi import RoiCrop, RoiPrediction
from worker.results.heatmap_seg import build_heatmap_seg
from worker.results.result_set import ResultSet
from worker.results.secondary_capture import build_secondary_capture
from worker.results.source_header import clean_header, clean_headers
from worker.results.sr import build_sr
from worker.results.sr_groups import Explanation
from worker.results.uids import ResultUids


def build_results(
    seg: Dataset,
    sources: Sequence[Dataset],
    rois: Sequence[RoiCrop],
    predictions: Sequence[RoiPrediction],
    bundle: BundleInfo,
    settings: ResultsSettings | None = None,
    built_at: datetime | None = None,
) -> ResultSet:
    """SR + one SC per ROI + one heatmap SEG per image with ROIs, UIDs derived from the SEG;
    the SR references each ROI's SC and heatmap segment.

    ``settings`` ([results]) chooses the heatmap SEG's type and how the SR draws a lesion.
    Every object's Series and Content Date and Time are ``built_at`` (default: now, local time
    as DICOM dates are); the UIDs do not depend on it, so a re-run still replaces the earlier
    objects."""
    settings = settings or ResultsSettings()
    # Whole seconds: one value for every object of the unit, the same in all of them.
    built_at = (built_at or datetime.now()).replace(microsecond=0, tzinfo=None)
    if len(rois) != len(predictions):
        raise ValueError(f"{len(rois)} ROIs but {len(predictions)} predictions")
    # What the results copy from the inputs, made valid once (real headers break the rules).
    seg, sources = clean_header(seg)[0], clean_headers(sources)
    uids = ResultUids(str(seg.SOPInstanceUID), bundle.digest)
    images = {str(s.SOPInstanceUID): s for s in sources}
    scs = [
        build_secondary_capture(
            i, roi, pred, images[roi.source_sop_instance_uid], bundle, uids, built_at
        )
        for i, (roi, pred) in enumerate(zip(rois, predictions, strict=True))
    ]
    by_image: dict[str, list[tuple[int, RoiCrop, RoiPrediction]]] = {}
    for i, (roi, pred) in enumerate(zip(rois, predictions, strict=True)):
        by_image.setdefault(roi.source_sop_instance_uid, []).append((i, roi, pred))
    heatmaps = [
        build_heatmap_seg(
            images[uid],
            entries,
            bundle,
            uids,
            instance_number=n,
            built_at=built_at,
            settings=settings,
        )
        for n, (uid, entries) in enumerate(by_image.items(), start=1)
    ]
    # The SR names each ROI's explanation: its SC, and its segment of its image's heatmap SEG
    # (segments numbered in the order of the image's ROIs, as build_heatmap_seg numbers them).
    heatmap_of = {}
    for heatmap, entries in zip(heatmaps, by_image.values(), strict=True):
        for number, (i, _, _) in enumerate(entries, start=1):
            heatmap_of[i] = (heatmap, number)
    explanations = [Explanation(scs[i], *heatmap_of[i]) for i in range(len(rois))]
    sr = build_sr(
        seg, sources, rois, predictions, bundle, uids, built_at, explanations, settings.sr_region
    )
    return ResultSet(sr=sr, secondary_captures=scs, heatmap_segs=heatmaps)
