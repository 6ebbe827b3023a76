"""The training manifest: one CSV row per (image, lesion ROI) with its subtype label.

Columns: patient_id, study_uid, image_path, roi_path, view, laterality, then ``subtype`` or the
markers er, pr, her2, ki67 (train/labels.py); optional segment, lesion_id, case_id. Other
columns are ignored. Paths are relative to the manifest's folder. docs/training-data.md has
the defaults of the optional columns and why.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from common.durable import atomic_write_bytes
from common.mammo import View
from model.tasks import SUBTYPE5, SUBTYPE_TO_BINARY, TASKS, TaskSpec
from train.labels import (
    DEFAULT_THRESHOLDS,
    REQUIRED_MARKER_COLUMNS,
    LabelError,
    Subtype,
    Thresholds,
    label_from_record,
)
from train.masks import RoiKind, roi_kind

REQUIRED_COLUMNS = ("patient_id", "study_uid", "image_path", "roi_path", "view", "laterality")
WRITTEN_COLUMNS = (*REQUIRED_COLUMNS, "subtype", "segment", "lesion_id", "case_id")

_T = TypeVar("_T")


class ManifestError(ValueError):
    """A malformed manifest; names the file, the line and the column."""

    def __init__(self, path: Path, line: int, column: str | None, reason: str) -> None:
        self.path, self.line, self.column, self.reason = path, line, column, reason
        where = f"{path}, line {line}" + (f", column {column}" if column else "")
        super().__init__(f"{where}: {reason}")


class Laterality(StrEnum):
    LEFT = "L"
    RIGHT = "R"

    @classmethod
    def parse(cls, value: str) -> Laterality:
        text = value.strip().upper()
        text = {"LEFT": "L", "RIGHT": "R"}.get(text, text)
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"laterality {value!r} is not L or R") from None


@dataclass(frozen=True)
class ManifestRow:
    """One training example; ``subtype`` indexes ``model.tasks.SUBTYPE5.class_names``."""

    case_id: str
    patient_id: str
    study_uid: str
    image_path: Path  # absolute
    roi_path: Path  # absolute
    view: View
    laterality: Laterality
    segment: int | None  # SEG segment number or label value; None = all of them together
    lesion_id: str
    subtype: int
    line: int = field(default=0, compare=False)  # line in the manifest file (0: not read)


@dataclass(frozen=True)
class Manifest:
    rows: tuple[ManifestRow, ...]
    path: Path
    sha256: str  # of the file's bytes: names exactly what a model was trained on


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content, read in chunks (mammograms are tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def task_label(row: ManifestRow, task: str | TaskSpec) -> int:
    """The row's class index for ``task`` (luminal, her2, tn, subtype5) in the networks' order."""
    name = task.name if isinstance(task, TaskSpec) else task
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    if name == SUBTYPE5.name:
        return row.subtype
    return SUBTYPE_TO_BINARY[row.subtype][name]


# --------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: Path, *, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Manifest:
    """Parse and validate every row; ManifestError names the first bad line and column."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(path, 0, None, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(path, 1, None, "is not UTF-8 text") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    _check_header(path, header)
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ManifestError(
                path, line, None, f"has {len(values)} fields, the header {len(header)}"
            )
        row = _row(path, line, dict(zip(header, values, strict=True)), thresholds)
        if row.case_id in seen:
            raise ManifestError(
                path,
                line,
                "case_id",
                f"case_id {row.case_id!r} is already on line {seen[row.case_id]} "
                "(the same image and segment twice? give distinct case_id values if intended)",
            )
        seen[row.case_id] = line
        rows.append(row)
    if not rows:
        raise ManifestError(path, 2, None, "has no rows")
    return Manifest(tuple(rows), path, hashlib.sha256(data).hexdigest())


def _check_header(path: Path, header: list[str]) -> None:
    if not header:
        raise ManifestError(path, 1, None, "is empty (no header line)")
    for name in header:
        if name and header.count(name) > 1:
            raise ManifestError(path, 1, name, "column appears twice")
    for name in REQUIRED_COLUMNS:
        if name not in header:
            raise ManifestError(path, 1, name, "required column is missing")
    if "subtype" not in header and not all(c in header for c in REQUIRED_MARKER_COLUMNS):
        raise ManifestError(
            path, 1, "subtype", "needs a subtype column or the marker columns er, pr, her2, ki67"
        )


