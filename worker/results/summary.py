"""A plain-text summary read back from an SR with highdicom: what the CLI prints, and proof
that the SR says it (a reader that only knows TID 1500 finds the same values).

The SR has one TID 1410 group per ROI (one view of one lesion) and, for a lesion seen on two or
more views, one fused group marked by the "View fusion" evaluation (worker.results.sr).
``measurement_groups`` returns the per-ROI groups only, so counting it still counts ROIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from worker.results.codes import (
    CLASS_CODES,
    COMMENT,
    PROBABILITY_CODES,
    TASK_CONCEPTS,
    VIEW_FUSION,
)

MeasurementGroup = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def _all_groups(sr: Dataset) -> list[MeasurementGroup]:
    report = hd.sr.MeasurementReport.from_sequence([sr])
    return report.get_planar_roi_measurement_groups()


def is_fused(group: MeasurementGroup) -> bool:
    """Whether ``group`` is a lesion's fused group (it carries the "View fusion" evaluation)."""
    return bool(group.get_qualitative_evaluations(name=VIEW_FUSION))


def measurement_groups(sr: Dataset) -> list[MeasurementGroup]:
    """The SR's per-ROI TID 1410 measurement groups: one per ROI, fused groups left out."""
    return [group for group in _all_groups(sr) if not is_fused(group)]


def fused_groups(sr: Dataset) -> list[MeasurementGroup]:
    """The SR's fused groups: one per lesion seen on two or more views."""
    return [group for group in _all_groups(sr) if is_fused(group)]


@dataclass(frozen=True)
class GroupValues:
    """What one measurement group says, read back from the SR alone.

    ``probabilities`` and ``calls`` (the called class's index) follow ``model.tasks`` class
    order. ``seg_frames`` are the SEG frames the group references (one per view);
    ``source_uids`` the MG images its values come from (one per view).
    """

    tracking_identifier: str
    tracking_uid: str
    seg_uid: str
    seg_frames: tuple[int, ...]
    source_uids: tuple[str, ...]
    probabilities: dict[str, tuple[float, ...]]
    calls: dict[str, int]


def group_values(group: MeasurementGroup) -> GroupValues:
    reference = group.referenced_segmentation_frame
    if reference is None:
        raise ValueError(f"group {group.tracking_identifier} references no SEG frame")
    frame_item, source_item = reference[0], reference[1]
    sources = [str(source_item.referenced_sop_instance_uid)]
    for measurement in group.get_measurements():
        for image in measurement.referenced_images:
            uid = str(image.referenced_sop_instance_uid)
            if uid not in sources:
                sources.append(uid)
    return GroupValues(
        tracking_identifier=str(group.tracking_identifier),
        tracking_uid=str(group.tracking_uid),
        seg_uid=str(frame_item.referenced_sop_instance_uid),
        seg_frames=tuple(frame_item.referenced_frame_numbers or ()),
        source_uids=tuple(sources),
        probabilities=_probabilities(group),
        calls=_call_indices(group),
    )


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
    meaning = {task: CLASS_CODES[task][i].meaning for task, i in values.calls.items()}
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
    comments = find_content_items(sr, name=COMMENT, value_type=ValueTypeValues.TEXT, recursive=True)
    lines.extend(f"  {item.TextValue}" for item in comments)
    return "\n".join(lines)
