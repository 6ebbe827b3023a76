"""The durable spool: received objects as SPOOL/studies/<StudyInstanceUID>/<SOPInstanceUID>.dcm.

An object is first streamed into SPOOL/tmp, fsynced, then renamed into place and its folder
fsynced, so that after a success status went back to the sender the object survives a crash
or power loss, and a crash mid-write leaves only a temporary file (cleared at the next start),
never a half-written object under studies/.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom

from common.durable import fsync_directory
from common.errors import InputError
from common.inputs import non_lesion_reason, own_result_reason
from common.seg_refs import referenced_image_uids
from common.sop_classes import (
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    MG_SOP_CLASSES,
    SEGMENTATION,
)
from common.spool_layout import SpoolLayout
from common.uids import is_valid_uid
from scp.validate import check_object, quiet_parsing, read_header

log = logging.getLogger(__name__)

ACCEPTED_SOP_CLASSES = (MG_FOR_PRESENTATION, MG_FOR_PROCESSING, SEGMENTATION)

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """What the node needs to know of a received object (UIDs only, no patient data)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    referenced_uids: tuple[str, ...] = ()  # a SEG's source images; empty for images
    not_lesion: str = ""  # why a SEG is not a lesion outline (common/inputs.py); "" if it is

    @property
    def is_seg(self) -> bool:
        return self.sop_class_uid == SEGMENTATION


def read_object_info(path: Path, fallback_uid: str = "", *, min_image_side: int = 1) -> ObjectInfo:
    """The UIDs of a stored object, read with pydicom without loading its pixel data, after the
    structural checks of scp/validate.py.

    Raises InputError naming the SOP Instance UID (or ``fallback_uid``, the one in the C-STORE
    request, when the object has none) and what is wrong: InvalidObject (a subclass) when a
    check failed. An MG image with a side under ``min_image_side`` cannot hold a lesion crop
    and is refused too.
    """
    name = fallback_uid or "(unknown)"
    ds = read_header(path, name)
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    uid_for_errors = sop_uid if is_valid_uid(sop_uid) else name
    if not is_valid_uid(sop_uid):
        raise InputError(uid_for_errors, "missing or invalid SOP Instance UID")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class not in ACCEPTED_SOP_CLASSES:
        shown = sop_class if is_valid_uid(sop_class) else "(none or invalid)"
        raise InputError(sop_uid, f"SOP Class UID {shown} is not accepted here")
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    if not is_valid_uid(study_uid):
        raise InputError(sop_uid, "missing or invalid Study Instance UID")
    with quiet_parsing():
        check_object(ds, path, sop_uid, sop_class)
        if sop_class in MG_SOP_CLASSES:
            _check_image_side(ds, sop_uid, min_image_side)
        refs: tuple[str, ...] = ()
        not_lesion = ""
        if sop_class == SEGMENTATION:
            refs = tuple(referenced_image_uids(ds))
            if not refs:
                raise InputError(sop_uid, "SEG references no source image")
            if not all(is_valid_uid(r) for r in refs):
                raise InputError(sop_uid, "SEG references an invalid UID")
            not_lesion = non_lesion_reason(ds)
    return ObjectInfo(sop_uid, sop_class, study_uid, refs, not_lesion)


def _check_image_side(ds: pydicom.Dataset, sop_uid: str, min_side: int) -> None:
    """Rows and Columns at least ``min_side`` ([inputs] min_image_side: policy, not structure;
    check_object has already made sure both are there and plausible)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    if min(rows, cols) < min_side:
        raise InputError(
            sop_uid, f"image {rows}x{cols} px (rows x columns) under min_image_side {min_side} px"
        )


def own_result_of(path: Path, device_uids: Collection[str] = ()) -> str:
    """Why the object at ``path`` is a result of this node (common/inputs.py), or "" when it is
    not or cannot be read (what is unreadable is refused later, when it is spooled)."""
    with quiet_parsing():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return own_result_reason(ds, device_uids)
        except Exception:  # noqa: BLE001 - an unreadable object is judged when it is spooled
            return ""


class Spool:
    """The spool folder: durable placement of received objects and where the state lives."""

    def __init__(self, root: str | Path) -> None:
        self.layout = SpoolLayout.at(root)
        self.root = self.layout.root
        self.studies_dir = self.layout.studies
        self.tmp_dir = self.layout.tmp
        for folder in (self.root, self.studies_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def clear_temporary(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many."""
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.warning("spool: removed %d interrupted temporary file(s)", removed)
        return removed

    def object_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        if not (is_valid_uid(study_uid) and is_valid_uid(sop_instance_uid)):
            raise InputError(sop_instance_uid, "UIDs are not valid DICOM UIDs")
        return self.studies_dir / study_uid / f"{sop_instance_uid}.dcm"

    def receive(
        self,
        source: BinaryIO | Path,
        fallback_uid: str = "",
        *,
        move: bool = False,
        min_image_side: int = 1,
    ) -> tuple[Path, ObjectInfo]:
        """Put ``source`` (a DICOM file) into a synced temporary file and read its UIDs.

        With ``move`` a path is renamed into the spool when it is on the same file system
        (no copy of a large image), else streamed in 1 MiB chunks. Returns the temporary path
        (then call ``commit`` or ``discard``) and the object's UIDs; on bad input the temporary
        file is removed and InputError raised.
        """
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "r+b") as out:
                if not (move and isinstance(source, Path) and _try_rename(source, tmp)):
                    if isinstance(source, Path):
                        with source.open("rb") as src:
                            shutil.copyfileobj(src, out, _COPY_CHUNK)
                    else:
                        shutil.copyfileobj(source, out, _COPY_CHUNK)
                    out.flush()
            with tmp.open("rb") as synced:
                os.fsync(synced.fileno())
            return tmp, read_object_info(tmp, fallback_uid, min_image_side=min_image_side)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def commit(self, tmp: Path, info: ObjectInfo) -> Path:
        """Rename a synced temporary file into place and sync the folders that changed."""
        final = self.object_path(info.study_uid, info.sop_instance_uid)
        study_dir = final.parent
        created = not study_dir.exists()
        study_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for folder in [study_dir, self.tmp_dir] + ([self.studies_dir] if created else []):
            fsync_directory(folder)
        return final

    @staticmethod
    def discard(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)


def _try_rename(source: Path, target: Path) -> bool:
    """Rename when both are on one file system; False (nothing done) when they are not."""
    try:
        os.replace(source, target)
    except OSError:
        return False
    return True
