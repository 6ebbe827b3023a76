"""What the status page shows, gathered from the node: the units of the window with their
timings, the model in service, the destinations' last outcomes and the gauges of /metrics.

Read-only, and cheap enough for a page that refreshes every few seconds: bundle.json is parsed
without hashing the weights (the node verified them at start), the destinations' outcomes are
cached a few seconds, and the gauges come from one pass over the node's metrics registry, so
that the page and /metrics always agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from prometheus_client import CollectorRegistry

from common.errors import BundleError
from common.settings import NodeConfig
from common.spool_layout import SpoolLayout
from common.units import Unit, UnitState
from model.bundle_info import format_test_metrics, parse_bundle_json
from molsub.metrics import CREATED, STAGE_SPANS, StageTimer
from worker.delivery.store import DestinationState, ResultNotFound, ResultStore

log = logging.getLogger(__name__)

WINDOW_S = 24 * 3600.0
MAX_ROWS = 500  # /api/units, and the units whose destinations the page summarises
PAGE_ROWS = 100  # rows on the page: the newest; /api/units and `molsub units` list the rest
QUEUES = ("prepare", "infer", "deliver")
DESTINATIONS_TTL_S = 10.0  # a status.json per unit of the window: read every 10 s at most
PATIENT_CACHE_SIZE = 4096
NA = "n/a"

# The page's column per stage: the spans of molsub_stage_seconds (molsub/metrics.py), end to
# end aside (the page's "total" runs to done, failed or timed out).
STAGE_LABELS: dict[StageTimer, str] = {
    StageTimer.RECEIVE_TO_READY: "receive→ready",
    StageTimer.PREPARE: "prepare",
    StageTimer.INFER: "infer",
    StageTimer.DELIVER: "deliver",
}
ENDS = (UnitState.DONE, UnitState.FAILED, UnitState.TIMED_OUT)


def utc(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None or value < 0:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def size(value: float | None) -> str:
    if value is None:
        return NA
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return NA  # unreachable


def stage_times(unit: Unit) -> dict[str, float | None]:
    """Seconds per stage (None where a stamp is missing), and ``total`` from the first object
    received to the end (done, failed or timed out)."""
    at: dict[str, float] = {CREATED: unit.created_at, **unit.times}
    out: dict[str, float | None] = {}
    for stage, label in STAGE_LABELS.items():
        start, end = STAGE_SPANS[stage]
        out[label] = _between(at.get(start), at.get(end))
    end = next((at[s] for s in ENDS if s in at), None)
    out["total"] = _between(unit.created_at, end)
    return out


def _between(start: float | None, end: float | None) -> float | None:
    """Milliseconds' resolution; a stamp a hair before its predecessor (the same instant, after
    a JSON round trip) is 0, not a negative duration."""
    if start is None or end is None:
        return None
    seconds = round(end - start, 3)
    return 0.0 if -1.0 < seconds <= 0 else seconds


@dataclass(frozen=True)
class UnitRow:
    unit: Unit
    received: str
    timings: dict[str, str]
    patient_id: str | None = None
    accession: str | None = None
    results_recorded: bool = False

    @property
    def retryable(self) -> bool:
        return self.unit.state in (UnitState.FAILED, UnitState.TIMED_OUT)


def unit_rows(
    units: Iterable[Unit], patients: PatientIds | None, results: ResultStore
) -> list[UnitRow]:
    rows = []
    for unit in units:
        ids = patients.of(unit) if patients else (None, None)
        rows.append(
            UnitRow(
                unit=unit,
                received=utc(unit.created_at),
                timings={k: seconds(v) for k, v in stage_times(unit).items()},
                patient_id=ids[0],
                accession=ids[1],
                results_recorded=has_results(results, unit),
            )
        )
    return rows


def has_results(results: ResultStore, unit: Unit) -> bool:
    """Resend makes sense where result objects are recorded: done units, and units whose
    delivery failed for good."""
    if unit.state is UnitState.DONE:
        return True  # recorded before delivery (the server checks again on resend)
    if unit.state is not UnitState.FAILED:
        return False
    try:
        return results.has_objects(unit.unit_id)
    except (ValueError, OSError):
        return False


class PatientIds:
    """PatientID and AccessionNumber of a unit, read from its spooled SEG's header once
    ([http] show_patient_ids only). Never logged."""

    TAGS = ("SpecificCharacterSet", "PatientID", "AccessionNumber")

    def __init__(self, size: int = PATIENT_CACHE_SIZE) -> None:
        self._cache: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def of(self, unit: Unit) -> tuple[str | None, str | None]:
        with self._lock:
            if unit.unit_id in self._cache:
                self._cache.move_to_end(unit.unit_id)
                return self._cache[unit.unit_id]
        if unit.seg_path is None:
            return None, None  # not spooled (yet, or any more): nothing to cache
        try:
            ds = pydicom.dcmread(unit.seg_path, stop_before_pixels=True, specific_tags=self.TAGS)
            ids = (str(ds.get("PatientID", "") or ""), str(ds.get("AccessionNumber", "") or ""))
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            log.warning("unit %s: SEG header unreadable for the status page", unit.unit_id)
            return None, None
        with self._lock:
            self._cache[unit.unit_id] = ids
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return ids


@dataclass(frozen=True)
class ModelView:
    """The model in service, from its bundle.json (weights not hashed again)."""

    name: str = NA
    version: str = NA
    digest: str = NA
    untrained: bool | None = None
    synthetic: bool = False
    display_name: str = NA
    metrics: dict[str, str] = field(default_factory=dict)  # task -> as `molsub model info`
    problem: str = ""  # why nothing is shown


class ModelCache:
    """bundle.json read again only when it changes (mtime), never its weights."""

    def __init__(self, bundle: Path | None) -> None:
        self._bundle = bundle
        self._seen: tuple[float, ModelView] | None = None
        self._lock = threading.Lock()

    def get(self) -> ModelView:
        if self._bundle is None:
            return ModelView(problem="no model bundle configured ([model] bundle)")
        try:
            mtime = (self._bundle / "bundle.json").stat().st_mtime
        except OSError as exc:
            return ModelView(problem=f"bundle.json unreadable ({exc.strerror})")
        with self._lock:
            if self._seen and self._seen[0] == mtime:
                return self._seen[1]
            view = self._read()
            self._seen = (mtime, view)
            return view

    def _read(self) -> ModelView:
        try:
            info = parse_bundle_json(self._bundle)  # type: ignore[arg-type]
        except BundleError as exc:
            return ModelView(problem=str(exc))
        tested = info.provenance.get("test_metrics") or {}
        return ModelView(
            name=info.name,
            version=info.version,
            digest=info.digest,
            untrained=info.untrained,
            synthetic=info.synthetic_training_data,
            display_name=info.display_name,
            metrics={
                task: format_test_metrics(m) for task, m in tested.items() if isinstance(m, dict)
            },
        )


@dataclass(frozen=True)
class DestinationView:
    name: str
    kind: str  # "folder" or "DICOM AE"
    last_success: str = "-"
    last_failure: str = "-"
    last_error: str = ""


def _stamp(text: object) -> datetime | None:
    """status.json's ``updated`` (local time with its offset) as an aware datetime."""
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


