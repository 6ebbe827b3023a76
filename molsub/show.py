"""`molsub show FILE`: the node's result objects made readable by a person.

An SR becomes a plain-text report (findings per ROI and per lesion, every probability, the
algorithm, the source images); a Secondary Capture or a heatmap SEG is described and, with
``--png``, rendered to a PNG. Patient data (name, ID, birth date, accession number, dates) is
printed only when asked for (``phi=True``): the node's rule is no patient data in output unless
asked. The SR is read with worker/results/summary.py, the same read-back the tests trust, so a
change of the SR's structure is followed there once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from common.sop_classes import MG_SOP_CLASSES, SECONDARY_CAPTURE, SEGMENTATION
from worker.results.codes import (
    CLASS_CODES,
    COMMENT,
    GRADCAM,
    IMAGE_LATERALITY,
    IMAGE_VIEW,
    INTENDED_USE,
    LATERALITY,
    MODEL_STATUS,
    PROBABILITY_CODES,
    TASK_CONCEPTS,
)
from worker.results.equipment import RESEARCH_USE
from worker.results.source_header import VIEW_POSITION_BY_CODE
from worker.results.summary import (
    MeasurementGroup,
    document_statements,
    fused_groups,
    group_values,
    measurement_groups,
)

# Patient and study attributes shown only with --phi.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
)
IMAGE_LIBRARY = ("DCM", "111028")
TID_4019 = {
    ("DCM", "111001"): "name",
    ("DCM", "111003"): "version",
    ("DCM", "122405"): "manufacturer",
    ("DCM", "111002"): "parameters",
}
HEATMAP_COLORMAP = "jet"
_LATERALITY_BY_CODE = {code.value: side for side, code in LATERALITY.items()}


class ShowError(Exception):
    """Why a file cannot be shown; the CLI prints it and exits 1."""


# --- reading --------------------------------------------------------------------------------


def read_dicom(path: Path) -> Dataset:
    """The file as a dataset, or a ShowError that says why not."""
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise ShowError(f"{path}: no such file") from exc
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ShowError(f"{path}: not a DICOM file ({exc})") from exc


def _code(item: Dataset, keyword: str) -> tuple[str, str] | None:
    seq = item.get(keyword)
    if not seq:
        return None
    return str(seq[0].get("CodingSchemeDesignator", "")), str(seq[0].get("CodeValue", ""))


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []) or []:
        yield child
        yield from _walk(child)


def is_sr(ds: Dataset) -> bool:
    return str(ds.get("Modality", "")) == "SR" and "ContentSequence" in ds


def is_heatmap_seg(ds: Dataset) -> bool:
    """A SEG whose segments are Grad-CAM maps (DCM 130403), as the node writes them."""
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION:
        return False
    gradcam = (GRADCAM.scheme_designator, GRADCAM.value)
    return any(
        _code(segment, "SegmentedPropertyTypeCodeSequence") == gradcam
        for segment in ds.get("SegmentSequence", []) or []
    )


def _sop_name(ds: Dataset) -> str:
    sop_class = str(ds.get("SOPClassUID", ""))
    return UID(sop_class).name if sop_class else "no SOP Class UID"


def _not_a_result(path: Path, ds: Dataset) -> ShowError:
    what = _sop_name(ds)
    if str(ds.get("SOPClassUID", "")) in MG_SOP_CLASSES:
        what += ": a mammogram is an input of the node, not a result"
    elif str(ds.get("SOPClassUID", "")) == SEGMENTATION:
        what += ": a SEG that is not a Grad-CAM heatmap (a lesion SEG is an input)"
    return ShowError(
        f"{path}: cannot show {what}; `molsub show` reads the node's results: "
        "a TID 1500 SR, a Secondary Capture or a heatmap SEG"
    )


# --- the SR ---------------------------------------------------------------------------------


def _identification(ds: Dataset, phi: bool) -> list[str]:
    lines = [
        f"  SOP Instance UID    {ds.get('SOPInstanceUID', '')}",
        f"  Series              {ds.get('SeriesDescription', '')}",
        f"  Series UID          {ds.get('SeriesInstanceUID', '')}",
        f"  Study Instance UID  {ds.get('StudyInstanceUID', '')}",
    ]
    if not phi:
        lines.append("  Patient             not shown (--phi shows name, ID, birth date, ...)")
        return lines
    for keyword in PHI_KEYWORDS:
        if keyword in ds:
            lines.append(f"  {keyword:<19} {ds.get(keyword, '')}")
    return lines


@dataclass(frozen=True)
class SourceImage:
    uid: str
    sop_class: str
    laterality: str  # "L", "R" or "" when the image library does not say
    view: str  # "CC", "MLO", ... or ""

    @property
    def label(self) -> str:
        return f"{self.laterality} {self.view}".strip()


def source_images(sr: Dataset) -> list[SourceImage]:
    """The Image Library's images with their laterality and view; the evidence without it."""
    library = next(
        (
            item
            for item in sr.get("ContentSequence", [])
            if _code(item, "ConceptNameCodeSequence") == IMAGE_LIBRARY
        ),
        None,
    )
    found: list[SourceImage] = []
    for item in _walk(library) if library is not None else []:
        refs = item.get("ReferencedSOPSequence")
        if str(item.get("ValueType", "")) != "IMAGE" or not refs:
            continue
        laterality = view = ""
        for child in item.get("ContentSequence", []) or []:
            name, value = _code(child, "ConceptNameCodeSequence"), child.get("ConceptCodeSequence")
            if not value:
                continue
            value_code, meaning = str(value[0].CodeValue), str(value[0].get("CodeMeaning", ""))
            if name == (IMAGE_LATERALITY.scheme_designator, IMAGE_LATERALITY.value):
                laterality = _LATERALITY_BY_CODE.get(value_code, meaning)
            elif name == (IMAGE_VIEW.scheme_designator, IMAGE_VIEW.value):
                view = VIEW_POSITION_BY_CODE.get(value_code, meaning)
        ref = refs[0]
        found.append(
            SourceImage(
                str(ref.ReferencedSOPInstanceUID), str(ref.ReferencedSOPClassUID), laterality, view
            )
        )
    if found:
        return found
    return [
        SourceImage(uid, sop_class, "", "")
        for uid, sop_class in _evidence(sr)
        if sop_class != SEGMENTATION
    ]


