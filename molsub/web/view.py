"""What the HTTP app is handed: the node's settings, its state database, its metrics registry
and its readiness checks. molsub/node.py builds one from the running node; tests build one
from a spool, without a network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from common.settings import NodeConfig
from scp.state import StateDB


@dataclass(frozen=True)
class Check:
    """One readiness check: passed or not, and why, in words an admin can act on."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Readiness:
    """/readyz: ready when every check passed (scp, spool, broker, model, workers)."""

    checks: Mapping[str, Check]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "checks": {k: {"ok": c.ok, "detail": c.detail} for k, c in self.checks.items()},
        }


def _nothing() -> None:
    return None


@dataclass
class NodeView:
    """The running node, as the HTTP app sees it."""

    config: NodeConfig
    db: StateDB
    registry: CollectorRegistry
    readiness: Callable[[], Readiness]
    # A unit was made ready again (retry): the dispatcher enqueues it now, not at its next poll.
    wake_dispatcher: Callable[[], None] = _nothing
    # Where a resend's outcome per destination is counted (molsub_deliveries_total).
    delivered: Callable[[str, Mapping[str, str]], None] = field(default=lambda unit, outcome: None)
