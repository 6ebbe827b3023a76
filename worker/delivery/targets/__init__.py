"""Destination kinds: a DICOM AE (C-STORE) or a folder. A new kind is a module here and a
branch in ``send_to_destination``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.settings import Destination
from worker.delivery.targets.base import DeliveryError
from worker.delivery.targets.dicom import store_scu
from worker.delivery.targets.folder import write_to_folder

__all__ = ["DeliveryError", "send_to_destination", "store_scu", "write_to_folder"]


def send_to_destination(
    destination: Destination, paths: Sequence[Path], *, calling_ae: str, unit_id: str
) -> None:
    """Every object or a DeliveryError: a folder write or one association with C-STOREs."""
    if destination.is_folder:
        write_to_folder(destination, paths, unit_id=unit_id)
    else:
        store_scu(destination, paths, calling_ae=calling_ae)