def _evidence(sr: Dataset) -> list[tuple[str, str]]:
    """(SOP Instance UID, SOP Class UID) of every object the SR names as evidence."""
    found = []
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.get("ReferencedSeriesSequence", []) or []:
            for ref in series.get("ReferencedSOPSequence", []) or []:
                found.append((str(ref.ReferencedSOPInstanceUID), str(ref.ReferencedSOPClassUID)))
    return found


def algorithms(sr: Dataset) -> list[dict[str, str]]:
    """Every distinct TID 4019 algorithm identification in the SR (said once or per item)."""
    found: list[dict[str, str]] = []
    for item in [sr, *_walk(sr)]:
        children = item.get("ContentSequence", []) or []
        algorithm: dict[str, list[str]] = {}
        for child in children:
            field = TID_4019.get(_code(child, "ConceptNameCodeSequence") or ("", ""))
            if field and "TextValue" in child:
                algorithm.setdefault(field, []).append(str(child.TextValue))
        if "name" in algorithm:
            flat = {key: "; ".join(values) for key, values in algorithm.items()}
            if flat not in found:
                found.append(flat)
    return found


def _statements(sr: Dataset) -> list[str]:
    """Intended use and model status (coded) and the comments of the document, each once."""
    wanted = {
        (INTENDED_USE.scheme_designator, INTENDED_USE.value),
        (MODEL_STATUS.scheme_designator, MODEL_STATUS.value),
    }
    comment = (COMMENT.scheme_designator, COMMENT.value)
    found: list[str] = []
    for item in document_statements(sr):
        name = _code(item, "ConceptNameCodeSequence")
        if name in wanted and item.get("ConceptCodeSequence"):
            text = (
                f"{item.ConceptNameCodeSequence[0].CodeMeaning}: "
                f"{item.ConceptCodeSequence[0].CodeMeaning}"
            )
        elif name == comment and "TextValue" in item:
            text = str(item.TextValue)
        else:
            continue
        if text not in found:
            found.append(text)
    return found


