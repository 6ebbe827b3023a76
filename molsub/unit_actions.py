"""What an admin may do to one unit, shared by the command line (``molsub retry``) and the
status page's actions (molsub/web/actions.py), so that both follow the same rules."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common.progress import ProgressFiles
from common.units import UnitState
from scp.state import StateDB

# Only a unit that ended without results is processed again from its spooled objects.
RETRYABLE = (UnitState.FAILED, UnitState.TIMED_OUT)


class RetryOutcome(StrEnum):
    RETRIED = "retried"  # ready again: the dispatcher enqueues it
    UNKNOWN = "unknown"  # no such unit in the state database
    WRONG_STATE = "wrong_state"  # neither failed nor timed out (or it moved meanwhile)


@dataclass(frozen=True)
class RetryResult:
    outcome: RetryOutcome
    state: UnitState | None  # the unit's state before the retry (None: unknown unit)

    @property
    def message(self) -> str:
        if self.outcome is RetryOutcome.RETRIED:
            return "ready again; the running node enqueues it from its spooled objects"
        if self.outcome is RetryOutcome.UNKNOWN:
            return "no such unit"
        return f"it is {self.state}; only failed or timed-out units are retried"


def retry_unit(db: StateDB, unit_id: str) -> RetryResult:
    """failed or timed_out -> ready, the workers' old reports forgotten first (in this order:
    the node must not see the old failure again once the unit is back in flight)."""
    unit = db.get_unit(unit_id)
    if unit is None:
        return RetryResult(RetryOutcome.UNKNOWN, None)
    if unit.state not in RETRYABLE:
        return RetryResult(RetryOutcome.WRONG_STATE, unit.state)
    ProgressFiles(db.root).clear(unit.unit_id)
    if not db.retry(unit.unit_id):  # it moved between the read and the update
        now = db.get_unit(unit_id)
        return RetryResult(RetryOutcome.WRONG_STATE, now.state if now else None)
    return RetryResult(RetryOutcome.RETRIED, unit.state)
