"""The bodies of the three Celery tasks, bound to what they need and free of Celery.

worker/queue/app.py wraps them in tasks, routes them to their queues and adds the retry policy;
tests call them in-process. The model bundle is loaded lazily, once per worker process, and only
by the stage that needs it: prepare reads the bundle's preprocessing settings, infer loads the
networks, deliver needs no bundle at all (the bundle's description comes with the infer message).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.progress import FailureKind, ProgressFiles
from common.settings import Destination, NodeConfig
from common.units import UnitState
from worker.delivery.send import deliver_recorded, result_store
from worker.delivery.store import DestinationState, ResultStore
from worker.pipeline import BundleModel, Pipeline, read_unit_files, results_stage
from worker.queue import messages

log = logging.getLogger(__name__)

# Fault tests only: infer sleeps this many seconds first, so that a test can kill the worker
# while a unit is in inference. Unset in production.
INFER_DELAY_ENV = "MOLSUB_FAULT_INFER_DELAY_S"


@dataclass(frozen=True)
class StageHandlers:
    """prepare -> infer -> deliver for one unit, one call per stage, messages in between.

    prepare and deliver run where the spool is: they record the unit's progress (and any
    failure) in its progress.json, which the node follows. infer may run on a host without
    the spool and records nothing; deliver records ``inferred`` when its message arrives.
    """

    pipeline: Pipeline
    store: ResultStore
    progress: ProgressFiles
    destinations: tuple[Destination, ...]
    calling_ae: str

    @classmethod
    def for_config(cls, config: NodeConfig, pipeline: Pipeline | None = None) -> StageHandlers:
        """The node's handlers: its bundle (unless ``pipeline`` is given), spool and
        destinations."""
        if pipeline is None:
            pipeline = Pipeline(
                BundleModel(config.model.bundle, config.model.device),
                results_stage=results_stage(config.results),
            )
        return cls(
            pipeline,
            result_store(config),
            ProgressFiles(config.node.spool_dir),
            config.destinations,
            config.node.ae_title,
        )

    def fail(self, unit_id: str, reason: str, kind: FailureKind) -> None:
        """The unit ends ``failed``: logged with its UID, recorded for the node. Its spooled
        objects stay where they are (``molsub retry UNIT`` runs it again)."""
        log.error("unit %s failed (%s): %s", unit_id, kind, reason)
        self.progress.advance(unit_id, UnitState.FAILED, reason=reason, failure=kind)

    def finished(self, unit_id: str) -> UnitState | None:
        """The unit's final state when it already ended (a redelivered or re-offered message
        then does nothing); None when not, or where this host cannot see the spool."""
        progress = self.progress.read(unit_id)
        return progress.state if progress is not None and progress.final else None

    def done(self, unit_id: str) -> None:
        self.progress.advance(unit_id, UnitState.DONE)
        log.info("unit %s done", unit_id)

    def unsent_errors(self, unit_id: str, unsent: Sequence[str]) -> str:
        """Each destination not reached and its last error, as status.json records it."""
        destinations = self.store.status(unit_id).get("destinations", {})
        return "; ".join(f"{name}: {destinations.get(name, {}).get('error')}" for name in unsent)

    def delivery_failure(self, unit_id: str, unsent: Sequence[str], retries: int) -> str:
        """Why delivery failed, in words: each destination not reached and its last error."""
        return f"delivery failed after {retries} retries ({self.unsent_errors(unit_id, unsent)})"

    def delivery_result(
        self, unit_id: str, state: UnitState, reason: str | None = None
    ) -> dict[str, Any]:
        """The deliver task's result: how the unit ended and every destination's entry read
        back from status.json, so that the task's result and the spool cannot disagree."""
        destinations = self.store.status(unit_id).get("destinations", {})
        return {
            "unit_id": unit_id,
            "state": str(state),
            "reason": reason,
            "destinations": {
                name: {key: entry.get(key) for key in ("state", "error", "attempts")}
                for name, entry in destinations.items()
            },
        }

    def prepare(
        self, unit_id: str, seg_path: str | Path, image_paths: Sequence[str | Path]
    ) -> dict[str, Any]:
        """Spool files -> prepare message (crops + header-only datasets; no paths beyond here)."""
        try:
            seg, images = read_unit_files(unit_id, seg_path, image_paths)
            unit = self.pipeline.prepare(seg, images)
        except InputError as exc:
            self.store.record_input_error(unit_id, str(exc))
            raise
        self.progress.advance(unit_id, UnitState.PREPARED)
        log.info("unit %s prepared: %d ROI(s)", unit_id, len(unit.rois))
        return messages.prepared_message(unit_id, unit)

    def infer(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """prepare message -> deliver message (the same unit plus predictions and bundle info)."""
        messages.check_version(message)
        log.info("unit %s: infer started", message["unit_id"])
        delay = float(os.environ.get(INFER_DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        predictions, info = self.pipeline.infer(messages.decode_unit(message))
        log.info("unit %s inferred: %d prediction(s)", message["unit_id"], len(predictions))
        return {**messages.inferred_message(message, predictions, info), "inferred_at": time.time()}

    def deliver(
        self, message: Mapping[str, Any], *, reuse_recorded: bool = False
    ) -> dict[str, DestinationState]:
        """Build the result objects, record them, then try every destination not yet sent.

        With ``reuse_recorded`` (a retry) objects already recorded on this host are sent as they
        are; a retry landing on another deliver host rebuilds them (same deterministic UIDs).
        Returns each tried destination's state (``sent`` / ``pending``).
        """
        messages.check_version(message)
        unit_id = str(message["unit_id"])
        self.progress.advance(unit_id, UnitState.INFERRED, at=message.get("inferred_at"))
        if not (reuse_recorded and self.store.has_objects(unit_id)):
            unit = messages.decode_unit(message)
            predictions = messages.decode_predictions(message)
            info = messages.decode_bundle_info(message["bundle_info"])
            objects = self.pipeline.results(unit, predictions, info).all()
            self.store.record(unit_id, objects, [d.name for d in self.destinations])
            log.info("unit %s: %d result objects recorded", unit_id, len(objects))
        if not self.destinations:
            log.warning("unit %s: no destinations configured; results only recorded", unit_id)
        return deliver_recorded(self.store, unit_id, self.destinations, calling_ae=self.calling_ae)
