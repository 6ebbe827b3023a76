"""The SR's measurement groups: one per ROI (one lesion on one view), one per lesion seen on two
or more views (fused).

Each group is a TID 1501 "Measurement and Qualitative Evaluation Group", laid out so that
OHIF 3.12 (extensions/cornerstone-dicom-sr, @cornerstonejs/adapters) both draws it on the
mammogram and restores it into its measurements panel, and so that dciodvfy and PixelMed find
no error:

- the lesion's place is said twice, the same graphic: as the group's Image Region (DCM 111030,
  a SCOORD of the group itself, an extension of TID 1501 as in TID 1410) and as the first
  probability's spatial coordinates (TID 300 "INFERRED FROM" SCOORD, its only child). OHIF
  draws a group from its Image Region, offers to restore it into its measurements panel when
  that region is a shape one of its tools has (a 5-point box: rectangle; a point: probe), and
  restores it from its first number's SCOORD. TID 1410 cannot carry the second (its numbers,
  TID 1419, must not have spatial coordinates, highdicom enforces it), so OHIF could draw a
  TID 1410 group but never restore it;
- no other number has children (OHIF reads a number's ContentSequence as one item and skips
  the number, with a console warning, when it holds more), so the fused group's "mean" is said
  by its "View fusion" evaluation, not by a Derivation under every number;
- the input SEG's frames (and for a fused group each view's MG image) are the group's "Source
  of Measurement" (TID 1501), the SC and the heatmap segment IMAGE items after the numbers;
- a Comment states the call in words ("Luminal B (p=0.84), RESEARCH USE ONLY"): OHIF shows a
  group's Comment first beside the drawing and labels the restored measurement with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from common.settings import SrRegion
from common.sop_classes import SEGMENTATION
from model.fusion import fuse_probabilities
from model.roi import RoiCrop, RoiPrediction
from worker.results.codes import (
    BREAST,
    CLASS_CODES,
    COMMENT,
    GRADCAM,
    ILLUSTRATION_OF_ROI,
    LATERALITY,
    MEAN_OF_VIEWS,
    NO_UNITS,
    PROBABILITY_CODES,
    SHORT_CLASS_NAMES,
    TASK_CONCEPTS,
    VIEW_FUSION,
    concept_key,
)
from worker.results.outline import lesion_box, lesion_centre, lesion_outline
from worker.results.source_header import laterality_of, view_position_of
from worker.results.uids import ResultUids

MeasurementGroup = hd.sr.MeasurementsAndQualitativeEvaluations
LESION = Code("52988006", "SCT", "Lesion")
TASK_ORDER = ("subtype5", "luminal", "her2", "tn")
SIGNIFICANT_DIGITS = 4


def seg_frame_number(seg: Dataset, segment_number: int, source_uid: str) -> int:
    """The SEG frame (1-based) holding ``segment_number`` over ``source_uid``."""
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        ident = frame.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        derivation = frame.get("DerivationImageSequence") or shared.get("DerivationImageSequence")
        if not ident or not derivation:
            continue
        sources = {
            str(src.ReferencedSOPInstanceUID)
            for item in derivation
            for src in item.get("SourceImageSequence", [])
        }
        if int(ident[0].ReferencedSegmentNumber) == segment_number and source_uid in sources:
            return index
    raise ValueError(f"SEG has no frame of segment {segment_number} on image {source_uid}")


def tasks_of(probabilities: Mapping[str, np.ndarray]) -> list[str]:
    """The bundle's tasks in report order (a bundle may hold only some of the four)."""
    return [t for t in TASK_ORDER if t in probabilities]


def significant(value: float) -> float:
    """``value`` to SIGNIFICANT_DIGITS significant digits, as the SR states it."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _called(probabilities: Mapping[str, np.ndarray]) -> str:
    """The first reported task's call in short words ("Luminal B", "TN", ...)."""
    task = tasks_of(probabilities)[0]
    return SHORT_CLASS_NAMES[task][int(np.argmax(probabilities[task]))]


def group_label(probabilities: Mapping[str, np.ndarray], prefix: str = "") -> str:
    """E.g. "Luminal B (p=0.84), RESEARCH USE ONLY": the call and its probability."""
    task = tasks_of(probabilities)[0]
    p = float(np.max(probabilities[task]))
    return f"{prefix}{_called(probabilities)} (p={p:.2f}), RESEARCH USE ONLY"


def _identifier(head: str, label: str, segment_number: int) -> str:
    """``head`` (view and call) first, then the lesion, in at most 64 characters."""
    return f"{head} - {label or 'lesion'} (segment {segment_number})"[:64]


def _view(image: Dataset) -> str:
    return f"{laterality_of(image) or '?'} {view_position_of(image) or '?'}"


def roi_identifier(
    index: int, roi: RoiCrop, image: Dataset, probabilities: Mapping[str, np.ndarray]
) -> str:
    """E.g. "ROI 1 L CC: Luminal B - Lesion 1 (segment 1)"."""
    head = f"ROI {index + 1} {_view(image)}: {_called(probabilities)}"
    return _identifier(head, roi.segment_label, roi.segment_number)


