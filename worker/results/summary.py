"""A plain-text summary read back from an SR: what the CLI prints, proof the SR says it."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset

from worker.results.codes import CLASS_CODES, PROBABILITY_CODES, SCHEME, TASK_CONCEPTS

_TASK_BY_CONCEPT = {code.value: task for task, code in TASK_CONCEPTS.items()}
_PROB = {
    code.value: (task, j) for task, cs in PROBABILITY_CODES.items() for j, code in enumerate(cs)
}


def _items(item: Dataset):  # noqa: ANN202 - generator
    for child in item.get("ContentSequence", []):
        yield child
        yield from _items(child)


def _name(item: Dataset) -> tuple[str, str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue), str(code.CodeMeaning)


def measurement_groups(sr: Dataset) -> Iterator[Dataset]:
    """The SR's TID 1501 measurement groups (DCM 125007): one per ROI."""
    for item in _items(sr):
        if str(item.get("ValueType")) == "CONTAINER" and _name(item)[1] == "125007":
            yield item


def summarize_sr(sr: Dataset) -> str:
    """Patient/study UIDs, per ROI the calls and the predicted subtype's probability."""
    lines = [
        f"SR {sr.SOPInstanceUID} ({sr.get('SeriesDescription', '')})",
        f"  study {sr.StudyInstanceUID}",
    ]
    comments = [
        str(text.TextValue)
        for container in sr.get("ContentSequence", [])
        if _name(container)[1] == "C0034375"
        for text in container.get("ContentSequence", [])
        if str(text.get("ValueType")) == "TEXT"
    ]
    for group in measurement_groups(sr):
        tracking, calls, probs = "", {}, {}
        for item in group.get("ContentSequence", []):
            scheme, value, meaning = _name(item)
            if value == "112039":
                tracking = str(item.TextValue)
            elif scheme == SCHEME and value in _TASK_BY_CONCEPT:
                calls[_TASK_BY_CONCEPT[value]] = str(item.ConceptCodeSequence[0].CodeMeaning)
            elif scheme == SCHEME and value in _PROB:
                task, j = _PROB[value]
                probs[(task, j)] = float(item.MeasuredValueSequence[0].NumericValue)
        subtype_codes = [c.meaning for c in CLASS_CODES["subtype5"]]
        p = probs.get(("subtype5", subtype_codes.index(calls["subtype5"])), float("nan"))
        lines.append(f"  {tracking}")
        lines.append(f"    subtype: {calls.get('subtype5')} (p={p:.2f})")
        lines.append(
            f"    luminal: {calls.get('luminal')}; HER2: {calls.get('her2')}; "
            f"triple-negative: {calls.get('tn')}"
        )
    lines.extend(f"  {c}" for c in comments)
    return "\n".join(lines)
