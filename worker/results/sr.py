"""The TID 1500 Comprehensive 3D SR a radiologist (and a program) reads the predictions from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from common.sop_classes import SEGMENTATION
from model.bundle_info import BundleInfo
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
    MODEL_STATUS,
    NO_UNITS,
    PROBABILITY_CODES,
    QUALITATIVE_EVALUATIONS,
    RESEARCH_USE_ONLY,
    TASK_CONCEPTS,
    UNTRAINED_MODEL,
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
    lat = laterality_of(image)
    evaluations = [
        hd.sr.QualitativeEvaluation(TASK_CONCEPTS[t], CLASS_CODES[t][prediction.predicted_index(t)])
        for t in TASK_ORDER
    ]
    evaluations.append(hd.sr.QualitativeEvaluation(INTENDED_USE, RESEARCH_USE_ONLY))
    if bundle.untrained:
        evaluations.append(hd.sr.QualitativeEvaluation(MODEL_STATUS, UNTRAINED_MODEL))
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY_CODES[task][j],
            value=float(prediction.probabilities[task][j]),
            unit=NO_UNITS,
            algorithm_id=algorithm,
        )
        for task in TASK_ORDER
        for j in range(len(PROBABILITY_CODES[task]))
    ]
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
        finding_sites=[
            hd.sr.FindingSite(
                anatomic_location=BREAST_BY_LATERALITY.get(lat or "", BREAST),
                laterality=LATERALITY.get(lat or ""),
            )
        ],
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


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
) -> hd.sr.Comprehensive3DSR:
    """One SR for one SEG: image library, one measurement group per ROI, who made it."""
    images = {str(s.SOPInstanceUID): s for s in sources}
    algorithm = algorithm_identification(bundle)
    groups = [
        _roi_group(i, roi, pred, seg, images[roi.source_sop_instance_uid], bundle, uids, algorithm)
        for i, (roi, pred) in enumerate(zip(rois, predictions, strict=True))
    ]
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
        imaging_measurements=groups,
        referenced_images=list(sources),
    )
    content = report[0]
    _describe_image_library(content, images)
    _frame_references_only(content)
    statement = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS"
    )
    statement.ContentSequence = [
        hd.sr.TextContentItem(name=COMMENT, value=disclaimer(bundle), relationship_type="CONTAINS")
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
    )
    sr.SeriesDescription = series_description("AI results", bundle)
    sr.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return sr
