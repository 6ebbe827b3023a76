"""The node's Prometheus metrics (GET /metrics), in a registry of its own.

Events are counted through hooks the node hands its parts: NodeSCP tells ``observe_store`` of
each answered C-STORE, the dispatcher tells ``unit_ended`` of each unit that ended, the status
page's resend tells ``delivered``. What is a state rather than an event (units per state,
associations, queue depths, the model, the spool's disk) is read at scrape time by a collector,
each a single cheap query, so that scraping never slows down the DICOM receiving path. A source
that cannot be read (a dead Redis) leaves its metric out of that scrape and logs why; the scrape
itself never fails.

The node reports everything about units, from the spool it owns: that works with any broker,
survives worker restarts and is one scrape target per node. Workers report only their own
process (``molsub worker --metrics-port``): task time, busy, GPU memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydicom.uid import UID

from common.errors import BundleError
from common.progress import FailureKind
from common.settings import NodeConfig
from common.units import Unit, UnitState
from model.bundle_info import parse_bundle_json
from molsub.queues import BrokerError, queue_depths
from scp.state import StateDB
from scp.watermark import MB, disk_usage
from worker.delivery.store import DestinationState, ResultNotFound, ResultStore

log = logging.getLogger(__name__)

# Seconds: from a fraction of a second (prepare of a small image) to an hour (a study waiting
# for a slow PACS to take its results).
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class StageTimer(StrEnum):
    """molsub_stage_seconds{stage}: (from, to) states of a done unit's ``times``."""

    RECEIVE_TO_READY = "receive_to_ready"
    PREPARE = "prepare"
    INFER = "infer"
    DELIVER = "deliver"
    END_TO_END = "end_to_end"


# stage -> (from state, to state); "created" is the unit's created_at (its first object).
CREATED = "created"
STAGE_SPANS: dict[StageTimer, tuple[str, UnitState]] = {
    StageTimer.RECEIVE_TO_READY: (CREATED, UnitState.READY),
    StageTimer.PREPARE: (UnitState.ENQUEUED, UnitState.PREPARED),
    StageTimer.INFER: (UnitState.PREPARED, UnitState.INFERRED),
    StageTimer.DELIVER: (UnitState.INFERRED, UnitState.DONE),
    StageTimer.END_TO_END: (CREATED, UnitState.DONE),
}


class FailedStage(StrEnum):
    """molsub_unit_failures_total{stage}: the last stage a failed unit reached."""

    WAITING = "waiting"
    PREPARE = "prepare"
    INFER = "infer"
    DELIVER = "deliver"


class FailureClass(StrEnum):
    """molsub_unit_failures_total{kind}."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"  # images never came ([node] study_timeout_s)
    STALLED = "stalled"  # no progress, re-offers spent ([queue] stall_timeout_s)


class Outcome(StrEnum):
    """molsub_deliveries_total{outcome}."""

    SENT = "sent"
    FAILED = "failed"


# The dispatcher's reason for a unit whose re-offers were spent (scp/dispatcher.py).
STALLED_DETAIL = f"{FailureKind.TRANSIENT}: no progress for "


def sop_class_label(sop_class_uid: str) -> str:
    """pydicom's keyword of a SOP Class UID, or the UID itself when unknown."""
    if not sop_class_uid:
        return "unknown"
    return UID(sop_class_uid).keyword or sop_class_uid


def status_label(status: int) -> str:
    return f"0x{status:04X}"


def stage_seconds(unit: Unit) -> dict[StageTimer, float]:
    """The stage durations of a done unit (those whose two ends are recorded)."""
    times: dict[str, float] = {CREATED: unit.created_at, **unit.times}
    spans = {}
    for stage, (start, end) in STAGE_SPANS.items():
        if start in times and end in times:
            spans[stage] = max(0.0, times[end] - times[start])
    return spans


def failed_stage(unit: Unit) -> FailedStage:
    """The stage a failed unit was in: the one after the last state its times record."""
    times = unit.times
    if UnitState.INFERRED in times:
        return FailedStage.DELIVER
    if UnitState.PREPARED in times:
        return FailedStage.INFER
    if UnitState.ENQUEUED in times:
        return FailedStage.PREPARE
    return FailedStage.WAITING


def failure_class(unit: Unit) -> FailureClass:
    if unit.state is UnitState.TIMED_OUT or failed_stage(unit) is FailedStage.WAITING:
        return FailureClass.TIMEOUT  # timed out, or failed by [inputs] seg_images_missing = fail
    if unit.detail.startswith(STALLED_DETAIL):
        return FailureClass.STALLED
    if unit.detail.startswith(f"{FailureKind.PERMANENT}:"):
        return FailureClass.PERMANENT
    return FailureClass.TRANSIENT


