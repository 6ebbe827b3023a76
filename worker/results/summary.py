"""A plain-text summary read back from an SR with highdicom: what the CLI prints, and proof
that the SR says it (a reader that only knows TID 1500 finds the same values).

The SR has one TID 1501 group per ROI (one view of one lesion: its region on the MG, calls,
probabilities inferred from the input SEG's frame, its SC and heatmap segment) and, for a lesion
seen on two or more views, one fused group marked by the "View fusion" evaluation
(worker.results.sr_groups).
``measurement_groups`` returns the per-ROI groups only, so counting it still counts ROIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code

from common.sop_classes import SEGMENTATION
from model.tasks import TASKS
from worker.results.codes import (
    CLASS_CODES,
    COMMENT,
    GRADCAM,
    ILLUSTRATION_OF_ROI,
    PROBABILITY_CODES,
    QUALITATIVE_EVALUATIONS,
    TASK_CONCEPTS,
    VIEW_FUSION,
    concept_key,
)

MeasurementGroup = hd.sr.MeasurementsAndQualitativeEvaluations
IMAGE_REGION = Code("111030", "DCM", "Image Region")
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")


def _all_groups(sr: Dataset) -> list[MeasurementGroup]:
    report = hd.sr.MeasurementReport.from_sequence([sr])
    return report.get_image_measurement_groups()


def is_fused(group: MeasurementGroup) -> bool:
    """Whether ``group`` is a lesion's fused group (it carries the "View fusion" evaluation)."""
    return bool(group.get_qualitative_evaluations(name=VIEW_FUSION))


def measurement_groups(sr: Dataset) -> list[MeasurementGroup]:
    """The SR's per-ROI measurement groups: one per ROI, fused groups left out."""
    return [group for group in _all_groups(sr) if not is_fused(group)]


def fused_groups(sr: Dataset) -> list[MeasurementGroup]:
    """The SR's fused groups: one per lesion seen on two or more views."""
    return [group for group in _all_groups(sr) if is_fused(group)]


@dataclass(frozen=True)
class GroupValues:
    """What one measurement group says, read back from the SR alone.

    ``probabilities`` and ``calls`` (the called class's index) follow ``model.tasks`` class
    order. ``seg_frames`` are the input SEG frames the values were inferred from (one per
    view); ``source_uids`` the MG images (one per view; the outline's image first);
    ``region`` the lesion on the first of them as the SR draws it (``region_type`` POLYLINE:
    its box or outline, closed; POINT: a fused lesion's centre), as (column, row) pairs;
    ``illustration_uid`` and ``heatmap`` the ROI's SC and its (heatmap SEG, segment), which a
    fused group does not have; ``label`` the call in words (the group's Comment).
    """

    tracking_identifier: str
    tracking_uid: str
    seg_uid: str
    seg_frames: tuple[int, ...]
    source_uids: tuple[str, ...]
    region_type: str
    region: tuple[tuple[float, float], ...]
    probabilities: dict[str, tuple[float, ...]]
    calls: dict[str, int]
    illustration_uid: str | None = None
    heatmap: tuple[str, int] | None = None
    label: str = ""


def group_values(group: MeasurementGroup) -> GroupValues:
    items = list(group[0].ContentSequence)
    region = next((i for i in items if concept_key(i) == _key(IMAGE_REGION)), None)
    if region is None:
        raise ValueError(f"group {group.tracking_identifier} has no image region")
    sources = [_referenced_uid(region.ContentSequence[0])]
    seg_uid, frames = "", ()
    for item in items:
        if str(item.ValueType) != "IMAGE" or concept_key(item) != _key(SOURCE_OF_MEASUREMENT):
            continue
        ref = item.ReferencedSOPSequence[0]
        if str(ref.ReferencedSOPClassUID) == SEGMENTATION:
            numbers = ref.get("ReferencedFrameNumber", [])
            numbers = numbers if isinstance(numbers, (list, MultiValue)) else [numbers]
            seg_uid, frames = str(ref.ReferencedSOPInstanceUID), tuple(int(n) for n in numbers)
        elif _referenced_uid(item) not in sources:
            sources.append(_referenced_uid(item))
    if not seg_uid:
        raise ValueError(f"group {group.tracking_identifier} names no input SEG")
    points = [float(v) for v in region.GraphicData]
    illustration, heatmap = _explanations(group)
    return GroupValues(
        tracking_identifier=str(group.tracking_identifier),
        tracking_uid=str(group.tracking_uid),
        seg_uid=seg_uid,
        seg_frames=frames,
        source_uids=tuple(sources),
        region_type=str(region.GraphicType),
        region=tuple(zip(points[0::2], points[1::2], strict=True)),
        probabilities=_probabilities(group),
        calls=_call_indices(group),
        illustration_uid=illustration,
        heatmap=heatmap,
        label=next((str(i.TextValue) for i in items if concept_key(i) == _key(COMMENT)), ""),
    )


