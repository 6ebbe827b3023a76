"""`molsub dataset from-dicom`: a manifest from a folder of MG images, their SEGs and a labels CSV.

One row per (MG image, SEG drawn on it), with the SEG's segments taken together (segment empty),
as the authors cropped all lesions of an image together. View and laterality come from the MG
header; the label from the labels CSV, keyed by study or patient. What cannot be used is left
out and said in ``warnings``, by path or UID, never by header values.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.mammo import View
from common.seg_refs import referenced_image_uids
from common.sop_classes import MG_SOP_CLASSES, SEGMENTATION
from train.labels import DEFAULT_THRESHOLDS, LabelError, Subtype, Thresholds, label_from_record
from train.manifest import (
    Laterality,
    Manifest,
    ManifestError,
    ManifestRow,
    default_case_id,
    default_lesion_id,
    relative_path,
    write_manifest,
)

log = logging.getLogger(__name__)

# Laterality codes (SCT and SNOMED-RT) and CID 4014 view codes, as worker/results/source_header
# reads them (train/ does not import worker/).
_LEFT = ("7771000", "G-A101", "80248007", "T-04030")
_RIGHT = ("24028007", "G-A100", "73056007", "T-04020")
_VIEW_BY_CODE = {
    "399162004": View.CC,
    "R-10242": View.CC,
    "399368009": View.MLO,
    "R-10226": View.MLO,
}


@dataclass(frozen=True)
class DicomManifest(Manifest):
    """The manifest written, and what was left out of it and why."""

    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Header fields


def laterality_of(image: Dataset) -> Laterality | None:
    """ImageLaterality, else Laterality, else a left/right code in the view or region codes."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(image.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return Laterality(value)
    for item in _codes(image, "ViewCodeSequence", "AnatomicRegionSequence"):
        value, meaning = str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")).lower()
        if value in _LEFT or re.search(r"\bleft\b", meaning):
            return Laterality.LEFT
        if value in _RIGHT or re.search(r"\bright\b", meaning):
            return Laterality.RIGHT
    return None


def view_of(image: Dataset) -> View | None:
    """CC or MLO from ViewPosition, else from the View Code Sequence; None for other views."""
    position = str(image.get("ViewPosition", "") or "").strip().upper()
    if position:
        return View(position) if position in set(View) else None
    for item in image.get("ViewCodeSequence", []) or []:
        found = _VIEW_BY_CODE.get(str(item.get("CodeValue", "")))
        if found:
            return found
    return None


def _codes(ds: Dataset, *keywords: str) -> Iterator[Dataset]:
    for keyword in keywords:
        for item in ds.get(keyword, []) or []:
            yield item
            yield from _codes(item, "ViewModifierCodeSequence", "AnatomicRegionModifierSequence")


def drawn_on(seg: Dataset) -> list[str]:
    """Images the SEG has frames on (per-frame derivation), else every image it references."""
    found: list[str] = []
    for group in seg.get("PerFrameFunctionalGroupsSequence", []) or []:
        for derivation in group.get("DerivationImageSequence", []) or []:
            for source in derivation.get("SourceImageSequence", []) or []:
                uid = source.get("ReferencedSOPInstanceUID")
                if uid:
                    found.append(str(uid))
    return list(dict.fromkeys(found)) or referenced_image_uids(seg)


# --------------------------------------------------------------------------------------------
# The labels CSV


@dataclass(frozen=True)
class _LabelRecord:
    line: int
    laterality: Laterality | None
    record: Mapping[str, str]