class NodeMetrics:
    """Every node metric of the contract (docs/operations.md), in ``self.registry``."""

    def __init__(
        self,
        config: NodeConfig,
        db: StateDB,
        *,
        associations: Callable[[], int] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.results = ResultStore(Path(config.node.spool_dir) / "results")
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.objects_received = Counter(
            "molsub_objects_received",
            "C-STOREs answered, by SOP class (UID keyword) and DIMSE status",
            ["sop_class", "status"],
            registry=r,
        )
        self.bytes_received = Counter(
            "molsub_bytes_received",
            "Bytes of C-STORE data sets received (all outcomes)",
            registry=r,
        )
        self.stage_seconds = Histogram(
            "molsub_stage_seconds",
            "Seconds a done unit spent per stage (and end to end)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.unit_failures = Counter(
            "molsub_unit_failures",
            "Units that ended failed or timed out, by the stage reached and the kind of failure",
            ["stage", "kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "molsub_deliveries",
            "Result deliveries per unit and destination (at the unit's end, and per resend)",
            ["destination", "outcome"],
            registry=r,
        )
        r.register(ScrapeCollector(config, db, associations=associations, ready=ready))

    # -- hooks ---------------------------------------------------------------------------------

    def observe_store(self, sop_class_uid: str, status: int, nbytes: int) -> None:
        """NodeSCP's StoreObserver: one C-STORE answered."""
        self.objects_received.labels(sop_class_label(sop_class_uid), status_label(status)).inc()
        if nbytes > 0:
            self.bytes_received.inc(nbytes)

    def unit_ended(self, unit: Unit) -> None:
        """The dispatcher's on_unit_end: timings of a done unit, or its failure; deliveries."""
        if unit.state is UnitState.DONE:
            for stage, seconds in stage_seconds(unit).items():
                self.stage_seconds.labels(stage).observe(seconds)
        elif unit.state in (UnitState.FAILED, UnitState.TIMED_OUT):
            self.unit_failures.labels(failed_stage(unit), failure_class(unit)).inc()
        self.delivered(unit.unit_id, self.destination_outcomes(unit.unit_id))

    def delivered(self, unit_id: str, outcomes: Mapping[str, str]) -> None:
        """Count each destination's outcome (``sent`` or ``failed``; others are not final)."""
        for destination, outcome in outcomes.items():
            if outcome in set(Outcome):
                self.deliveries.labels(destination, outcome).inc()

    def destination_outcomes(self, unit_id: str) -> dict[str, str]:
        """Each destination's final state in results/<unit>/status.json (none recorded: {})."""
        try:
            status = self.results.status(unit_id)
        except (ResultNotFound, OSError, ValueError):
            return {}
        outcomes = {}
        for name, entry in (status.get("destinations") or {}).items():
            state = entry.get("state") if isinstance(entry, dict) else None
            if state == DestinationState.SENT:
                outcomes[name] = Outcome.SENT
            elif state == DestinationState.FAILED:
                outcomes[name] = Outcome.FAILED
        return outcomes


class ScrapeCollector(Collector):
    """Values read when Prometheus scrapes: each one query or one system call."""

    def __init__(
        self,
        config: NodeConfig,
        db: StateDB,
        *,
        associations: Callable[[], int] | None,
        ready: Callable[[], bool] | None,
    ) -> None:
        self.config = config
        self.db = db
        self.associations = associations
        self.ready = ready

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (no values read at registration)

    def collect(self) -> Iterator[Metric]:
        for part in (
            self._associations,
            self._units,
            self._queues,
            self._model,
            self._spool,
            self._ready,
        ):
            try:
                yield from part()
            except Exception as exc:  # noqa: BLE001 - one source down never fails the scrape
                log.warning("metrics: %s not collected: %s", part.__name__.lstrip("_"), exc)

    def _associations(self) -> Iterator[Metric]:
        if self.associations is None:
            return
        yield GaugeMetricFamily(
            "molsub_associations_active",
            "DICOM associations negotiated and open now",
            value=self.associations(),
        )

    def _units(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("molsub_units", "Units per state", labels=["state"])
        for state, count in self.db.state_counts(0.0).items():
            family.add_metric([str(state)], count)
        yield family

    def _queues(self) -> Iterator[Metric]:
        try:
            depths = queue_depths(self.config)
        except BrokerError as exc:
            log.warning("metrics: queue depths not collected: %s", exc)
            return
        family = GaugeMetricFamily(
            "molsub_queue_depth", "Messages waiting in the broker per queue", labels=["queue"]
        )
        for stage, depth in depths.items():
            family.add_metric([str(stage)], depth)
        yield family

    def _model(self) -> Iterator[Metric]:
        bundle = self.config.model.bundle
        if bundle is None:
            return
        try:
            info = parse_bundle_json(Path(bundle))  # bundle.json only: no hashing per scrape
        except (BundleError, OSError) as exc:
            log.warning("metrics: model bundle not readable: %s", exc)
            return
        family = GaugeMetricFamily(
            "molsub_model_info",
            "The model bundle in service (value 1)",
            labels=["name", "version", "digest", "untrained"],
        )
        family.add_metric(
            [info.name, info.version, info.digest, "true" if info.untrained else "false"], 1
        )
        yield family

    def _spool(self) -> Iterator[Metric]:
        usage = disk_usage(self.config.node.spool_dir)
        yield GaugeMetricFamily(
            "molsub_spool_free_bytes",
            "Free bytes on the spool's filesystem",
            value=usage.free,
        )
        yield GaugeMetricFamily(
            "molsub_spool_size_bytes", "Size of the spool's filesystem in bytes", value=usage.size
        )
        yield GaugeMetricFamily(
            "molsub_spool_min_free_bytes",
            "The watermark ([node] min_free_mb): below it C-STOREs get 0xA700; 0 = off",
            value=self.config.node.min_free_mb * MB,
        )

    def _ready(self) -> Iterator[Metric]:
        if self.ready is None:
            return
        yield GaugeMetricFamily(
            "molsub_ready", "1 when /readyz says ready", value=1 if self.ready() else 0
        )
