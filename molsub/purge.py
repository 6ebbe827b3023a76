"""``molsub purge STUDY``: remove one study from the node, everywhere it keeps it.

That is the study's received objects (SPOOL/studies/<study>), its units' recorded results and
delivery records (SPOOL/results/<unit>), and its rows in the state database. What the node
already sent to its destinations is theirs, and is not touched. A unit still being processed
is not purged (its messages are in the queue and a worker would write its results again)
unless ``force``; then its queued message may still run and find nothing to read.

Safe while the node runs: SQLite serialises the writes, and files go before rows, so a purge
that is interrupted is finished by running it again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import InputError
from common.spool_layout import SpoolLayout
from common.uids import is_valid_uid
from scp.retention import SweepReport, sweep
from scp.state import StateDB


class PurgeRefused(RuntimeError):
    """The study has units in flight; the message names them."""


@dataclass
class PurgeReport:
    """What a purge removed (UIDs and counts only)."""

    study_uid: str
    objects: int = 0  # received objects deleted from SPOOL/studies
    units: list[str] = field(default_factory=list)  # units whose results and rows went
    result_objects: int = 0  # recorded result objects deleted from SPOOL/results
    result_folders: int = 0
    instance_rows: int = 0
    unit_rows: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.objects or self.result_folders or self.instance_rows or self.unit_rows)

    def lines(self, root: Path) -> list[str]:
        return [
            f"study {self.study_uid}: purged from {root}",
            f"  received objects deleted: {self.objects} (studies/{self.study_uid})",
            f"  units: {len(self.units)}" + (f" ({', '.join(self.units)})" if self.units else ""),
            f"  result folders deleted: {self.result_folders} "
            f"({self.result_objects} result object(s), status and progress records)",
            f"  state rows deleted: {self.instance_rows} object(s), {self.unit_rows} unit(s)",
            "  not touched: copies at the destinations (PACS, folders) and the node's logs "
            "(UIDs only)",
        ]


def purge_study(spool_dir: Path, study_uid: str, *, force: bool = False) -> PurgeReport:
    """Remove the study ``study_uid`` from the spool at ``spool_dir``; see the module."""
    if not is_valid_uid(study_uid):  # also what keeps the path below inside the spool
        raise InputError(study_uid, "not a valid Study Instance UID")
    layout = SpoolLayout.at(spool_dir)
    report = PurgeReport(study_uid)
    db = StateDB(layout.state_db, layout.root) if layout.state_db.exists() else None
    try:
        units = db.study_units(study_uid) if db else []
        busy = [u.unit_id for u in units if u.state.in_flight]
        if busy and not force:
            raise PurgeRefused(
                f"study {study_uid}: unit(s) {', '.join(busy)} still being processed; wait for "
                "them to end (molsub units), or purge with --force"
            )
        recorded = db.study_paths(study_uid) if db else []
        study_dir = layout.studies / study_uid
        if study_dir.is_dir():
            report.objects += sum(1 for p in study_dir.rglob("*") if p.is_file())
            shutil.rmtree(study_dir)
        for path in recorded:  # anything recorded outside the study's folder
            if path.exists():
                path.unlink()
                report.objects += 1
        for unit in units:
            folder = layout.results / unit.unit_id
            report.units.append(unit.unit_id)
            if folder.is_dir():
                report.result_objects += sum(1 for _ in folder.glob("*.dcm"))
                shutil.rmtree(folder)
                report.result_folders += 1
        if db is not None:
            report.instance_rows, report.unit_rows = db.delete_study(study_uid)
    finally:
        if db is not None:
            db.close()
    return report


def purge_expired(spool_dir: Path, retention_hours: float) -> SweepReport:
    """One retention sweep now (``molsub purge --expired``), as the running node does."""
    layout = SpoolLayout.at(spool_dir)
    if not layout.state_db.exists():
        return SweepReport()
    db = StateDB(layout.state_db, layout.root)
    try:
        return sweep(db, layout.root, retention_hours * 3600.0)
    finally:
        db.close()
