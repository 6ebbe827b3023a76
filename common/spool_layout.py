"""Where things live in a spool folder, named once.

The SCP writes studies/, tmp/ and the state database; the workers write results/; the embedded
broker keeps its message files under queue/. Only this module spells those names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DB_NAME = "state.sqlite3"


@dataclass(frozen=True)
class SpoolLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> SpoolLayout:
        return cls(Path(root).resolve())

    @property
    def studies(self) -> Path:
        """Received objects: ``studies/<StudyInstanceUID>/<SOPInstanceUID>.dcm``."""
        return self.root / "studies"

    @property
    def tmp(self) -> Path:
        """Objects being received (fsynced here, then renamed into studies/)."""
        return self.root / "tmp"

    @property
    def state_db(self) -> Path:
        return self.root / STATE_DB_NAME

    @property
    def results(self) -> Path:
        """Recorded result objects and their delivery status, per unit."""
        return self.root / "results"

    @property
    def queue(self) -> Path:
        """The embedded broker's message folders (no broker server configured)."""
        return self.root / "queue"
