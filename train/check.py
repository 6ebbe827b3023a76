"""`molsub dataset check`: everything that would make training fail or mislead, found up front.

Each image is read and decoded once, each ROI mask built as training will build it. Problems
name the manifest line, the case_id and the file, never header values (names, IDs, dates).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from common.errors import InputError
from model.preprocess.decode import decode_frame
from model.tasks import SUBTYPE5, TASK_NAMES, TASKS
from train.manifest import Manifest, ManifestRow, file_sha256, task_label
from train.masks import MaskError, MaskProblem, RoiMasks


class IssueKind(StrEnum):
    MISSING_FILE = "missing file"
    UNREADABLE_IMAGE = "unreadable image"
    UNREADABLE_ROI = "unreadable ROI"
    ROI_NOT_ON_IMAGE = "ROI not drawn on this image"
    GRID_MISMATCH = "mask/image grid mismatch"
    EMPTY_MASK = "empty mask"
    DUPLICATE_IMAGE = "duplicate image"
    LABEL_CONFLICT = "label conflict"
    # warnings
    LATERALITY_MISMATCH = "laterality mismatch"
    OVERLAPPING_ROWS = "overlapping rows"


_MASK_KIND = {
    MaskProblem.UNREADABLE: IssueKind.UNREADABLE_ROI,
    MaskProblem.NOT_ON_IMAGE: IssueKind.ROI_NOT_ON_IMAGE,
    MaskProblem.GRID: IssueKind.GRID_MISMATCH,
    MaskProblem.EMPTY: IssueKind.EMPTY_MASK,
}


@dataclass(frozen=True)
class Issue:
    kind: IssueKind
    message: str
    line: int | None = None
    case_id: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.case_id is not None:
            where.append(f"case {self.case_id}")
        prefix = f"{', '.join(where)}: " if where else ""
        suffix = f" [{self.path}]" if self.path is not None else ""
        return f"{prefix}{self.kind}: {self.message}{suffix}"


@dataclass(frozen=True)
class ClassCount:
    name: str
    images: int  # manifest rows of this class
    patients: int  # distinct patients with a row of this class


@dataclass
class CheckReport:
    manifest_path: Path
    manifest_sha256: str
    rows: int
    patients: int
    counts: dict[str, tuple[ClassCount, ...]]  # task name -> one entry per class, class order
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Training refuses a manifest whose report is not ok."""
        return not self.errors


ReadImage = Callable[[Path], Dataset]


def check_manifest(
    manifest: Manifest, *, progress: bool = False, read_image: ReadImage = pydicom.dcmread
) -> CheckReport:
    """Read every image and mask of ``manifest``; list what is wrong and count the classes."""
    report = CheckReport(
        manifest_path=manifest.path,
        manifest_sha256=manifest.sha256,
        rows=len(manifest.rows),
        patients=len({r.patient_id for r in manifest.rows}),
        counts=class_counts(manifest.rows),
    )
    by_image: dict[Path, list[ManifestRow]] = defaultdict(list)
    for row in manifest.rows:
        by_image[row.image_path].append(row)
    masks = RoiMasks()
    identities: dict[ManifestRow, tuple[str, str]] = {}
    for path, rows in tqdm(
        by_image.items(), desc="checking images", unit="image", disable=not progress
    ):
        identities.update(_check_image(path, rows, read_image, masks, report))
    report.errors += _duplicates(manifest.rows, identities)
    report.warnings += _overlaps(manifest.rows, identities)
    report.errors += _label_conflicts(manifest.rows)
    return report


def _check_image(
    path: Path,
    rows: Sequence[ManifestRow],
    read_image: ReadImage,
    masks: RoiMasks,
    report: CheckReport,
) -> dict[ManifestRow, tuple[str, str]]:
    """Errors of one image and its rows; (content digest, SOP Instance UID) of the good rows.

    Only rows without errors take part in the duplicate and overlap checks.
    """

    def error(kind: IssueKind, message: str, row: ManifestRow, where: Path = path) -> None:
        report.errors.append(Issue(kind, message, row.line, row.case_id, where))

    if not path.is_file():
        for row in rows:
            error(IssueKind.MISSING_FILE, "image file not found", row)
        return {}
    try:
        ds = read_image(path)
        decode_frame(ds)
    except InvalidDicomError:
        reason = "not a DICOM file"
    except InputError as exc:
        reason = exc.reason
    except Exception as exc:  # readers and decoders raise many types for one bad file
        reason = f"cannot be read ({type(exc).__name__}: {exc})"
    else:
        reason = None
    if reason is not None:
        for row in rows:
            error(IssueKind.UNREADABLE_IMAGE, reason, row)
        return {}
    identity = (file_sha256(path), str(ds.get("SOPInstanceUID", "")))
    good: dict[ManifestRow, tuple[str, str]] = {}
    for row in rows:
        if not row.roi_path.is_file():
            error(IssueKind.MISSING_FILE, "ROI file not found", row, row.roi_path)
            continue
        try:
            masks.mask(row.roi_path, ds, row.segment)
        except MaskError as exc:
            error(_MASK_KIND[exc.problem], exc.reason, row, row.roi_path)
        else:
            good[row] = identity
        header_laterality = str(ds.get("ImageLaterality", "") or "").strip().upper()
        if header_laterality in ("L", "R") and header_laterality != row.laterality.value:
            report.warnings.append(
                Issue(
                    IssueKind.LATERALITY_MISMATCH,
                    f"the manifest says {row.laterality.value}, the image's ImageLaterality "
                    "differs",
                    row.line,
                    row.case_id,
                    path,
                )
            )
    return good


