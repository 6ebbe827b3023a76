"""A unit of work (one SEG and the MG images it references) and the states it moves through.

``waiting -> ready -> enqueued -> done | failed``, or ``waiting -> timed_out``; a timed-out
unit goes back to ``waiting`` when one of its objects arrives after all. scp/state.py stores
them; the CLI lists them; the queue receives the paths of a ready one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class UnitState(StrEnum):
    WAITING = "waiting"
    READY = "ready"
    ENQUEUED = "enqueued"
    TIMED_OUT = "timed_out"
    FAILED = "failed"
    DONE = "done"


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
    detail: str
    seg_path: Path | None
    image_paths: tuple[Path, ...]  # the referenced images received so far, in reference order
    missing_uids: tuple[str, ...]  # the referenced images not received (yet)
