"""The retention policy: a unit's spooled objects go ``retention_hours`` after its delivery.

A unit is delivered when it is ``done`` (results recorded and sent to every destination). Then
its SEG and images are deleted from SPOOL/studies, unless another unit still needs one (a unit
not done, or done more recently) or one was sent again within the retention time (a new SEG
may be on its way), and so are its recorded result objects under SPOOL/results
(status.json, which holds UIDs and delivery outcomes only, stays as the record). The state
database keeps the unit's row (UIDs and times) and drops the objects' rows. Failed and
timed-out units keep everything: ``molsub retry`` needs their objects.

Files go before rows: a crash in between leaves rows whose files are gone, and the next sweep
finishes the job, never a file that no row leads to.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.logs import LogStage, log_context
from common.spool_layout import SpoolLayout
from common.units import Unit
from scp.state import StateDB

log = logging.getLogger(__name__)

HOUR_S = 3600.0
# A sweep at least this often (and no more often than every MIN_SWEEP_S): a unit's objects
# outlive its retention time by at most this much.
MAX_SWEEP_S = 600.0
MIN_SWEEP_S = 1.0


@dataclass
class SweepReport:
    """What one sweep removed (counts and unit ids: no patient data)."""

    units: list[str] = field(default_factory=list)  # the units something was deleted for
    objects: int = 0
    result_objects: int = 0
    kept_shared: int = 0


def sweep(
    db: StateDB, spool_root: Path, retention_s: float, now: float | None = None
) -> SweepReport:
    """Delete what retention says is due at ``now``; a no-op for ``retention_s`` <= 0."""
    report = SweepReport()
    if retention_s <= 0:
        return report
    now = time.time() if now is None else now
    layout = SpoolLayout.at(spool_root)
    cutoff = now - retention_s
    due = db.delivered_before(cutoff)
    if not due:
        return report
    in_use = db.uids_to_keep([u.unit_id for u in due], received_after=cutoff)
    removed: set[str] = set()
    for unit in due:
        deleted = remove_result_objects(layout, unit.unit_id)
        report.result_objects += deleted
        for uid, path in _objects(unit):
            if uid in in_use:
                report.kept_shared += 1
                continue
            path.unlink(missing_ok=True)
            _remove_empty(path.parent, layout.studies)
            removed.add(uid)
            deleted += 1
        if deleted:
            report.units.append(unit.unit_id)
    report.objects = len(removed)
    db.forget_instances(removed)
    if not report.units:
        return report  # only objects other units still need: nothing to say
    log.info(
        "retention: %d unit(s) delivered over %g h ago: %d spooled object(s) and %d result "
        "object(s) deleted, %d kept (other units, or received again since)",
        len(report.units),
        retention_s / HOUR_S,
        report.objects,
        report.result_objects,
        report.kept_shared,
    )
    return report


def remove_result_objects(layout: SpoolLayout, unit_id: str) -> int:
    """Delete a unit's recorded result objects (SPOOL/results/<unit>/*.dcm); returns how many."""
    folder = layout.results / unit_id
    if not folder.is_dir():
        return 0
    count = 0
    for path in folder.glob("*.dcm"):
        path.unlink(missing_ok=True)
        count += 1
    return count


def _objects(unit: Unit) -> list[tuple[str, Path]]:
    """The unit's spooled objects that are still recorded: (SOP Instance UID, path)."""
    pairs = [(unit.seg_uid, unit.seg_path)] if unit.seg_path else []
    by_name = {p.stem: p for p in unit.image_paths}
    pairs += [(uid, by_name[uid]) for uid in unit.referenced_uids if uid in by_name]
    return pairs


def _remove_empty(folder: Path, stop: Path) -> None:
    """Remove a study folder left empty (not ``stop`` itself, nor anything outside it)."""
    if folder != stop and folder.parent == stop:
        with contextlib.suppress(OSError):  # not empty: other objects of the study remain
            folder.rmdir()


class RetentionSweeper:
    """Runs ``sweep`` in a daemon thread, at start and then every ``interval_s``."""

    def __init__(
        self,
        db: StateDB,
        spool_root: Path,
        retention_s: float,
        *,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.spool_root = spool_root
        self.retention_s = retention_s
        self.interval_s = interval_s or min(MAX_SWEEP_S, max(MIN_SWEEP_S, retention_s / 10))
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="molsub-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with log_context(stage=LogStage.RETENTION):
                try:
                    sweep(self.db, self.spool_root, self.retention_s, self.clock())
                except Exception:  # a full disk, a locked database: try again at the next sweep
                    log.exception("retention sweep failed; trying again in %g s", self.interval_s)
            self._stop.wait(self.interval_s)
