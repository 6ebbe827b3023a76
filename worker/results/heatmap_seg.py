"""A SEG per source image: the Grad-CAM maps as data, in the mammogram's pixel grid.

IHE AI Results treats Secondary Captures as a non-semantic fallback; this object lets viewers
show the heatmap as an adjustable overlay and lets programs read its values.

FRACTIONAL by default (the map's values). ``[results] heatmap_seg = "binary"`` gives a BINARY
SEG instead, CAM >= ``heatmap_threshold``, for viewers that cannot show FRACTIONAL ones (OHIF
3.x); each segment's description states the threshold. It has its own UIDs (the threshold is
part of them), so switching variants never gives two different objects one UID. LABELMAP is
left out: a label map holds one segment per pixel, and two lesions' crops may overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from common.settings import HeatmapSegType, ResultsSettings
from model.bundle_info import BundleInfo
from model.preprocess.resize import resize_square
from model.roi import RoiCrop, RoiPrediction
from worker.results.codes import AI_FAMILY, CLASS_ACTIVATION, GRADCAM
from worker.results.equipment import (
    MANUFACTURER,
    add_research_use,
    contributing_equipment,
    series_description,
    software_version,
)
from worker.results.uids import ResultUids

HEATMAP_SERIES_NUMBER = 9903


def cam_in_image_grid(roi: RoiCrop, cam: np.ndarray) -> np.ndarray:
    """Paste the ROI's map (its native square, possibly past the borders) into the image."""
    rows, cols = roi.image_shape
    box = roi.box
    if cam.shape[0] != box.size:
        cam = resize_square(cam, box.size)
    out = np.zeros((rows, cols), dtype=np.float32)
    r0, c0 = max(box.top, 0), max(box.left, 0)
    r1, c1 = min(box.bottom, rows), min(box.right, cols)
    out[r0:r1, c0:c1] = cam[r0 - box.top : r1 - box.top, c0 - box.left : c1 - box.left]
    return np.clip(out, 0.0, 1.0)


HEATMAP_COLOUR = hd.color.CIELabColor(53.24, 80.09, 67.20)  # sRGB red (255, 0, 0)


def build_heatmap_seg(
    source: Dataset,
    entries: Sequence[tuple[int, RoiCrop, RoiPrediction]],
    bundle: BundleInfo,
    uids: ResultUids,
    instance_number: int,
    built_at: datetime,
    settings: ResultsSettings | None = None,
) -> hd.seg.Segmentation:
    """One segment per ROI on ``source``; ``entries`` are (ROI index, crop, prediction).

    ``built_at`` dates the series and its content; ``settings`` chooses FRACTIONAL (default)
    or BINARY."""
    settings = settings or ResultsSettings()
    binary = settings.heatmap_seg is HeatmapSegType.BINARY
    threshold = settings.heatmap_threshold
    cut = f"CAM >= {threshold:g}"
    algorithm = hd.AlgorithmIdentificationSequence(
        name=bundle.display_name[:64],
        family=AI_FAMILY,
        version=bundle.version[:64],
        source=MANUFACTURER,
        # Algorithm Parameters is LT: the whole digest fits (Algorithm Source, LO, cut it).
        parameters={"weights sha256": bundle.digest},
    )
    descriptions = []
    planes = []
    for number, (index, roi, prediction) in enumerate(entries, start=1):
        label = f"Grad-CAM ROI {index + 1}" + (f" {cut}" if binary else "")
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:64],
            segmented_property_category=CLASS_ACTIVATION,
            segmented_property_type=GRADCAM,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uids.tracking(index),
            tracking_id=f"ROI {index + 1}",
        )
        # Red, so viewers need not pick a colour for the map (OHIF warns when it must).
        description.RecommendedDisplayCIELabValue = list(HEATMAP_COLOUR.value)
        if binary:
            description.SegmentDescription = (
                f"Grad-CAM of ROI {index + 1}: the pixels where the map (0..1) is {cut}"
            )
        descriptions.append(description)
        planes.append(cam_in_image_grid(roi, prediction.cam))
    pixel_array = np.stack(planes, axis=-1)[None]
    source_uid = str(source.SOPInstanceUID)
    if binary:
        pixel_array = pixel_array.astype(np.float64) >= threshold
        variant = f"binary-{threshold!r}"
        series_uid = uids(f"heatmap-seg-series/{variant}")
        instance_uid = uids(f"heatmap-seg/{variant}/{source_uid}")
        kind = {
            "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
            "content_description": f"Grad-CAM {cut}, five-class subtype prediction"[:64],
        }
    else:
        series_uid, instance_uid = uids.heatmap_series, uids.heatmap_instance(source_uid)
        kind = {
            "segmentation_type": hd.seg.SegmentationTypeValues.FRACTIONAL,
            "fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            "max_fractional_value": 255,
            "content_description": "Grad-CAM of the five-class molecular subtype prediction",
        }
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixel_array,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=HEATMAP_SERIES_NUMBER,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=bundle.display_name[:64],
        software_versions=software_version(),
        device_serial_number=bundle.digest[:16],
        content_label="GRADCAM",
        contributing_equipment=[contributing_equipment(bundle)],
        omit_empty_frames=False,
        series_date=built_at.date(),
        series_time=built_at.time(),
        content_date=built_at.date(),
        content_time=built_at.time(),
        **kind,
    )
    if "PatientOrientation" in source:
        seg.PatientOrientation = source.PatientOrientation
    _projection_pixel_measures(seg, source)
    if binary:
        _viewer_plane_orientation(seg)
    seg.SeriesDescription = series_description(
        f"Grad-CAM {cut}" if binary else "Grad-CAM map", bundle
    )
    add_research_use(seg, bundle)
    return seg


def _viewer_plane_orientation(seg: Dataset) -> None:
    """The BINARY variant exists for OHIF, whose SEG loader (@cornerstonejs/adapters,
    checkOrientation) needs Plane Orientation (Image Orientation Patient) and compares it with
    the source image's. A mammogram has none; cornerstone then gives it rows along +x and
    columns along +y, so that is what the SEG states, without a Frame of Reference (the map
    stays registered to the mammogram pixel by pixel, not in patient space)."""
    if "FrameOfReferenceUID" in seg:
        return  # a source with patient coordinates: highdicom wrote its own planes
    item = Dataset()
    item.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [item]


def _projection_pixel_measures(seg: Dataset, source: Dataset) -> None:
    """Pixel Measures with the pixel spacing only, and no Frame of Reference, for a projection
    image. highdicom copies the source's Frame of Reference, which makes Pixel Measures need a
    Slice Thickness (dciodvfy), and a mammogram has neither a slice thickness nor patient
    coordinates: the map is registered to it pixel by pixel (Derivation Image, Referenced
    Series), so the Frame of Reference goes. Pixel Measures stay, with the source's Pixel
    Spacing (or, for an MG that has only that, its Imager Pixel Spacing): OHIF's SEG viewport
    reads them and fails on the whole study without them."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures and all("SliceThickness" in item for item in measures):
        return
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        if keyword in seg:
            delattr(seg, keyword)
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    if spacing:
        item = Dataset()
        item.PixelSpacing = list(spacing)
        shared.PixelMeasuresSequence = [item]
    elif "PixelMeasuresSequence" in shared:
        del shared.PixelMeasuresSequence
