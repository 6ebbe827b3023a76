"""The dispatcher: hands ready units to the queue, follows them to done or failed, and closes
units that never complete.

It is the reading side of the outbox: the SCP marks a unit ready in the transaction that stores
its last object; this thread calls ``enqueue(unit)`` and only then marks it enqueued. A crash
between the two re-offers the unit at the next start, so ``enqueue`` must be idempotent (the
Celery side uses the unit id as task id). Workers report how far a unit got in its
progress.json (common/progress.py); each round moves the units in flight accordingly, so the
database is written by this process only.

A worker that dies takes its message with it (the embedded broker deletes a message file when
a worker takes it; Redis hands it back only after the visibility timeout). So each round also
looks for units in flight whose progress has not moved for ``Stall.timeout_s`` and offers them
to the queue again, ``Stall.max_offers`` times at most; then the unit ends ``failed`` with the
reason. Results have deterministic UIDs and the workers skip a unit already finished, so a unit
offered twice is at most processed twice and its objects replaced, never duplicated.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.logs import LogStage, log_context
from common.progress import FailureKind, ProgressFiles
from common.settings import MissingImagesPolicy
from common.units import Unit, UnitState
from scp.state import StateDB

log = logging.getLogger(__name__)

EnqueueFn = Callable[[Unit], None]
# Told of each unit that ended (done, failed, timed_out), as re-read from the database with its
# times and detail: molsub/metrics.py counts it. Must not raise (a failure is only logged).
UnitEndFn = Callable[[Unit], None]


@dataclass(frozen=True)
class Stall:
    """When a unit in flight counts as lost ([queue] stall_timeout_s, max_redeliveries)."""

    timeout_s: float
    max_offers: int


def _about(unit: Unit) -> contextlib.AbstractContextManager[None]:
    """What the dispatcher logs about ``unit`` carries its UID and the stage (common/logs.py)."""
    return log_context(unit=unit.unit_id, stage=LogStage.DISPATCH)


class Dispatcher:
    """A background thread polling the state database (and woken at once when a unit is ready)."""

    def __init__(
        self,
        db: StateDB,
        enqueue: EnqueueFn,
        study_timeout_s: float,
        poll_s: float = 1.0,
        progress: ProgressFiles | None = None,
        missing_images: MissingImagesPolicy = MissingImagesPolicy.TIMEOUT,
        stall: Stall | None = None,
        on_unit_end: UnitEndFn | None = None,
    ) -> None:
        self.db = db
        self.on_unit_end = on_unit_end
        self.progress = progress
        self.missing_images = missing_images
        self.enqueue = enqueue
        self.study_timeout_s = study_timeout_s
        self.poll_s = poll_s
        # None: no sweep. `molsub serve` sets it once started (the SCP builds the dispatcher).
        self.stall = stall
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="molsub-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wake(self) -> None:
        """A unit became ready: dispatch now rather than at the next poll."""
        self._wake.set()

    def run_once(self, now: float | None = None) -> list[str]:
        """One round: time out stale units, enqueue ready ones; returns the ids enqueued."""
        now = time.time() if now is None else now
        fail = self.missing_images is MissingImagesPolicy.FAIL
        for unit in self.db.expire_waiting(self.study_timeout_s, now, fail=fail):
            with _about(unit):
                log.warning(
                    "unit %s %s: SEG %s still misses image(s) %s after %g s; nothing sent",
                    unit.unit_id,
                    "failed" if fail else "timed out",
                    unit.seg_uid,
                    ", ".join(unit.missing_uids) or "(none)",
                    self.study_timeout_s,
                )
                self._ended(unit)
        self.follow_progress()
        self.sweep_stalled(now)
        enqueued = []
        for unit in self.db.ready_units():
            with _about(unit):
                if self._stop.is_set():
                    break
                try:
                    self.enqueue(unit)
                except Exception:
                    # The unit stays ready and is offered again at the next round.
                    log.exception("unit %s: enqueue failed; will retry", unit.unit_id)
                    break
                if self.db.mark_enqueued(unit.unit_id):
                    log.info("unit %s enqueued (%d images)", unit.unit_id, len(unit.image_paths))
                    enqueued.append(unit.unit_id)
        return enqueued

    def follow_progress(self) -> list[Unit]:
        """Move every unit in flight to what its workers reported; returns those that moved."""
        if self.progress is None:
            return []
        moved = []
        for unit in self.db.in_flight_units():
            with _about(unit):
                progress = self.progress.read(unit.unit_id)
                if progress is None or progress.state == unit.state:
                    continue
                if not self.db.record_progress(unit.unit_id, progress):
                    continue
                if progress.failure is not None:
                    log.error(
                        "unit %s failed (%s): %s", unit.unit_id, progress.failure, progress.reason
                    )
                elif progress.final:
                    log.info("unit %s done", unit.unit_id)
                if progress.final:
                    self._ended(self.db.get_unit(unit.unit_id))
                moved.append(unit)
        return moved

    def last_activity(self, unit: Unit) -> float:
        """When the unit last moved: its state in the database, or a worker writing its
        progress.json or status.json (each delivery attempt does)."""
        last = max([unit.updated_at, *unit.times.values()])
        if self.progress is not None:
            folder = self.progress.path(unit.unit_id).parent
            for name in ("progress.json", "status.json"):
                with contextlib.suppress(OSError):  # not written (yet)
                    last = max(last, (folder / name).stat().st_mtime)
        return last

    def sweep_stalled(self, now: float | None = None) -> list[str]:
        """Offer again each unit in flight with no progress for the stall timeout; fail it
        once its offers are spent. Returns the ids offered again."""
        if self.stall is None:
            return []
        now = time.time() if now is None else now
        offered = []
        for unit in self.db.in_flight_units():
            with _about(unit):
                if self._stop.is_set():
                    break
                idle = now - self.last_activity(unit)
                if idle < self.stall.timeout_s:
                    continue
                offers = self.db.offers(unit.unit_id)
                if offers >= self.stall.max_offers:
                    self._fail_stalled(unit, idle, offers)
                    continue
                try:
                    self.enqueue(unit)
                except Exception:
                    log.exception("unit %s: offering it again failed; will retry", unit.unit_id)
                    break
                detail = (
                    f"no progress for {idle:.0f} s in state {unit.state}: offered to the queue "
                    f"again ({offers + 1} of {self.stall.max_offers})"
                )
                if self.db.mark_reoffered(unit.unit_id, detail, now):
                    log.warning("unit %s %s", unit.unit_id, detail)
                    offered.append(unit.unit_id)
        return offered

    def _fail_stalled(self, unit: Unit, idle: float, offers: int) -> None:
        reason = (
            f"no progress for {idle:.0f} s in state {unit.state} after {offers} re-offer(s): "
            "a worker died or a stage took longer than [queue] stall_timeout_s "
            "(`molsub retry` runs it again)"
        )
        if self.progress is not None:
            # Workers skip a unit whose progress is final: a late run cannot undo this.
            try:
                self.progress.advance(
                    unit.unit_id, UnitState.FAILED, reason=reason, failure=FailureKind.TRANSIENT
                )
            except OSError as exc:
                log.warning("unit %s: progress.json not written (%s)", unit.unit_id, exc)
        if self.db.set_state(unit.unit_id, UnitState.FAILED, f"{FailureKind.TRANSIENT}: {reason}"):
            log.error("unit %s failed: %s", unit.unit_id, reason)
            self._ended(self.db.get_unit(unit.unit_id))

    def _ended(self, unit: Unit | None) -> None:
        """Tell ``on_unit_end`` that ``unit`` ended; its failure never stops a round."""
        if unit is None or self.on_unit_end is None:
            return
        try:
            self.on_unit_end(unit)
        except Exception:
            log.exception("unit %s: the unit-end callback failed", unit.unit_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with log_context(stage=LogStage.DISPATCH):
                try:
                    self.run_once()
                except Exception:
                    log.exception("dispatcher round failed; retrying")
            self._wake.wait(self.poll_s)
