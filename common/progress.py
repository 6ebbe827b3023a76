"""How far a unit got in the workers, written by them and read by the node.

Workers on other hosts must not open the node's SQLite file. The workers that see the spool
(prepare, deliver, and the failure reports of infer) write one small JSON file per unit,
``SPOOL/results/<unit>/progress.json``, atomically; the node's dispatcher reads it for every
unit still in flight and moves the unit's state in the database. A failure carries its kind
and a reason an admin can read (no patient data: UIDs and keywords only).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from common.durable import atomic_write_bytes
from common.spool_layout import SpoolLayout
from common.units import UnitState

PROGRESS_FILE = "progress.json"


class FailureKind(StrEnum):
    """Permanent: the input cannot be used (retrying cannot help). Transient: the destination,
    a worker or memory failed, and retries with backoff were spent."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"


@dataclass(frozen=True)
class Progress:
    """The furthest stage a unit reached in the workers, when each was reached, and why it
    failed (if it did)."""

    state: UnitState
    at: dict[str, float] = field(default_factory=dict)  # state -> epoch seconds
    reason: str = ""
    failure: FailureKind | None = None

    @property
    def final(self) -> bool:
        return self.state in (UnitState.DONE, UnitState.FAILED)


class ProgressFiles:
    """progress.json of each unit under a spool's results/ folder."""

    def __init__(self, spool_dir: str | Path) -> None:
        self.root = SpoolLayout.at(spool_dir).results

    def path(self, unit_id: str) -> Path:
        return self.root / unit_id / PROGRESS_FILE

    def read(self, unit_id: str) -> Progress | None:
        """The unit's progress, or None when no worker has reported yet (or it is unreadable)."""
        try:
            doc = json.loads(self.path(unit_id).read_text(encoding="utf-8"))
            failure = doc.get("failure")
            return Progress(
                state=UnitState(doc["state"]),
                at={str(k): float(v) for k, v in doc.get("at", {}).items()},
                reason=str(doc.get("reason", "")),
                failure=FailureKind(failure) if failure else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def advance(
        self,
        unit_id: str,
        state: UnitState,
        *,
        reason: str = "",
        failure: FailureKind | None = None,
        at: float | None = None,
    ) -> Progress:
        """Record that the unit reached ``state`` (a final state is never left by a report)."""
        previous = self.read(unit_id)
        if previous is not None and previous.final:
            return previous
        times = dict(previous.at) if previous else {}
        times[str(state)] = time.time() if at is None else at
        progress = Progress(state=state, at=times, reason=reason, failure=failure)
        doc = asdict(progress)
        atomic_write_bytes(self.path(unit_id), json.dumps(doc, sort_keys=True).encode("utf-8"))
        return progress

    def clear(self, unit_id: str) -> None:
        """Forget a unit's progress (``molsub retry``: it runs again from the start)."""
        self.path(unit_id).unlink(missing_ok=True)