def fused_identifier(
    segment_number: int, label: str, images: Sequence[Dataset], fused: Mapping[str, np.ndarray]
) -> str:
    """E.g. "Fused L CC + L MLO: Luminal B - Lesion 1 (segment 1)"."""
    views = " + ".join(_view(image) for image in images)
    return _identifier(f"Fused {views}: {_called(fused)}", label, segment_number)


@dataclass(frozen=True)
class Region:
    """Where a group's lesion is drawn: a graphic on one MG image (worker.results.outline)."""

    graphic_type: hd.sr.GraphicTypeValues
    points: np.ndarray
    image: Dataset

    @classmethod
    def of(cls, roi: RoiCrop, image: Dataset, shape: SrRegion | None) -> Region:
        """The lesion's box or outline, or (``shape`` None, a fused group) its centre."""
        if shape is None:
            return cls(hd.sr.GraphicTypeValues.POINT, lesion_centre(roi), image)
        if shape is SrRegion.OUTLINE:
            return cls(hd.sr.GraphicTypeValues.POLYLINE, lesion_outline(roi), image)
        return cls(hd.sr.GraphicTypeValues.POLYLINE, lesion_box(roi), image)

    def _source(self) -> hd.sr.SourceImageForRegion:
        return hd.sr.SourceImageForRegion(
            str(self.image.SOPClassUID), str(self.image.SOPInstanceUID)
        )

    def coordinates(self) -> hd.sr.CoordinatesForMeasurement:
        """INFERRED FROM SCOORD (a number's source), SELECTED FROM the MG image."""
        return hd.sr.CoordinatesForMeasurement(self.graphic_type, self.points, self._source())

    def image_region(self) -> hd.sr.ImageRegion:
        """CONTAINS SCOORD DCM 111030 "Image Region" (the group's), SELECTED FROM the image."""
        return hd.sr.ImageRegion(self.graphic_type, self.points, self._source())


@dataclass(frozen=True)
class Explanation:
    """What shows why a ROI got its call: its Secondary Capture and its heatmap segment."""

    secondary_capture: Dataset
    heatmap_seg: Dataset
    heatmap_segment: int


def _explanation_items(explanation: Explanation) -> list[hd.sr.ImageContentItem]:
    """IMAGE items "Illustration of ROI" (the SC) and "Gradient-weighted class activation" (the
    heatmap SEG's segment), so a reader goes from a result to its heatmap."""
    sc, heatmap = explanation.secondary_capture, explanation.heatmap_seg
    return [
        hd.sr.ImageContentItem(
            name=ILLUSTRATION_OF_ROI,
            referenced_sop_class_uid=str(sc.SOPClassUID),
            referenced_sop_instance_uid=str(sc.SOPInstanceUID),
            relationship_type="CONTAINS",
        ),
        hd.sr.ImageContentItem(
            name=GRADCAM,
            referenced_sop_class_uid=str(heatmap.SOPClassUID),
            referenced_sop_instance_uid=str(heatmap.SOPInstanceUID),
            referenced_segment_numbers=[explanation.heatmap_segment],
            relationship_type="CONTAINS",
        ),
    ]


def _calls(probabilities: Mapping[str, np.ndarray]) -> list[hd.sr.QualitativeEvaluation]:
    """Each task's call: the most probable class."""
    return [
        hd.sr.QualitativeEvaluation(
            TASK_CONCEPTS[t], CLASS_CODES[t][int(np.argmax(probabilities[t]))]
        )
        for t in tasks_of(probabilities)
    ]


def _measurements(probabilities: Mapping[str, np.ndarray], where: Region) -> list[Dataset]:
    """Every class probability, each task's most probable class first (OHIF draws the first
    five beside the lesion: the five-class ranking, the predicted subtype on top). The first
    (the call's probability) is INFERRED FROM the lesion's region; the algorithm is said once,
    by the group."""
    ranked = [
        (task, int(j))
        for task in tasks_of(probabilities)
        for j in np.argsort(-np.asarray(probabilities[task]), kind="stable")
    ]
    return [
        hd.sr.Measurement(
            name=PROBABILITY_CODES[task][j],
            value=significant(float(probabilities[task][j])),
            unit=NO_UNITS,
            referenced_coordinates=[where.coordinates()] if n == 0 else None,
        )
        for n, (task, j) in enumerate(ranked)
    ]


