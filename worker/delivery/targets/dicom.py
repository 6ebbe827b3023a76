"""A DICOM destination: one association, a C-STORE per object (PS3.4 Annex B)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from common.settings import Destination
from worker.delivery.targets.base import DeliveryError

# Success (0x0000) and the C-STORE warnings that still mean "stored" (PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
NETWORK_TIMEOUT_S = 30.0


def store_scu(destination: Destination, paths: Sequence[Path], *, calling_ae: str) -> None:
    """C-STORE each file over one association, proposing each object's SOP class."""
    if not (destination.ae_title and destination.host and destination.port):
        raise DeliveryError(destination.name, "neither a folder nor ae_title + host + port")
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT_S
    contexts: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), [])
        for syntax in (
            ds.file_meta.TransferSyntaxUID,
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
        ):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = ae.associate(destination.host, int(destination.port), ae_title=destination.ae_title)
    if not assoc.is_established:
        why = (
            "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not reachable"
        )
        raise DeliveryError(destination.name, f"association with {where} {why}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(
                    destination.name,
                    f"no C-STORE response from {where} for object {ds.SOPInstanceUID}",
                )
            if code not in STORED_STATUSES:
                raise DeliveryError(
                    destination.name,
                    f"{where} refused object {ds.SOPInstanceUID}: status 0x{code:04X}",
                )
    finally:
        if assoc.is_established:
            assoc.release()
