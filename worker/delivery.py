"""Sending recorded result objects to destinations: DICOM C-STORE or a folder.

Sending is only ever done from the result store, never from memory, so whatever fails can be
sent again later (Celery retry, or ``resend``). Deterministic result UIDs mean a receiver
replaces, rather than duplicates, an object it already has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from model.durable import atomic_write_bytes
from molsub.config import Destination, NodeConfig
from worker.result_store import FAILED, PENDING, SENT, ResultStore

log = logging.getLogger(__name__)

# Success (0x0000) and the C-STORE warnings that still mean "stored" (PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
NETWORK_TIMEOUT_S = 30.0


class DeliveryError(RuntimeError):
    """A destination did not take the objects; ``destination`` names it."""

    def __init__(self, destination: str, reason: str) -> None:
        self.destination = destination
        self.reason = reason
        super().__init__(f"destination {destination}: {reason}")


def send_to_destination(
    destination: Destination, paths: Sequence[Path], *, calling_ae: str, unit_id: str
) -> None:
    """Every object or a DeliveryError: a folder write or one association with C-STOREs."""
    if destination.is_folder:
        write_to_folder(destination, paths, unit_id=unit_id)
    else:
        store_scu(destination, paths, calling_ae=calling_ae)


def write_to_folder(destination: Destination, paths: Sequence[Path], *, unit_id: str) -> None:
    """Copy into FOLDER/<unit_id>/ atomically (a reader never sees half a file)."""
    target = Path(destination.folder) / unit_id
    try:
        for path in paths:
            atomic_write_bytes(target / path.name, path.read_bytes())
    except OSError as exc:
        raise DeliveryError(destination.name, f"cannot write to folder {target}: {exc}") from exc


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


def deliver_recorded(
    store: ResultStore,
    unit_id: str,
    destinations: Sequence[Destination],
    *,
    calling_ae: str,
    include_sent: bool = False,
) -> dict[str, str]:
    """Try every destination not yet ``sent`` (all of them with ``include_sent``).

    Returns each tried destination's new state (``sent`` or ``pending``); never raises for a
    destination's failure, which is recorded with its error.
    """
    status = store.status(unit_id)
    paths = store.object_paths(unit_id)
    outcome: dict[str, str] = {}
    for destination in destinations:
        current = status.get("destinations", {}).get(destination.name, {}).get("state")
        if current == SENT and not include_sent:
            continue
        try:
            send_to_destination(destination, paths, calling_ae=calling_ae, unit_id=unit_id)
        except (DeliveryError, OSError, RuntimeError, ValueError) as exc:
            log.warning("unit %s: delivery to %s failed: %s", unit_id, destination.name, exc)
            store.update_destination(unit_id, destination.name, PENDING, error=str(exc))
            outcome[destination.name] = PENDING
            continue
        store.update_destination(unit_id, destination.name, SENT)
        log.info("unit %s: %d objects sent to %s", unit_id, len(paths), destination.name)
        outcome[destination.name] = SENT
    return outcome


def resend(unit_id: str, config: NodeConfig, *, only_unsent: bool = False) -> dict[str, str]:
    """``molsub resend UNIT``: send the recorded results to the configured destinations again.

    Runs in the calling process (no broker needed). Destinations that still fail are left
    ``failed`` so that a later resend tries them again. Raises ResultNotFound for an unknown unit.
    """
    store = ResultStore(result_root(config))
    outcome = deliver_recorded(
        store,
        unit_id,
        config.destinations,
        calling_ae=config.node.ae_title,
        include_sent=not only_unsent,
    )
    store.mark_failed(unit_id, [name for name, state in outcome.items() if state != SENT])
    return {name: (SENT if state == SENT else FAILED) for name, state in outcome.items()}


def result_root(config: NodeConfig) -> Path:
    return Path(config.node.spool_dir) / "results"