def _equipment(ds: Dataset) -> list[str]:
    """Contributing Equipment without institution or station: devices, not people or places."""
    lines = []
    for item in ds.get("ContributingEquipmentSequence", []) or []:
        purpose = item.get("PurposeOfReferenceCodeSequence")
        versions = item.get("SoftwareVersions", "")
        versions = ", ".join(map(str, versions)) if not isinstance(versions, str) else versions
        parts = [
            f"{item.get('Manufacturer', '')} / {item.get('ManufacturerModelName', '')}",
            f"software {versions}" if versions else "",
            f"device UID {item.DeviceUID}" if "DeviceUID" in item else "",
            f"({purpose[0].CodeMeaning})" if purpose else "",
        ]
        lines.append("  " + "; ".join(p for p in parts if p))
    return lines


def _finding_lines(group: MeasurementGroup, images: dict[str, SourceImage]) -> list[str]:
    values = group_values(group)
    lines = [f"  {values.tracking_identifier}", f"    tracking UID   {values.tracking_uid}"]
    for site in group.finding_sites:
        laterality = site.laterality
        suffix = f" (laterality {laterality.meaning})" if laterality is not None else ""
        lines.append(f"    finding site   {site.value.meaning}{suffix}")
    for uid in values.source_uids:
        label = images[uid].label if uid in images else ""
        lines.append(f"    source image   {uid}" + (f" ({label})" if label else ""))
    frames = ", ".join(map(str, values.seg_frames))
    lines.append(f"    input SEG      {values.seg_uid}" + (f" frame {frames}" if frames else ""))
    corners = len(values.region) - (values.region_type == "POLYLINE")
    lines.append(
        f"    region         {values.region_type}, {corners} points, on the first source image"
    )
    if values.label:
        lines.append(f"    label          {values.label}")
    if values.illustration_uid:
        lines.append(f"    illustration   {values.illustration_uid} (Secondary Capture)")
    if values.heatmap:
        uid, segment = values.heatmap
        lines.append(f"    Grad-CAM       {uid} segment {segment} (heatmap SEG)")
    for task, index in values.calls.items():
        lines.append(f"    {TASK_CONCEPTS[task].meaning}: {CLASS_CODES[task][index].meaning}")
    lines.append("    probabilities")
    width = max(len(c.meaning) for cs in CLASS_CODES.values() for c in cs)
    for task in PROBABILITY_CODES:
        if task not in values.probabilities:
            continue
        lines.append(f"      {TASK_CONCEPTS[task].meaning}")
        for code, p in zip(CLASS_CODES[task], values.probabilities[task], strict=True):
            lines.append(f"        {code.meaning:<{width}}  {p:.4f}")
    return lines


def format_sr(sr: Dataset, *, phi: bool = False) -> str:
    """The report a person reads: who and what (UIDs only unless ``phi``), the algorithm, the
    statements, the source images, then every ROI's and every fused lesion's findings."""
    try:
        per_roi, fused = measurement_groups(sr), fused_groups(sr)
    except (ValueError, AttributeError, IndexError, KeyError) as exc:
        raise ShowError(f"not a TID 1500 measurement report the node can read ({exc})") from exc
    lines = [RESEARCH_USE, "", f"{_sop_name(sr)}: TID 1500 Imaging Measurement Report"]
    lines += _identification(sr, phi)
    lines += ["", "Algorithm (TID 4019)"]
    for algorithm in algorithms(sr):
        lines += [f"  {key:<13} {algorithm[key]}" for key in TID_4019.values() if key in algorithm]
    lines += ["", "Contributing equipment", *_equipment(sr)]
    lines += ["", "Statements", *(f"  {text}" for text in _statements(sr))]
    images = source_images(sr)
    lines += ["", "Source images"]
    for image in images:
        name = UID(image.sop_class).name if image.sop_class else ""
        lines.append(f"  {image.uid}  {image.label or '(laterality/view not stated)'}  {name}")
    segs = list(dict.fromkeys(group_values(g).seg_uid for g in [*per_roi, *fused]))
    if segs:
        lines += ["", "Input SEG", *(f"  {uid}" for uid in segs)]
    by_uid = {image.uid: image for image in images}
    lines += ["", f"Findings per ROI ({len(per_roi)})"]
    for group in per_roi:
        lines += _finding_lines(group, by_uid)
    if fused:
        lines += ["", f"Findings per lesion, views fused ({len(fused)})"]
        for group in fused:
            lines += _finding_lines(group, by_uid)
    return "\n".join(lines)


