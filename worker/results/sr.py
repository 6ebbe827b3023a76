"""The TID 1500 Comprehensive 3D SR a radiologist (and a program) reads the predictions from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from common.sop_classes import SEGMENTATION
from model.bundle_info import BundleInfo
from model.fusion import fuse_probabilities
from model.roi import RoiCrop, RoiPrediction
from worker.results.codes import (
    BREAST,
    BREAST_BY_LATERALITY,
    CLASS_CODES,
    COMMENT,
    IMAGE_LATERALITY,
    IMAGE_VIEW,
    INTENDED_USE,
    LATERALITY,
    MAMMOGRAPHY,
    MEAN,
    MEAN_OF_VIEWS,
    MODEL_STATUS,
    NO_UNITS,
    PROBABILITY_CODES,
    QUALITATIVE_EVALUATIONS,
    RESEARCH_USE_ONLY,
    SYNTHETIC_TRAINED_MODEL,
    TASK_CONCEPTS,
    UNTRAINED_MODEL,
    VIEW_FUSION,
    coding_scheme_identification,
)
from worker.results.equipment import (
    MANUFACTURER,
    algorithm_identification,
    contributing_equipment,
    disclaimer,
    series_description,
)
from worker.results.source_header import laterality_of, view_code_of, view_position_of
from worker.results.uids import ResultUids

SR_SERIES_NUMBER = 9901
LESION = Code("52988006", "SCT", "Lesion")
# TID 1500's Procedure Reported is drawn from CID 100, which has no mammography code (PixelMed
# refuses others); the mammogram itself is named in Performed Procedure Code Sequence.
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
TASK_ORDER = ("subtype5", "luminal", "her2", "tn")
FUSION_NOTE = (
    "View fusion: a lesion (SEG segment) seen on two or more views also has one fused group, "
    "whose probabilities are the mean of its views' probabilities per task and whose calls "
    "are the most probable class of those means."
)


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


def roi_identifier(index: int, roi: RoiCrop, image: Dataset) -> str:
    """Human-readable tracking identifier, e.g. "ROI 1: Lesion 1 (segment 1) on L CC"."""
    lat = laterality_of(image) or "?"
    view = view_position_of(image) or "?"
    label = roi.segment_label or "lesion"
    return f"ROI {index + 1}: {label} (segment {roi.segment_number}) on {lat} {view}"[:64]


def _evaluations(
    probabilities: Mapping[str, np.ndarray], bundle: BundleInfo
) -> list[hd.sr.QualitativeEvaluation]:
    """Each task's call (the most probable class) and the research-use statements."""
    evaluations = [
        hd.sr.QualitativeEvaluation(
            TASK_CONCEPTS[t], CLASS_CODES[t][int(np.argmax(probabilities[t]))]
        )
        for t in tasks_of(probabilities)
    ]
    evaluations.append(hd.sr.QualitativeEvaluation(INTENDED_USE, RESEARCH_USE_ONLY))
    if bundle.untrained:
        evaluations.append(hd.sr.QualitativeEvaluation(MODEL_STATUS, UNTRAINED_MODEL))
    elif bundle.synthetic_training_data:
        evaluations.append(hd.sr.QualitativeEvaluation(MODEL_STATUS, SYNTHETIC_TRAINED_MODEL))
    return evaluations


def tasks_of(probabilities: Mapping[str, np.ndarray]) -> list[str]:
    """The bundle's tasks in report order (a bundle may hold only some of the four)."""
    return [t for t in TASK_ORDER if t in probabilities]


def _measurements(
    probabilities: Mapping[str, np.ndarray],
    algorithm: hd.sr.AlgorithmIdentification,
    derivation: Code | None = None,
    sources: Sequence[hd.sr.SourceImageForMeasurement] | None = None,
) -> list[hd.sr.Measurement]:
    return [
        hd.sr.Measurement(
            name=PROBABILITY_CODES[task][j],
            value=float(probabilities[task][j]),
            unit=NO_UNITS,
            algorithm_id=algorithm,
            derivation=derivation,
            referenced_images=sources,
        )
        for task in tasks_of(probabilities)
        for j in range(len(PROBABILITY_CODES[task]))
    ]