class DestinationCache:
    """Each destination's last success and last failure among the units of the window, from
    their results/<unit>/status.json; computed at most every few seconds."""

    def __init__(self, config: NodeConfig, ttl_s: float = DESTINATIONS_TTL_S) -> None:
        self._config = config
        self._store = ResultStore(SpoolLayout.at(config.node.spool_dir).results)
        self._ttl = ttl_s
        self._seen: tuple[float, list[DestinationView]] | None = None
        self._lock = threading.Lock()

    def get(self, unit_ids: Iterable[str]) -> list[DestinationView]:
        with self._lock:
            if self._seen and time.monotonic() - self._seen[0] < self._ttl:
                return self._seen[1]
            views = self._compute(unit_ids)
            self._seen = (time.monotonic(), views)
            return views

    def _compute(self, unit_ids: Iterable[str]) -> list[DestinationView]:
        sent: dict[str, datetime] = {}
        failed: dict[str, tuple[datetime, str]] = {}
        for unit_id in unit_ids:
            try:
                status = self._store.status(unit_id)
            except (ResultNotFound, ValueError, OSError):
                continue
            for name, entry in (status.get("destinations") or {}).items():
                when = _stamp(entry.get("updated"))
                if when is None:
                    continue
                state = entry.get("state")
                if state == DestinationState.SENT:
                    sent[name] = max(when, sent.get(name, when))
                elif (state == DestinationState.FAILED or entry.get("error")) and (
                    name not in failed or when > failed[name][0]
                ):
                    failed[name] = (when, str(entry.get("error") or state))
        views = []
        for d in self._config.destinations:
            kind = "folder" if d.is_folder else f"DICOM AE {d.ae_title}@{d.host}:{d.port}"
            fail = failed.get(d.name)
            views.append(
                DestinationView(
                    name=d.name,
                    kind=kind,
                    last_success=_utc_text(sent.get(d.name)),
                    last_failure=_utc_text(fail[0] if fail else None),
                    last_error=fail[1] if fail else "",
                )
            )
        return views


def _utc_text(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "-"


@dataclass(frozen=True)
class Gauges:
    """The node's gauges as /metrics has them; None where the registry has no sample."""

    queues: dict[str, float | None]
    spool_free: float | None
    spool_size: float | None
    spool_min_free: float | None

    @property
    def spool_used(self) -> float | None:
        if self.spool_free is None or self.spool_size is None:
            return None
        return self.spool_size - self.spool_free

    @property
    def used_percent(self) -> float | None:
        used = self.spool_used
        return 100.0 * used / self.spool_size if used is not None and self.spool_size else None

    @property
    def below_watermark(self) -> bool:
        return (
            self.spool_free is not None
            and self.spool_min_free is not None
            and self.spool_free < self.spool_min_free
        )

    def depth(self, queue: str) -> str:
        value = self.queues.get(queue)
        return NA if value is None else f"{value:.0f}"


def read_gauges(registry: CollectorRegistry) -> Gauges:
    """One pass over the registry (each collect may ask the broker: once per page, not per
    value); a collector that fails leaves its values at n/a."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    wanted = {
        "molsub_queue_depth",
        "molsub_spool_free_bytes",
        "molsub_spool_size_bytes",
        "molsub_spool_min_free_bytes",
    }
    try:
        for metric in registry.collect():
            for sample in metric.samples:
                if sample.name in wanted:
                    values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except Exception:  # a failing collector must not break the page
        log.warning("the metrics registry could not be read for the status page", exc_info=True)

    def get(name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return values.get((name, tuple(sorted((labels or {}).items()))))

    return Gauges(
        queues={q: get("molsub_queue_depth", {"queue": q}) for q in QUEUES},
        spool_free=get("molsub_spool_free_bytes"),
        spool_size=get("molsub_spool_size_bytes"),
        spool_min_free=get("molsub_spool_min_free_bytes"),
    )


def as_json(units: Iterable[Unit]) -> list[dict[str, Any]]:
    """GET /api/units: Unit.as_dict() plus the stage timings in seconds."""
    out = []
    for unit in units:
        doc = unit.as_dict()
        doc["seconds"] = stage_times(unit)
        out.append(doc)
    return out