def _referenced_uid(item: Dataset) -> str:
    return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _explanations(group: MeasurementGroup) -> tuple[str | None, tuple[str, int] | None]:
    """The group's "Illustration of ROI" (SC) and "Gradient-weighted class activation" items."""
    illustration = heatmap = None
    for item in group[0].ContentSequence:
        if str(item.ValueType) != "IMAGE":
            continue
        name = item.ConceptNameCodeSequence[0]
        ref = item.ReferencedSOPSequence[0]
        if (name.CodingSchemeDesignator, name.CodeValue) == _key(ILLUSTRATION_OF_ROI):
            illustration = str(ref.ReferencedSOPInstanceUID)
        elif (name.CodingSchemeDesignator, name.CodeValue) == _key(GRADCAM):
            heatmap = (str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber))
    return illustration, heatmap


def _key(code: Code) -> tuple[str, str]:
    return code.scheme_designator, code.value


def fused_results(sr: Dataset) -> list[GroupValues]:
    """Every lesion's fused probabilities and calls, as the SR states them."""
    return [group_values(group) for group in fused_groups(sr)]


def _probabilities(group: MeasurementGroup) -> dict[str, tuple[float, ...]]:
    """Per task the group reports (a bundle may hold some tasks only), its class probabilities."""
    out = {}
    for task, names in PROBABILITY_CODES.items():
        values = tuple(_value(group, name) for name in names)
        if not all(math.isnan(v) for v in values):
            out[task] = values
    return out


def _value(group: MeasurementGroup, name: Code) -> float:
    found = group.get_measurements(name=name)
    return float(found[0].value) if len(found) == 1 else math.nan


def _call_indices(group: MeasurementGroup) -> dict[str, int]:
    """Task -> index of the class the group calls."""
    by_concept = {code.value: task for task, code in TASK_CONCEPTS.items()}
    calls = {}
    for evaluation in group.get_qualitative_evaluations():
        task = by_concept.get(evaluation.name.value)
        if task is not None:
            values = [code.value for code in CLASS_CODES[task]]
            calls[task] = values.index(evaluation.value.value)
    return calls


def _describe(values: GroupValues) -> list[str]:
    """The called subtype with its probability, and the three binary calls."""
    meaning = {task: TASKS[task].class_names[i] for task, i in values.calls.items()}
    lines = []
    index = values.calls.get("subtype5")
    if index is not None:
        p = values.probabilities["subtype5"][index]
        lines.append(f"    subtype: {meaning['subtype5']} (p={p:.2f})")
    binary = [
        f"{label}: {meaning[task]}"
        for task, label in (("luminal", "luminal"), ("her2", "HER2"), ("tn", "triple-negative"))
        if task in meaning
    ]
    if binary:
        lines.append(f"    {'; '.join(binary)}")
    return lines


def document_statements(sr: Dataset) -> list[Dataset]:
    """The items of the document-level Qualitative Evaluations (intended use, model status, the
    disclaimer and notes), not the groups' own comments."""
    for item in sr.get("ContentSequence", []):
        if concept_key(item) == _key(QUALITATIVE_EVALUATIONS):
            return list(item.get("ContentSequence", []))
    return []


def summarize_sr(sr: Dataset) -> str:
    """Patient/study UIDs; per ROI, then per lesion seen on several views (fused), the calls
    and the predicted subtype's probability."""
    lines = [
        f"SR {sr.SOPInstanceUID} ({sr.get('SeriesDescription', '')})",
        f"  study {sr.StudyInstanceUID}",
    ]
    groups = _all_groups(sr)
    for group in (g for g in groups if not is_fused(g)):
        lines.append(f"  {group.tracking_identifier}")
        lines.extend(_describe(group_values(group)))
    for group in (g for g in groups if is_fused(g)):
        values = group_values(group)
        rule = f"mean of {len(values.source_uids)} views' probabilities"
        lines.append(f"  {values.tracking_identifier}: {rule}")
        lines.extend(_describe(values))
    lines.extend(
        f"  {item.TextValue}"
        for item in document_statements(sr)
        if concept_key(item) == _key(COMMENT)
    )
    return "\n".join(lines)