class LabelTable:
    """Labels keyed by study (a record with study_uid) or patient (one with only patient_id).

    A record with a laterality labels that breast only. Records are parsed when looked up, so a
    row for a patient without images never stops the run.
    """

    def __init__(self, path: Path, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        self.path = path
        self.thresholds = thresholds
        self._by_study: dict[str, list[_LabelRecord]] = {}
        self._by_patient: dict[str, list[_LabelRecord]] = {}
        self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(self.path, 0, None, f"cannot be read as UTF-8 text: {exc}") from exc
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if not ({"study_uid", "patient_id"} & set(header)):
            raise ManifestError(self.path, 1, "study_uid", "needs a study_uid or patient_id column")
        if "subtype" not in header and not {"er", "pr", "her2"} <= set(header):
            raise ManifestError(
                self.path, 1, "subtype", "needs a subtype column or the columns er, pr, her2, ki67"
            )
        reader.fieldnames = header
        for raw in reader:
            record = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(record.values()):
                continue
            line = reader.line_num
            try:
                laterality = (
                    Laterality.parse(record["laterality"]) if record.get("laterality") else None
                )
            except ValueError as exc:
                raise ManifestError(self.path, line, "laterality", str(exc)) from exc
            item = _LabelRecord(line, laterality, record)
            if record.get("study_uid"):
                self._by_study.setdefault(record["study_uid"], []).append(item)
            elif record.get("patient_id"):
                self._by_patient.setdefault(record["patient_id"], []).append(item)
            else:
                raise ManifestError(self.path, line, "study_uid", "study_uid and patient_id empty")

    def lookup(self, study_uid: str, patient_id: str, laterality: Laterality) -> Subtype | None:
        """The subtype for one image; None if unlabelled. LabelError if bad or contradictory."""
        for table, key in ((self._by_study, study_uid), (self._by_patient, patient_id)):
            candidates = [r for r in table.get(key, []) if r.laterality in (None, laterality)]
            if candidates:
                return self._decide(candidates)
        return None

    def _decide(self, candidates: list[_LabelRecord]) -> Subtype:
        found: dict[Subtype, int] = {}
        for item in candidates:
            try:
                found.setdefault(label_from_record(item.record, self.thresholds), item.line)
            except LabelError as exc:
                raise LabelError(f"{self.path} line {item.line}: {exc.reason}", exc.column) from exc
        if len(found) > 1:
            lines = ", ".join(f"line {line} ({s.short_name})" for s, line in found.items())
            raise LabelError(f"{self.path}: records disagree: {lines}")
        return next(iter(found))


# --------------------------------------------------------------------------------------------
# The folder


@dataclass(frozen=True)
class _Image:
    path: Path
    uid: str
    patient_id: str
    study_uid: str
    laterality: Laterality | None
    view: View | None


@dataclass(frozen=True)
class _Seg:
    path: Path
    drawn_on: tuple[str, ...]


def _scan(
    folder: Path, skip: set[Path], warnings: list[str]
) -> tuple[dict[str, _Image], list[_Seg]]:
    """MG images by SOP Instance UID and SEGs, headers only; other files are noted and skipped."""
    images: dict[str, _Image] = {}
    segs: list[_Seg] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.resolve() in skip:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            log.info("skipping %s: not a DICOM file", path)
            continue
        except Exception as exc:  # a truncated or malformed file raises many types
            warnings.append(f"{path}: unreadable DICOM ({type(exc).__name__}): left out")
            continue
        sop_class, uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
        if sop_class == SEGMENTATION:
            segs.append(_Seg(path, tuple(drawn_on(ds))))
        elif sop_class in MG_SOP_CLASSES and uid:
            if uid in images:
                warnings.append(
                    f"{path}: image {uid} is also {images[uid].path}: the first is used"
                )
                continue
            images[uid] = _Image(
                path=path,
                uid=uid,
                patient_id=str(ds.get("PatientID", "") or "").strip(),
                study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
                laterality=laterality_of(ds),
                view=view_of(ds),
            )
        else:
            log.info("skipping %s: neither an MG image nor a SEG", path)
    return images, segs


def manifest_from_dicom(
    folder: Path,
    labels_csv: Path,
    out_manifest: Path,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> DicomManifest:
    """Write the manifest of every labelled (MG, SEG) pair under ``folder``; see the module doc.

    ValueError when no pair can be used (its message lists why).
    """
    folder, labels_csv, out_manifest = Path(folder), Path(labels_csv), Path(out_manifest)
    labels = LabelTable(labels_csv, thresholds)
    warnings: list[str] = []
    images, segs = _scan(folder, {labels_csv.resolve(), out_manifest.resolve()}, warnings)
    pairing = _Pairing(images, labels, out_manifest.parent, warnings)
    rows = [row for seg in segs for uid in seg.drawn_on if (row := pairing.row(seg, uid))]
    without_seg = len(set(images) - set(pairing.paired))
    if without_seg:
        log.info(
            "%d MG images under %s have no usable SEG (not in the manifest)", without_seg, folder
        )
    if not rows:
        raise ValueError(
            f"no labelled MG image with a SEG under {folder}"
            + "".join(f"\n  {w}" for w in warnings)
        )
    for warning in warnings:
        log.warning("%s", warning)
    manifest = write_manifest(rows, out_manifest)
    return DicomManifest(manifest.rows, manifest.path, manifest.sha256, tuple(warnings))


class _Pairing:
    """Turns (SEG, image UID) pairs into rows; what it leaves out goes to ``warnings``."""

    def __init__(
        self,
        images: Mapping[str, _Image],
        labels: LabelTable,
        manifest_folder: Path,
        warnings: list[str],
    ) -> None:
        self.images, self.labels, self.folder = images, labels, manifest_folder
        self.warnings = warnings
        self.paired: dict[str, Path] = {}  # image UID -> the SEG it was paired with
        self._unlabelled: set[str] = set()

    def row(self, seg: _Seg, uid: str) -> ManifestRow | None:
        image = self.images.get(uid)
        if image is None:
            return self._leave_out(f"SEG {seg.path}: image {uid} is not under the folder")
        if uid in self.paired:
            return self._leave_out(
                f"SEG {seg.path}: image {uid} already has SEG {self.paired[uid]}: this pair"
            )
        if None in (image.view, image.laterality) or not (image.patient_id and image.study_uid):
            missing = [
                name
                for name, value in (
                    ("view CC or MLO", image.view),
                    ("laterality", image.laterality),
                    ("PatientID", image.patient_id),
                    ("StudyInstanceUID", image.study_uid),
                )
                if not value
            ]
            return self._leave_out(f"image {image.path}: no {', '.join(missing)} in the header")
        try:
            subtype = self.labels.lookup(image.study_uid, image.patient_id, image.laterality)
        except LabelError as exc:
            return self._leave_out(f"image {image.path}: {exc}")
        if subtype is None:
            if image.study_uid not in self._unlabelled:
                self._unlabelled.add(image.study_uid)
                self._leave_out(
                    f"study {image.study_uid}: no label in {self.labels.path} for it or its "
                    "patient (and this laterality)"
                )
            return None
        self.paired[uid] = seg.path
        image_rel = relative_path(self.folder, image.path)
        roi_rel = relative_path(self.folder, seg.path)
        return ManifestRow(
            case_id=default_case_id(image_rel, None),
            patient_id=image.patient_id,
            study_uid=image.study_uid,
            image_path=image.path.absolute(),
            roi_path=seg.path.absolute(),
            view=image.view,
            laterality=image.laterality,
            segment=None,
            lesion_id=default_lesion_id(image.study_uid, image.laterality, roi_rel, None),
            subtype=int(subtype),
        )

    def _leave_out(self, reason: str) -> None:
        self.warnings.append(f"{reason}: left out")