def _finding_site(lat: str | None) -> hd.sr.FindingSite:
    return hd.sr.FindingSite(
        anatomic_location=BREAST_BY_LATERALITY.get(lat or "", BREAST),
        laterality=LATERALITY.get(lat or ""),
    )


def _roi_group(
    index: int,
    roi: RoiCrop,
    prediction: RoiPrediction,
    seg: Dataset,
    image: Dataset,
    bundle: BundleInfo,
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking(index), identifier=roi_identifier(index, roi, image)
        ),
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=SEGMENTATION,
            sop_instance_uid=str(seg.SOPInstanceUID),
            frame_number=seg_frame_number(seg, roi.segment_number, roi.source_sop_instance_uid),
            segment_number=roi.segment_number,
            source_image=hd.sr.SourceImageForSegmentation(
                str(image.SOPClassUID), str(image.SOPInstanceUID)
            ),
        ),
        finding_type=LESION,
        algorithm_id=algorithm,
        finding_sites=[_finding_site(laterality_of(image))],
        measurements=_measurements(prediction.probabilities, algorithm),
        qualitative_evaluations=_evaluations(prediction.probabilities, bundle),
    )


# --- view fusion: one extra group per lesion seen on two or more views ---------------------
#
# A lesion is one SEG segment; each view of it is one ROI with its own TID 1410 group above. The
# fused group is a TID 1410 group too, whose references name every view:
# - "Referenced Segmentation Frame" (DCM 121214) lists the segment's frame on every view (one
#   IMAGE item, Referenced Frame Number 1-n; no Referenced Segment Number beside frames, PS3.3
#   C.18.4), the same frames the per-view groups reference one by one;
# - each fused probability (TID 300) has a "Source of Measurement" (DCM 121112, INFERRED FROM)
#   per view's MG image and the Derivation "Mean" (SCT 373098007, CID 7464);
# - "Source image for segmentation" (TID 1410 allows one) is the first view's image.
# Why not TID 1411 (Referenced Segment + 1-n source images), which fits a multi-view lesion
# better: PixelMed's TID 1500 validator checks every measurement group against every template
# the report uses (the groups share one concept name), so a report mixing TID 1410 and TID 1411
# groups fails it whatever the groups hold. The "View fusion" evaluation (99MOLSUB MS0904) marks
# the fused group; readers tell the groups apart by it (worker.results.summary).


def fused_identifier(segment_number: int, label: str, images: Sequence[Dataset]) -> str:
    """E.g. "Lesion 1 (segment 1) fused over L CC + L MLO" (at most 64 characters)."""
    views = " + ".join(
        f"{laterality_of(image) or '?'} {view_position_of(image) or '?'}" for image in images
    )
    return f"{label or 'lesion'} (segment {segment_number}) fused over {views}"[:64]


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
    bundle: BundleInfo,
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    roi = views[0][0]
    sources = [images[r.source_sop_instance_uid] for r, _ in views]
    fused = {
        task: fuse_probabilities([p.probabilities[task] for _, p in views])
        for task in tasks_of(views[0][1].probabilities)
    }
    lateralities = {laterality_of(image) for image in sources}
    evaluations = _evaluations(fused, bundle)
    evaluations.insert(len(fused), hd.sr.QualitativeEvaluation(VIEW_FUSION, MEAN_OF_VIEWS))
    frames = [seg_frame_number(seg, r.segment_number, r.source_sop_instance_uid) for r, _ in views]
    first = sources[0]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.fused_tracking(roi.segment_number),
            identifier=fused_identifier(roi.segment_number, roi.segment_label, sources),
        ),
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=SEGMENTATION,
            sop_instance_uid=str(seg.SOPInstanceUID),
            frame_number=frames,
            segment_number=roi.segment_number,
            source_image=hd.sr.SourceImageForSegmentation(
                str(first.SOPClassUID), str(first.SOPInstanceUID)
            ),
        ),
        finding_type=LESION,
        algorithm_id=algorithm,
        finding_sites=[_finding_site(lateralities.pop() if len(lateralities) == 1 else None)],
        measurements=_measurements(
            fused,
            algorithm,
            derivation=MEAN,
            sources=[
                hd.sr.SourceImageForMeasurement(str(i.SOPClassUID), str(i.SOPInstanceUID))
                for i in sources
            ],
        ),
        qualitative_evaluations=evaluations,
    )


