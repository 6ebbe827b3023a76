"""The dispatcher: hands ready units to the queue, follows them to done or failed, and closes
units that never complete.

It is the reading side of the outbox: the SCP marks a unit ready in the transaction that stores
its last object; this thread calls ``enqueue(unit)`` and only then marks it enqueued. A crash
between the two re-offers the unit at the next start, so ``enqueue`` must be idempotent (the
Celery side uses the unit id as task id). Workers report how far a unit got in its
progress.json (common/progress.py); each round moves the units in flight accordingly, so the
database is written by this process only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.progress import ProgressFiles
from common.settings import MissingImagesPolicy
from common.units import Unit
from scp.state import StateDB

log = logging.getLogger(__name__)

EnqueueFn = Callable[[Unit], None]


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
    ) -> None:
        self.db = db
        self.progress = progress
        self.missing_images = missing_images
        self.enqueue = enqueue
        self.study_timeout_s = study_timeout_s
        self.poll_s = poll_s
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
            log.warning(
                "unit %s %s: SEG %s still misses image(s) %s after %g s; nothing sent",
                unit.unit_id,
                "failed" if fail else "timed out",
                unit.seg_uid,
                ", ".join(unit.missing_uids) or "(none)",
                self.study_timeout_s,
            )
        self.follow_progress()
        enqueued = []
        for unit in self.db.ready_units():
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
            moved.append(unit)
        return moved

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:
                log.exception("dispatcher round failed; retrying")
            self._wake.wait(self.poll_s)
