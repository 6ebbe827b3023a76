"""One Secondary Capture per ROI: the Grad-CAM overlay as a picture any viewer shows.

The picture (worker/results/overlay.py) puts the plain windowed crop beside the overlay, so the
tissue stays visible, and leads its caption with the source image's laterality and view.
"""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset

from model.bundle_info import BundleInfo
from model.roi import RoiCrop, RoiPrediction
from worker.results.equipment import (
    MANUFACTURER,
    add_research_use,
    contributing_equipment,
    series_description,
)
from worker.results.overlay import render_overlay
from worker.results.source_header import laterality_of, view_position_of
from worker.results.uids import ResultUids

SC_SERIES_NUMBER = 9902


def image_label(source: Dataset) -> str | None:
    """Laterality and view of the source image as a viewer shows them ("R CC"), or None."""
    parts = [p for p in (laterality_of(source), view_position_of(source)) if p]
    return " ".join(parts) or None


def build_secondary_capture(
    index: int,
    roi: RoiCrop,
    prediction: RoiPrediction,
    source: Dataset,
    bundle: BundleInfo,
    uids: ResultUids,
    built_at: datetime,
) -> hd.sc.SCImage:
    """Same patient and study as ``source``, its own series dated ``built_at``; the text is
    burned in."""
    pixels = render_overlay(roi, prediction, bundle, label=image_label(source))
    # highdicom accepts single-letter directions only; an oblique MLO "FR" keeps its main one.
    orientation = tuple(str(v)[:1] for v in source.get("PatientOrientation", ["A", "F"]))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance(index),
        instance_number=index + 1,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        laterality=laterality_of(source),
        contributing_equipment=[contributing_equipment(bundle)],
        series_date=built_at.date(),
        series_time=built_at.time(),
        content_date=built_at.date(),
        content_time=built_at.time(),
    )
    sc.SeriesDescription = series_description("Grad-CAM", bundle)
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = (
        f"Grad-CAM ({prediction.cam_target_layer}) of the five-class prediction over "
        f"segment {roi.segment_number} of SEG, crop {roi.box.size} px square"
    )[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    add_research_use(sc, bundle)
    return sc