def fused_groups(
    seg: Dataset,
    images: Mapping[str, Dataset],
    rois: Sequence[RoiCrop],
    predictions: Sequence[RoiPrediction],
    bundle: BundleInfo,
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One group per segment with ROIs on two or more images, in segment order."""
    lesions = _lesion_views(rois, predictions)
    return [
        _fused_group(views, seg, images, bundle, uids, algorithm)
        for _, views in sorted(lesions.items())
        if len({r.source_sop_instance_uid for r, _ in views}) >= 2
    ]


def _describe_image_library(content: Dataset, images: dict[str, Dataset]) -> None:
    """Add Image Laterality and Image View (TID 1602) to each image library entry."""
    library = next(
        item
        for item in content.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value
    )
    for item in _walk(library):
        uid = _referenced_uid(item)
        if uid not in images or str(item.get("ValueType")) != "IMAGE":
            continue
        if "ContentSequence" not in item:
            item.ContentSequence = []
        image = images[uid]
        lat, view = laterality_of(image), view_code_of(image)
        if lat:
            item.ContentSequence.append(
                hd.sr.CodeContentItem(
                    name=IMAGE_LATERALITY,
                    value=LATERALITY[lat],
                    relationship_type="HAS ACQ CONTEXT",
                )
            )
        if view is not None:
            item.ContentSequence.append(
                hd.sr.CodeContentItem(
                    name=IMAGE_VIEW, value=view, relationship_type="HAS ACQ CONTEXT"
                )
            )


def _frame_references_only(content: Dataset) -> None:
    """A reference to a SEG frame must not also carry Referenced Segment Number (PS3.3
    C.18.3.1.2, as dciodvfy checks); the frame already identifies the segment."""
    for item in _walk(content):
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _referenced_uid(item: Dataset) -> str | None:
    refs = item.get("ReferencedSOPSequence")
    return str(refs[0].ReferencedSOPInstanceUID) if refs else None


def build_sr(
    seg: Dataset,
    sources: Sequence[Dataset],
    rois: Sequence[RoiCrop],
    predictions: Sequence[RoiPrediction],
    bundle: BundleInfo,
    uids: ResultUids,
    built_at: datetime,
) -> hd.sr.Comprehensive3DSR:
    """One SR for one SEG: image library, one measurement group per ROI, one fused group per
    lesion seen on two or more views, who made it; its series and content dated ``built_at``."""
    images = {str(s.SOPInstanceUID): s for s in sources}
    algorithm = algorithm_identification(bundle)
    groups = [
        _roi_group(i, roi, pred, seg, images[roi.source_sop_instance_uid], bundle, uids, algorithm)
        for i, (roi, pred) in enumerate(zip(rois, predictions, strict=True))
    ]
    fused = fused_groups(seg, images, rois, predictions, bundle, uids, algorithm)
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=bundle.device_uid,
            name=bundle.display_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=bundle.display_name[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[*groups, *fused],
        referenced_images=list(sources),
    )
    content = report[0]
    _describe_image_library(content, images)
    _frame_references_only(content)
    statement = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS"
    )
    statement.ContentSequence = [
        hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type="CONTAINS")
        for text in [disclaimer(bundle), *([FUSION_NOTE] if fused else [])]
    ]
    content.ContentSequence.append(statement)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources],
        content=content,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        contributing_equipment=[contributing_equipment(bundle)],
        performed_procedure_codes=[MAMMOGRAPHY],
        series_date=built_at.date(),
        series_time=built_at.time(),
        content_date=built_at.date(),
        content_time=built_at.time(),
    )
    sr.SeriesDescription = series_description("AI results", bundle)
    sr.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return sr
