"""Durable record of every unit's result objects and of their delivery to each destination.

Layout: ``SPOOL/results/<unit_id>/<SOPInstanceUID>.dcm`` plus ``status.json``. Objects are
written (atomically, fsynced) before any send is tried, so a refused store or a crash never
loses a result; ``molsub resend UNIT`` sends what is recorded here again.

Destination states: ``pending`` (not sent yet, or retrying), ``sent``, ``failed`` (retries
exhausted; kept for resend). A unit whose input was unusable is recorded with
``state: "input_error"`` and its reason.
"""

from __future__ import annotations

import fcntl
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from common.durable import atomic_write_bytes

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"


class DestinationState(StrEnum):
    PENDING = "pending"  # not sent yet, or retrying
    SENT = "sent"
    FAILED = "failed"  # retries exhausted; kept for resend


class ResultState(StrEnum):
    RECORDED = "recorded"  # result objects written
    INPUT_ERROR = "input_error"  # the unit's input was unusable; ``error`` says why


SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class ResultNotFound(LookupError):
    """No result is recorded for the unit (never processed here, or another spool)."""

    def __init__(self, unit_id: str, root: Path, why: str = "") -> None:
        self.unit_id = unit_id
        super().__init__(f"unit {unit_id}: {why or 'no result recorded'} under {root}")


def dataset_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class ResultStore:
    """Results of units under ``root`` (normally SPOOL/results)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def unit_dir(self, unit_id: str) -> Path:
        if not SAFE_NAME.match(unit_id) or unit_id.startswith("."):
            raise ValueError(f"unit id {unit_id!r} is not usable as a directory name")
        return self.root / unit_id

    @contextmanager
    def _locked(self, unit_id: str) -> Iterator[Path]:
        """Serialise status updates of one unit across processes (deliver and resend)."""
        directory = self.unit_dir(unit_id)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield directory
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record(
        self, unit_id: str, objects: Sequence[Dataset], destinations: Iterable[str]
    ) -> list[Path]:
        """Write the objects; destinations already ``sent`` the very same objects stay sent."""
        objects_meta = [
            {
                "file": f"{ds.SOPInstanceUID}.dcm",
                "sop_class_uid": str(ds.SOPClassUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "modality": str(ds.get("Modality", "")),
            }
            for ds in objects
        ]
        with self._locked(unit_id) as directory:
            paths = []
            for ds, meta in zip(objects, objects_meta, strict=True):
                path = directory / meta["file"]
                atomic_write_bytes(path, dataset_bytes(ds))
                paths.append(path)
            keep = {meta["file"] for meta in objects_meta}
            for stale in directory.glob("*.dcm"):
                if stale.name not in keep:  # another bundle made other objects: they replace
                    stale.unlink()
            old = self._read(directory)
            same_objects = old.get("objects") == objects_meta
            old_dest = old.get("destinations", {})
            dest_state = {}
            for name in destinations:
                previous = old_dest.get(name)
                if same_objects and previous and previous["state"] == DestinationState.SENT:
                    dest_state[name] = previous
                else:
                    dest_state[name] = _dest_entry(DestinationState.PENDING)
            status = {
                "unit_id": unit_id,
                "state": ResultState.RECORDED,
                "recorded": _now(),
                "objects": objects_meta,
                "destinations": dest_state,
            }
            self._write(directory, status)
        return paths

    def record_input_error(self, unit_id: str, reason: str) -> None:
        with self._locked(unit_id) as directory:
            status = self._read(directory)
            status.update(
                {
                    "unit_id": unit_id,
                    "state": ResultState.INPUT_ERROR,
                    "error": reason,
                    "updated": _now(),
                }
            )
            self._write(directory, status)

    def status(self, unit_id: str) -> dict[str, Any]:
        directory = self.unit_dir(unit_id)
        if not (directory / STATUS_FILE).is_file():
            raise ResultNotFound(unit_id, self.root)
        return self._read(directory)

    def has_objects(self, unit_id: str) -> bool:
        try:
            status = self.status(unit_id)
        except ResultNotFound:
            return False
        directory = self.unit_dir(unit_id)
        objects = status.get("objects") or []
        return bool(objects) and all((directory / o["file"]).is_file() for o in objects)

    def object_paths(self, unit_id: str) -> list[Path]:
        status = self.status(unit_id)
        directory = self.unit_dir(unit_id)
        return [directory / o["file"] for o in status.get("objects", [])]

    def update_destination(
        self, unit_id: str, name: str, state: DestinationState, error: str | None = None
    ) -> dict[str, Any]:
        """Record one attempt's outcome; returns the destination's entry."""
        with self._locked(unit_id) as directory:
            status = self._read(directory)
            if "objects" not in status:
                raise ResultNotFound(unit_id, self.root)
            entry = status.setdefault("destinations", {}).get(name) or _dest_entry(
                DestinationState.PENDING
            )
            entry.update({"state": state, "error": error, "updated": _now()})
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
            status["destinations"][name] = entry
            self._write(directory, status)
            return entry

    def mark_failed(self, unit_id: str, names: Iterable[str]) -> None:
        """Retries exhausted: keep the last error, set ``failed`` (resend picks it up)."""
        with self._locked(unit_id) as directory:
            status = self._read(directory)
            for name in names:
                entry = status.setdefault("destinations", {}).setdefault(
                    name, _dest_entry(DestinationState.PENDING)
                )
                if entry["state"] != DestinationState.SENT:
                    entry.update({"state": DestinationState.FAILED, "updated": _now()})
            self._write(directory, status)

    @staticmethod
    def _read(directory: Path) -> dict[str, Any]:
        path = directory / STATUS_FILE
        if not path.is_file():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    @staticmethod
    def _write(directory: Path, status: dict[str, Any]) -> None:
        text = json.dumps(status, indent=2, sort_keys=True)
        atomic_write_bytes(directory / STATUS_FILE, text.encode("utf-8"))


def _dest_entry(state: DestinationState) -> dict[str, Any]:
    return {"state": state, "attempts": 0, "error": None, "updated": _now()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