def _row(path: Path, line: int, record: Mapping[str, str], thresholds: Thresholds) -> ManifestRow:
    folder = path.parent

    def required(column: str) -> str:
        value = record[column].strip()
        if not value:
            raise ManifestError(path, line, column, "is empty")
        return value

    def parsed(column: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(required(column))
        except ValueError as exc:
            raise ManifestError(path, line, column, str(exc)) from exc

    view, laterality = parsed("view", parse_view), parsed("laterality", Laterality.parse)
    try:
        subtype = label_from_record(record, thresholds)
    except LabelError as exc:
        raise ManifestError(path, line, exc.column, exc.reason) from exc
    image_rel = relative_path(folder, required("image_path"))
    roi_rel = relative_path(folder, required("roi_path"))
    segment = _segment(path, line, record.get("segment"))
    study_uid = required("study_uid")
    return ManifestRow(
        case_id=(record.get("case_id") or "").strip() or default_case_id(image_rel, segment),
        patient_id=required("patient_id"),
        study_uid=study_uid,
        image_path=_absolute(folder, image_rel),
        roi_path=_absolute(folder, roi_rel),
        view=view,
        laterality=laterality,
        segment=segment,
        lesion_id=(record.get("lesion_id") or "").strip()
        or default_lesion_id(study_uid, laterality, roi_rel, segment),
        subtype=int(subtype),
        line=line,
    )


def parse_view(value: str) -> View:
    """CC or MLO (case ignored): the views the paper trained on."""
    try:
        return View(value.strip().upper())
    except ValueError:
        raise ValueError(f"view {value!r} is not one of {', '.join(View)}") from None


def _segment(path: Path, line: int, text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ManifestError(path, line, "segment", f"{text!r} is not a positive whole number")
    return int(text)


def relative_path(folder: Path, path: str | Path) -> str:
    """``path`` as a manifest in ``folder`` names it: relative, '/'-separated, normalised."""
    absolute = os.path.normpath(os.path.abspath(Path(folder) / Path(path)))
    return Path(os.path.relpath(absolute, os.path.abspath(folder))).as_posix()


def _absolute(folder: Path, relative: str) -> Path:
    return Path(os.path.normpath(Path(os.path.abspath(folder)) / relative))


def default_case_id(image_rel: str, segment: int | None) -> str:
    """The image's path relative to the manifest, and ``#segment`` when one is chosen."""
    return image_rel if segment is None else f"{image_rel}#{segment}"


def default_lesion_id(
    study_uid: str, laterality: Laterality, roi_rel: str, segment: int | None
) -> str:
    """One lesion per breast per study; a SEG's segments are lesions of that SEG.

    A SEG's path is part of it (segment numbers count within one SEG); a mask file's is not:
    ITK-SNAP writes one file per image, and the CC and MLO files show the same lesion.
    """
    parts = [study_uid, laterality.value]
    if roi_kind(Path(roi_rel)) is RoiKind.SEG:
        parts.append(roi_rel)
    if segment is not None:
        parts.append(str(segment))
    return "/".join(parts)


# --------------------------------------------------------------------------------------------
# Writing


def write_manifest(rows: Iterable[ManifestRow], path: Path) -> Manifest:
    """Write ``rows`` (paths relative to ``path``'s folder, every column explicit), atomically.

    Returns the manifest as read back, so its digest is that of the bytes on disk.
    """
    path = Path(path)
    folder = Path(os.path.abspath(path.parent))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(WRITTEN_COLUMNS)
    for row in rows:
        writer.writerow(
            (
                row.patient_id,
                row.study_uid,
                relative_path(folder, row.image_path),
                relative_path(folder, row.roi_path),
                row.view.value,
                row.laterality.value,
                Subtype(row.subtype).short_name,
                "" if row.segment is None else str(row.segment),
                row.lesion_id,
                row.case_id,
            )
        )
    atomic_write_bytes(path, out.getvalue().encode("utf-8"))
    return read_manifest(path)
