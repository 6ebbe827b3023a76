"""A unit of work (one SEG and the MG images it references) and the states it moves through.

``waiting -> ready -> enqueued -> prepared -> inferred -> done``, or ``failed`` from any stage
after ``ready``, or ``waiting -> timed_out`` when images never come; a timed-out unit goes back
to ``waiting`` when one of its objects arrives after all. scp/state.py stores them; the workers
report how far a unit got (common/progress.py); the CLI lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path


class UnitState(StrEnum):
    WAITING = "waiting"  # its SEG or some of its images have not arrived
    READY = "ready"  # all arrived; not yet handed to the queue
    ENQUEUED = "enqueued"
    PREPARED = "prepared"  # crops made
    INFERRED = "inferred"  # the model ran
    DONE = "done"  # results recorded and sent to every destination
    FAILED = "failed"  # ``detail`` says why; the spooled objects are kept
    TIMED_OUT = "timed_out"  # images still missing after the study timeout

    @property
    def in_flight(self) -> bool:
        """Handed to the workers and not finished: the node follows its progress."""
        return self in (UnitState.ENQUEUED, UnitState.PREPARED, UnitState.INFERRED)


@dataclass(frozen=True)
class Unit:
    """One unit of work: a SEG and the MG images it references, with where they are stored."""

    unit_id: str
    seg_uid: str
    study_uid: str
    referenced_uids: tuple[str, ...]
    state: UnitState
    created_at: float
    updated_at: float
    last_received_at: float
    detail: str  # why it failed or timed out
    seg_path: Path | None
    image_paths: tuple[Path, ...]  # the referenced images received so far, in reference order
    missing_uids: tuple[str, ...]  # the referenced images not received (yet)
    times: dict[str, float] = field(default_factory=dict)  # state -> when it was reached

    @property
    def received_at(self) -> float:
        """When its first object arrived."""
        return self.created_at

    def as_dict(self) -> dict[str, object]:
        """For scripts (``molsub units --json``): UIDs, state, times (UTC, ISO 8601), reason."""
        return {
            "unit_id": self.unit_id,
            "seg_uid": self.seg_uid,
            "study_uid": self.study_uid,
            "state": str(self.state),
            "images": len(self.image_paths),
            "images_referenced": len(self.referenced_uids),
            "missing_uids": list(self.missing_uids),
            "received": iso_utc(self.received_at),
            "updated": iso_utc(self.updated_at),
            "times": {state: iso_utc(at) for state, at in self.times.items()},
            "reason": self.detail,
        }


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
