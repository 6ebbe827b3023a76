"""A plain-text summary read back from an SR with highdicom: what the CLI prints, and proof
that the SR says it (a reader that only knows TID 1500 finds the same values)."""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset

from worker.results.codes import CLASS_CODES, COMMENT, PROBABILITY_CODES, TASK_CONCEPTS

MeasurementGroup = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def measurement_groups(sr: Dataset) -> list[MeasurementGroup]:
    """The SR's TID 1410 measurement groups: one per ROI."""
    report = hd.sr.MeasurementReport.from_sequence([sr])
    return report.get_planar_roi_measurement_groups()


def _calls(group: MeasurementGroup) -> dict[str, str]:
    """Task -> the meaning of the class the model called."""
    by_concept = {code.value: task for task, code in TASK_CONCEPTS.items()}
    return {
        by_concept[evaluation.name.value]: evaluation.value.meaning
        for evaluation in group.get_qualitative_evaluations()
        if evaluation.name.value in by_concept
    }


def _probability(group: MeasurementGroup, task: str, meaning: str | None) -> float:
    names = [code.meaning for code in CLASS_CODES[task]]
    if meaning not in names:
        return float("nan")
    (measurement,) = group.get_measurements(name=PROBABILITY_CODES[task][names.index(meaning)])
    return float(measurement.value)


def summarize_sr(sr: Dataset) -> str:
    """Patient/study UIDs, per ROI the calls and the predicted subtype's probability."""
    lines = [
        f"SR {sr.SOPInstanceUID} ({sr.get('SeriesDescription', '')})",
        f"  study {sr.StudyInstanceUID}",
    ]
    for group in measurement_groups(sr):
        calls = _calls(group)
        p = _probability(group, "subtype5", calls.get("subtype5"))
        lines.append(f"  {group.tracking_identifier}")
        lines.append(f"    subtype: {calls.get('subtype5')} (p={p:.2f})")
        lines.append(
            f"    luminal: {calls.get('luminal')}; HER2: {calls.get('her2')}; "
            f"triple-negative: {calls.get('tn')}"
        )
    comments = find_content_items(sr, name=COMMENT, value_type=ValueTypeValues.TEXT, recursive=True)
    lines.extend(f"  {item.TextValue}" for item in comments)
    return "\n".join(lines)