# --- Secondary Capture and heatmap SEG ------------------------------------------------------


def describe_image(ds: Dataset, *, phi: bool = False) -> str:
    """What a person needs to know of an SC or a heatmap SEG before opening the picture."""
    lines = [RESEARCH_USE, "", _sop_name(ds)]
    lines += _identification(ds, phi)
    lines.append(
        f"  Size                {ds.get('Columns', '?')} x {ds.get('Rows', '?')} px, "
        f"{ds.get('PhotometricInterpretation', '')}"
        + (f", {ds.SegmentationType}" if "SegmentationType" in ds else "")
    )
    sources = [str(ref.ReferencedSOPInstanceUID) for ref in ds.get("SourceImageSequence", [])]
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        sources += [str(r.ReferencedSOPInstanceUID) for r in series.ReferencedInstanceSequence]
    lines += [f"  Source image        {uid}" for uid in dict.fromkeys(sources)]
    for segment in ds.get("SegmentSequence", []) or []:
        tracking = segment.get("TrackingID", "")
        lines.append(
            f"  Segment {segment.SegmentNumber}           {segment.get('SegmentLabel', '')}"
            + (f" (tracking {tracking}, UID {segment.get('TrackingUID', '')})" if tracking else "")
        )
    for keyword, label in (("DerivationDescription", "Derivation"), ("ImageComments", "Comments")):
        if keyword in ds:
            lines.append(f"  {label:<19} {ds.get(keyword)}")
    lines += ["", "Contributing equipment", *_equipment(ds)]
    return "\n".join(lines)


def _to_uint8(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values to 8 bits over their range (an SC is 8-bit RGB already)."""
    if pixels.dtype == np.uint8:
        out = pixels
    else:
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        out = ((pixels.astype(np.float64) - low) * scale).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return out


def heatmap_fraction(ds: Dataset) -> np.ndarray:
    """The SEG's map in [0, 1] over the source image's grid: the maximum over its segments
    (one frame per ROI on the image; the node writes one SEG per source image)."""
    frames = ds.pixel_array.astype(np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    kind = str(ds.get("SegmentationType", ""))
    if kind == "FRACTIONAL":
        frames = frames / float(ds.get("MaximumFractionalValue", 255) or 255)
    else:  # BINARY, or LABELMAP (segment numbers): drawn where a segment is
        frames = (frames > 0).astype(np.float32)
    return np.clip(frames.max(axis=0), 0.0, 1.0)


def colour_map(fraction: np.ndarray) -> np.ndarray:
    """RGB uint8 of ``fraction`` (0 blue ... 1 red), the colours of the node's SC overlay."""
    from matplotlib import colormaps

    rgba = colormaps[HEATMAP_COLORMAP](fraction)
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def render_png(ds: Dataset, out: Path) -> tuple[int, int]:
    """Write ``ds`` (an SC or a heatmap SEG) as a PNG; returns its (rows, columns)."""
    from PIL import Image

    if is_heatmap_seg(ds):
        pixels = colour_map(heatmap_fraction(ds))
    else:
        pixels = _to_uint8(ds.pixel_array, ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(out, format="PNG")
    return int(pixels.shape[0]), int(pixels.shape[1])


def show(path: Path, *, phi: bool = False, png: Path | None = None) -> str:
    """The text `molsub show` prints; writes ``png`` for an SC or a heatmap SEG."""
    ds = read_dicom(path)
    if is_sr(ds):
        if png is not None:
            raise ShowError(
                f"{path}: --png renders a Secondary Capture or a heatmap SEG, not an SR"
            )
        return format_sr(ds, phi=phi)
    if str(ds.get("SOPClassUID", "")) == SECONDARY_CAPTURE or is_heatmap_seg(ds):
        text = describe_image(ds, phi=phi)
        if png is not None:
            rows, cols = render_png(ds, png)
            text += f"\n\nwrote {png} ({cols} x {rows} px)"
        else:
            text += "\n\n(--png OUT.png renders it)"
        return text
    raise _not_a_result(path, ds)
