"""A folder destination (demos, debugging, a hand-off to another program)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.durable import atomic_write_bytes
from common.settings import Destination
from worker.delivery.targets.base import DeliveryError


def write_to_folder(destination: Destination, paths: Sequence[Path], *, unit_id: str) -> None:
    """Copy into FOLDER/<unit_id>/ atomically (a reader never sees half a file)."""
    target = Path(str(destination.folder)) / unit_id
    try:
        for path in paths:
            atomic_write_bytes(target / path.name, path.read_bytes())
    except OSError as exc:
        raise DeliveryError(destination.name, f"cannot write to folder {target}: {exc}") from exc
