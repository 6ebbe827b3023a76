"""The TID 1500 Comprehensive 3D SR a radiologist (and a program) reads the predictions from:
the document (image library, who made it, what for, evidence) around the measurement groups of
worker.results.sr_groups."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from common.settings import SrRegion
from model.bundle_info import BundleInfo
from model.roi import RoiCrop, RoiPrediction
from worker.results.codes import (
    COMMENT,
    IMAGE_LATERALITY,
    IMAGE_VIEW,
    INTENDED_USE,
    LATERALITY,
    MAMMOGRAPHY,
    MODEL_STATUS,
    QUALITATIVE_EVALUATIONS,
    RESEARCH_USE_ONLY,
    SYNTHETIC_TRAINED_MODEL,
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
from worker.results.source_header import laterality_of, view_code_of
from worker.results.sr_groups import Explanation, fused_groups, roi_group
from worker.results.uids import ResultUids

SR_SERIES_NUMBER = 9901
# TID 1500's Procedure Reported is drawn from CID 100, which has no mammography code (PixelMed
# refuses others); the mammogram itself is named in Performed Procedure Code Sequence.
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
FUSION_NOTE = (
    "View fusion: a lesion (SEG segment) seen on two or more views also has one fused group, "
    "whose probabilities are the mean of its views' probabilities per task and whose calls "
    "are the most probable class of those means."
)


def _document_statements(bundle: BundleInfo, fused: bool) -> hd.sr.ContainerContentItem:
    """TID 1500's document-level Qualitative Evaluations: intended use and model status, said
    once for the whole report, then the disclaimer and (with fused groups) the fusion rule."""
    statement = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS"
    )
    items: list[Dataset] = [
        hd.sr.CodeContentItem(
            name=INTENDED_USE, value=RESEARCH_USE_ONLY, relationship_type="CONTAINS"
        )
    ]
    status = (
        UNTRAINED_MODEL
        if bundle.untrained
        else SYNTHETIC_TRAINED_MODEL
        if bundle.synthetic_training_data
        else None
    )
    if status is not None:
        items.append(
            hd.sr.CodeContentItem(name=MODEL_STATUS, value=status, relationship_type="CONTAINS")
        )
    items += [
        hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type="CONTAINS")
        for text in [disclaimer(bundle), *([FUSION_NOTE] if fused else [])]
    ]
    statement.ContentSequence = items
    return statement


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


def _drop_from_current_evidence(sr: Dataset, uids: set[str]) -> None:
    """highdicom lists every object the content references as Current Requested Procedure
    Evidence; the node's own SCs and heatmap SEGs go to Pertinent Other Evidence instead."""
    for study in sr.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            series.ReferencedSOPSequence = [
                ref
                for ref in series.ReferencedSOPSequence
                if str(ref.ReferencedSOPInstanceUID) not in uids
            ]
        study.ReferencedSeriesSequence = [
            series for series in study.ReferencedSeriesSequence if series.ReferencedSOPSequence
        ]


def _other_evidence(objects: Sequence[Dataset]) -> list[Dataset]:
    """Pertinent Other Evidence (Hierarchical SOP Instance Reference Macro) for the SCs and
    heatmap SEGs the groups name: every referenced object must be listed as evidence, and these
    were made from the study, not acquired for it (so not Current Requested Procedure)."""
    by_series: dict[tuple[str, str], dict[str, str]] = {}
    for ds in objects:
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        by_series.setdefault(key, {})[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    studies: dict[str, Dataset] = {}
    for (study_uid, series_uid), instances in by_series.items():
        study = studies.setdefault(study_uid, Dataset())
        study.StudyInstanceUID = study_uid
        if "ReferencedSeriesSequence" not in study:
            study.ReferencedSeriesSequence = []
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = []
        for uid, sop_class in instances.items():
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = uid
            series.ReferencedSOPSequence.append(ref)
        study.ReferencedSeriesSequence.append(series)
    return list(studies.values())


def build_sr(
    seg: Dataset,
    sources: Sequence[Dataset],
    rois: Sequence[RoiCrop],
    predictions: Sequence[RoiPrediction],
    bundle: BundleInfo,
    uids: ResultUids,
    built_at: datetime,
    explanations: Sequence[Explanation] | None = None,
    region: SrRegion = SrRegion.BOX,
) -> hd.sr.Comprehensive3DSR:
    """One SR for one SEG: image library, one measurement group per ROI (the lesion as
    ``region`` says, calls, probabilities and, given ``explanations`` in ROI order, its SC and
    heatmap segment), one
    fused group per lesion seen on two or more views, who made it and what for; its series and
    content dated ``built_at``."""
    images = {str(s.SOPInstanceUID): s for s in sources}
    if explanations is not None and len(explanations) != len(rois):
        raise ValueError(f"{len(rois)} ROIs but {len(explanations)} explanations")
    algorithm = algorithm_identification(bundle)
    groups = [
        roi_group(
            i,
            roi,
            pred,
            seg,
            images[roi.source_sop_instance_uid],
            uids,
            algorithm,
            explanations[i] if explanations is not None else None,
            region,
        )
        for i, (roi, pred) in enumerate(zip(rois, predictions, strict=True))
    ]
    fused = fused_groups(seg, images, rois, predictions, uids, algorithm)
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
    content.ContentSequence.append(_document_statements(bundle, bool(fused)))
    explained = [ds for e in explanations or [] for ds in (e.secondary_capture, e.heatmap_seg)]
    evidence = [seg, *sources, *{str(ds.SOPInstanceUID): ds for ds in explained}.values()]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
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
    if explanations:
        made = [ds for e in explanations for ds in (e.secondary_capture, e.heatmap_seg)]
        _drop_from_current_evidence(sr, {str(ds.SOPInstanceUID) for ds in made})
        sr.PertinentOtherEvidenceSequence = _other_evidence(made)
    sr.SeriesDescription = series_description("AI results", bundle)
    sr.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return sr