def _group(
    identifier: hd.sr.TrackingIdentifier,
    where: Region,
    sources: Sequence[hd.sr.SourceImageForMeasurementGroup],
    lateralities: set[str | None],
    algorithm: hd.sr.AlgorithmIdentification,
    probabilities: Mapping[str, np.ndarray],
    evaluations: list[hd.sr.QualitativeEvaluation],
    label: str,
    explanations: Sequence[Explanation] = (),
) -> MeasurementGroup:
    """The group, then reordered: what it is, where, the calls and the call in words, the
    numbers, the explanations (highdicom puts the evaluations last)."""
    lat = lateralities.pop() if len(lateralities) == 1 else None
    group = MeasurementGroup(
        tracking_identifier=identifier,
        finding_type=LESION,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(BREAST, laterality=LATERALITY.get(lat or ""))],
        measurements=_measurements(probabilities, where),
        qualitative_evaluations=evaluations,
        source_images=list(sources),
    )
    items = list(group[0].ContentSequence)
    call_names = {(c.scheme_designator, c.value) for c in [*TASK_CONCEPTS.values(), VIEW_FUSION]}
    numbers = [item for item in items if item.ValueType == "NUM"]
    calls = [item for item in items if concept_key(item) in call_names]
    head = [
        item for item in items if item.ValueType != "NUM" and concept_key(item) not in call_names
    ]
    comment = hd.sr.TextContentItem(name=COMMENT, value=label, relationship_type="CONTAINS")
    group[0].ContentSequence = [
        *head,
        where.image_region(),
        *calls,
        comment,
        *numbers,
        *(item for e in explanations for item in _explanation_items(e)),
    ]
    return group


def _segment_frames(seg: Dataset, frames: Sequence[int]) -> hd.sr.SourceImageForMeasurementGroup:
    """The input SEG's frames of the lesion: what the probabilities were inferred from."""
    return hd.sr.SourceImageForMeasurementGroup(
        SEGMENTATION, str(seg.SOPInstanceUID), referenced_frame_numbers=list(frames)
    )


def roi_group(
    index: int,
    roi: RoiCrop,
    prediction: RoiPrediction,
    seg: Dataset,
    image: Dataset,
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
    explanation: Explanation | None,
    shape: SrRegion,
) -> MeasurementGroup:
    """The group of one ROI: its lesion on its view."""
    probabilities = prediction.probabilities
    frame = seg_frame_number(seg, roi.segment_number, roi.source_sop_instance_uid)
    return _group(
        hd.sr.TrackingIdentifier(
            uid=uids.tracking(index), identifier=roi_identifier(index, roi, image, probabilities)
        ),
        Region.of(roi, image, shape),
        [_segment_frames(seg, [frame])],
        {laterality_of(image)},
        algorithm,
        probabilities,
        _calls(probabilities),
        group_label(probabilities),
        [explanation] if explanation else [],
    )


# --- view fusion: one extra group per lesion seen on two or more views ---------------------
#
# A lesion is one SEG segment; each view of it is one ROI with its own group above. Its fused
# group holds the mean of the views' probabilities per task (model.fusion), the calls of those
# means, and the "View fusion" evaluation (99MOLSUB MS0904 = MS0905 "Mean of the views'
# probabilities, per task"), by which readers tell it apart (worker.results.summary). Its
# sources are the segment's frame on every view and every view's MG image; it is drawn as the
# lesion's centre on the first view (a POINT, not one more box or outline).


def _lesion_views(
    rois: Sequence[RoiCrop], predictions: Sequence[RoiPrediction]
) -> dict[int, list[tuple[RoiCrop, RoiPrediction]]]:
    """Segment number -> its (ROI, prediction) per view, in ROI order."""
    by_segment: dict[int, list[tuple[RoiCrop, RoiPrediction]]] = {}
    for roi, prediction in zip(rois, predictions, strict=True):
        by_segment.setdefault(roi.segment_number, []).append((roi, prediction))
    return by_segment


def _fused_group(
    views: Sequence[tuple[RoiCrop, RoiPrediction]],
    seg: Dataset,
    images: Mapping[str, Dataset],
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> MeasurementGroup:
    roi = views[0][0]
    sources = [images[r.source_sop_instance_uid] for r, _ in views]
    fused = {
        task: fuse_probabilities([p.probabilities[task] for _, p in views])
        for task in tasks_of(views[0][1].probabilities)
    }
    frames = [seg_frame_number(seg, r.segment_number, r.source_sop_instance_uid) for r, _ in views]
    return _group(
        hd.sr.TrackingIdentifier(
            uid=uids.fused_tracking(roi.segment_number),
            identifier=fused_identifier(roi.segment_number, roi.segment_label, sources, fused),
        ),
        Region.of(roi, sources[0], None),
        [
            _segment_frames(seg, frames),
            *(
                hd.sr.SourceImageForMeasurementGroup(str(i.SOPClassUID), str(i.SOPInstanceUID))
                for i in sources
            ),
        ],
        {laterality_of(image) for image in sources},
        algorithm,
        fused,
        [*_calls(fused), hd.sr.QualitativeEvaluation(VIEW_FUSION, MEAN_OF_VIEWS)],
        group_label(fused, prefix=f"Fused over {len(views)} views: "),
    )


def fused_groups(
    seg: Dataset,
    images: Mapping[str, Dataset],
    rois: Sequence[RoiCrop],
    predictions: Sequence[RoiPrediction],
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[MeasurementGroup]:
    """One group per segment with ROIs on two or more images, in segment order."""
    lesions = _lesion_views(rois, predictions)
    return [
        _fused_group(views, seg, images, uids, algorithm)
        for _, views in sorted(lesions.items())
        if len({r.source_sop_instance_uid for r, _ in views}) >= 2
    ]