def _duplicates(
    rows: Sequence[ManifestRow], identities: dict[ManifestRow, tuple[str, str]]
) -> list[Issue]:
    """Rows whose image (same bytes, or same SOP Instance UID) and segment came before."""
    issues: list[Issue] = []
    by_content: dict[tuple[str, int | None], ManifestRow] = {}
    by_uid: dict[tuple[str, int | None], ManifestRow] = {}
    for row in rows:
        if row not in identities:
            continue
        digest, uid = identities[row]
        first = by_content.get((digest, row.segment))
        same = "the same file content"
        if first is None and uid:
            first, same = by_uid.get((uid, row.segment)), f"the same SOP Instance UID {uid}"
        if first is not None:
            segment = "all segments" if row.segment is None else f"segment {row.segment}"
            issues.append(
                Issue(
                    IssueKind.DUPLICATE_IMAGE,
                    f"{same} and {segment} as line {first.line} (case {first.case_id})",
                    row.line,
                    row.case_id,
                    row.image_path,
                )
            )
            continue
        by_content[(digest, row.segment)] = row
        if uid:
            by_uid[(uid, row.segment)] = row
    return issues


def _overlaps(
    rows: Sequence[ManifestRow], identities: dict[ManifestRow, tuple[str, str]]
) -> list[Issue]:
    """A row for all segments of an image beside a row for one of them: the lesion twice."""
    union: dict[str, ManifestRow] = {}
    for row in rows:
        if row in identities and row.segment is None:
            union.setdefault(identities[row][0], row)
    return [
        Issue(
            IssueKind.OVERLAPPING_ROWS,
            f"segment {row.segment} is also inside line {first.line} (case {first.case_id}), "
            "which takes all segments of the same image",
            row.line,
            row.case_id,
            row.image_path,
        )
        for row in rows
        if row in identities
        and row.segment is not None
        and (first := union.get(identities[row][0])) is not None
    ]


def _label_conflicts(rows: Sequence[ManifestRow]) -> list[Issue]:
    """Patients whose rows (views, lesions) carry different subtypes; named by lines."""
    by_patient: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_patient[row.patient_id].append(row)
    issues = []
    for patient_rows in by_patient.values():
        subtypes = sorted({r.subtype for r in patient_rows})
        if len(subtypes) > 1:
            lines = ", ".join(f"{r.line} (case {r.case_id})" for r in patient_rows)
            names = ", ".join(SUBTYPE5.class_names[s] for s in subtypes)
            issues.append(
                Issue(
                    IssueKind.LABEL_CONFLICT,
                    f"one patient's rows disagree on the subtype ({names}): lines {lines}",
                )
            )
    return issues


def class_counts(rows: Sequence[ManifestRow]) -> dict[str, tuple[ClassCount, ...]]:
    """Per task, per class: rows (images) and distinct patients."""
    counts: dict[str, tuple[ClassCount, ...]] = {}
    for name in TASK_NAMES:
        classes = TASKS[name].class_names
        images = [0] * len(classes)
        patients: list[set[str]] = [set() for _ in classes]
        for row in rows:
            label = task_label(row, name)
            images[label] += 1
            patients[label].add(row.patient_id)
        counts[name] = tuple(
            ClassCount(c, images[i], len(patients[i])) for i, c in enumerate(classes)
        )
    return counts


def format_report(report: CheckReport) -> str:
    """The report as `molsub dataset check` prints it: counts, errors, warnings, verdict."""
    lines = [
        f"manifest {report.manifest_path} (sha256 {report.manifest_sha256[:16]})",
        f"{report.rows} rows (images), {report.patients} patients",
        "",
        f"{'task':<10}{'class':<22}{'images':>8}{'patients':>10}",
    ]
    for task, classes in report.counts.items():
        for i, count in enumerate(classes):
            name = task if i == 0 else ""
            lines.append(f"{name:<10}{count.name:<22}{count.images:>8}{count.patients:>10}")
    for title, issues in (("errors", report.errors), ("warnings", report.warnings)):
        if issues:
            lines += ["", f"{title} ({len(issues)}):", *(f"  {issue}" for issue in issues)]
    lines += ["", "OK" if report.ok else f"NOT OK: {len(report.errors)} errors"]
    return "\n".join(lines)
