"""Sending recorded result objects to destinations: DICOM C-STORE or a folder.

Sending is only ever done from the result store, never from memory, so whatever fails can be
sent again later (Celery retry, or ``resend``). Deterministic result UIDs mean a receiver
replaces, rather than duplicates, an object it already has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common.settings import Destination, NodeConfig
from common.spool_layout import SpoolLayout
from worker.delivery.store import DestinationState, ResultNotFound, ResultStore
from worker.delivery.targets import DeliveryError, send_to_destination

log = logging.getLogger(__name__)


def deliver_recorded(
    store: ResultStore,
    unit_id: str,
    destinations: Sequence[Destination],
    *,
    calling_ae: str,
    include_sent: bool = False,
) -> dict[str, DestinationState]:
    """Try every destination not yet ``sent`` (all of them with ``include_sent``).

    Returns each tried destination's new state (``sent`` or ``pending``); never raises for a
    destination's failure, which is recorded with its error.
    """
    status = store.status(unit_id)
    paths = store.object_paths(unit_id)
    outcome: dict[str, DestinationState] = {}
    for destination in destinations:
        current = status.get("destinations", {}).get(destination.name, {}).get("state")
        if current == DestinationState.SENT and not include_sent:
            continue
        try:
            send_to_destination(destination, paths, calling_ae=calling_ae, unit_id=unit_id)
        except (DeliveryError, OSError, RuntimeError, ValueError) as exc:
            # The same words in the log, in status.json and (after the retries) in the unit's
            # failure reason and the deliver task's result.
            reason = (
                exc.reason if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            )
            log.warning("unit %s: delivery to %s failed: %s", unit_id, destination.name, reason)
            store.update_destination(
                unit_id, destination.name, DestinationState.PENDING, error=reason
            )
            outcome[destination.name] = DestinationState.PENDING
            continue
        store.update_destination(unit_id, destination.name, DestinationState.SENT)
        log.info("unit %s: %d objects sent to %s", unit_id, len(paths), destination.name)
        outcome[destination.name] = DestinationState.SENT
    return outcome


def resend(
    unit_id: str, config: NodeConfig, *, only_unsent: bool = False
) -> dict[str, DestinationState]:
    """``molsub resend UNIT``: send the recorded results to the configured destinations again.

    Runs in the calling process (no broker needed). Destinations that still fail are left
    ``failed`` so that a later resend tries them again. Raises ResultNotFound for an unknown unit.
    """
    store = result_store(config)
    if store.status(unit_id).get("objects") and not store.has_objects(unit_id):
        raise ResultNotFound(
            unit_id, store.root, "result objects deleted (retention_hours, or molsub purge)"
        )
    outcome = deliver_recorded(
        store,
        unit_id,
        config.destinations,
        calling_ae=config.node.ae_title,
        include_sent=not only_unsent,
    )
    store.mark_failed(
        unit_id, [name for name, state in outcome.items() if state != DestinationState.SENT]
    )
    return {
        name: (DestinationState.SENT if state == DestinationState.SENT else DestinationState.FAILED)
        for name, state in outcome.items()
    }


def result_store(config: NodeConfig) -> ResultStore:
    """The result store of the config's spool."""
    return ResultStore(SpoolLayout.at(config.node.spool_dir).results)
