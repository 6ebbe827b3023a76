"""The node's Celery app: prepare -> infer -> deliver, each on its own queue.

Queues are split by the resource a task needs: ``prepare`` (spool disk, CPU), ``infer`` (the
model; GPU workers consume only this queue), ``deliver`` (network). Settings suit long GPU
tasks: late acks, requeue on a lost worker, one message prefetched, a broker visibility
timeout longer than the longest task. Messages are JSON only (see worker/queue/messages.py).

Broker: ``[queue] broker_url`` (e.g. ``redis://host:6379/0``), or when empty an embedded one
needing no server: kombu's filesystem transport under SPOOL/queue (single host), with message
files written atomically (worker/queue/embedded_broker.py).

Each stage task records the worker's metrics (worker/queue/metrics.py), and every line logged
while a task runs, Celery's included, carries its unit and stage (common/logs.py).

Everything here is handed the node's settings (common.settings.NodeConfig) and, in tests, a
Pipeline with stand-in stages; ``molsub worker`` and ``molsub serve`` build both from node.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery, Task, chain, signals
from celery.exceptions import Ignore, Retry
from celery.utils.time import get_exponential_backoff_interval

from common.logs import ContextTokens, LogStage, pop_context, push_context
from common.progress import FailureKind
from common.settings import LogFormat, NodeConfig
from common.spool_layout import SpoolLayout
from common.units import UnitState
from worker.delivery.store import DestinationState
from worker.pipeline import Pipeline, failure_kind
from worker.queue import embedded_broker
from worker.queue.handlers import StageHandlers
from worker.queue.metrics import Outcome, TaskRun, WorkerMetrics

log = logging.getLogger(__name__)


class Stage(StrEnum):
    """A stage of a unit, and the queue its task runs on (split by the resource it needs)."""

    PREPARE = "prepare"
    INFER = "infer"
    DELIVER = "deliver"

    @property
    def task_name(self) -> str:
        return f"molsub.{self.value}"


QUEUES = tuple(Stage)


REPORT_TASK = "molsub.report"  # routed to the deliver queue: its workers see the spool
T = TypeVar("T")


class DestinationsPending(Exception):
    """Some destinations did not take the results yet: Celery retries the deliver task."""


class TransientFailure(Exception):
    """A stage failed for a reason that may pass (a worker, memory, a disk): Celery retries it."""


# A task that raises one of these runs again: the worker metrics count it as a retry.
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (DestinationsPending, TransientFailure, Retry)


def broker_settings(config: NodeConfig) -> tuple[str, dict[str, Any]]:
    """(broker URL, transport options); the filesystem transport when no URL is configured."""
    options: dict[str, Any] = {"visibility_timeout": config.queue.visibility_timeout_s}
    url = config.queue.broker_url.strip()
    if url:
        return url, options
    queue_dir = SpoolLayout.at(config.node.spool_dir).queue
    messages_dir, processed_dir = queue_dir / "messages", queue_dir / "processed"
    control_dir = queue_dir / "control"
    for folder in (messages_dir, processed_dir, control_dir):
        folder.mkdir(parents=True, exist_ok=True)
    options.update(
        {
            # One folder in and out: producers and consumers on this host share it.
            "data_folder_in": str(messages_dir),
            "data_folder_out": str(messages_dir),
            "processed_folder": str(processed_dir),
            "store_processed": False,
            # An idle filesystem queue is re-checked this often (kombu's default is 1 s, which
            # adds up over the three stage hops of every unit).
            "polling_interval": 0.1,
            # kombu's default is "control" in the working directory (broadcast/pidbox state).
            "control_folder": str(control_dir),
        }
    )
    return "filesystem://", options


def make_celery_app(
    config: NodeConfig,
    *,
    pipeline: Pipeline | None = None,
    metrics: WorkerMetrics | None = None,
) -> Celery:
    """The app for this node's config: same tasks and code path with either broker.

    ``pipeline`` defaults to the configured model bundle; tests pass one with stand-ins.
    The stage tasks record into ``metrics`` (by default a registry of their own, unserved).
    """
    broker_url, transport_options = broker_settings(config)
    app = Celery("molsub", broker=broker_url, set_as_current=False)
    app.conf.update(
        # The embedded broker writes its message files atomically (embedded_broker.py).
        broker_transport=embedded_broker.TRANSPORT if broker_url == "filesystem://" else None,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={
            **{stage.task_name: {"queue": str(stage)} for stage in Stage},
            REPORT_TASK: {"queue": str(Stage.DELIVER)},
        },
        task_default_queue=str(Stage.PREPARE),
        worker_hijack_root_logger=False,
    )
    if metrics is None:
        metrics = WorkerMetrics(retry_exceptions=RETRY_EXCEPTIONS)
    _register_tasks(app, StageHandlers.for_config(config, pipeline), config, metrics)
    _bind_log_context()
    return app


def _register_tasks(
    app: Celery, handlers: StageHandlers, config: NodeConfig, metrics: WorkerMetrics
) -> None:
    q = config.queue
    # Celery's own backoff (retry_backoff * 2**retries, at most retry_backoff_max) takes whole
    # seconds, at least 1: these are the values it uses. No jitter, so that a site can predict
    # when the next attempt comes.
    backoff_base, backoff_max = int(max(1.0, q.delivery_retry_base_s)), int(q.delivery_retry_max_s)
    retrying = {
        "bind": True,
        "shared": False,
        "retry_backoff": backoff_base,
        "retry_backoff_max": backoff_max,
        "retry_jitter": False,
    }

    def guarded(
        task: Task, unit_id: str, stage: Stage, limit: int, run: Callable[[], T], record: TaskRun
    ) -> T:
        """Run one stage of a unit. A permanent failure ends the unit at once; a transient one
        is retried by Celery with backoff and ends the unit when ``limit`` retries are spent.
        Either way the unit ends ``failed`` with the reason, and the chain stops. A unit that
        already ended (a message delivered again after a worker died) is skipped."""
        finished = handlers.finished(unit_id)
        if finished is not None:
            log.info("unit %s already %s: %s skipped", unit_id, finished, stage)
            record.outcome = Outcome.SUCCESS  # nothing went wrong: there was nothing to do
            raise Ignore()
        try:
            return run()
        except Exception as exc:
            kind = failure_kind(exc)
            done = task.request.retries
            if kind is FailureKind.TRANSIENT and done < limit:
                delay = get_exponential_backoff_interval(backoff_base, done, backoff_max)
                log.warning(
                    "unit %s: %s failed (%s), retry %d of %d in %d s",
                    unit_id,
                    stage,
                    type(exc).__name__,
                    done + 1,
                    limit,
                    delay,
                )
                raise TransientFailure(str(exc)) from exc
            reason = (
                f"{stage}: {exc}"
                if kind is FailureKind.PERMANENT
                else (f"{stage}: {type(exc).__name__}: {exc} (after {done} retries)")
            )
            if stage is Stage.INFER:  # this host may not see the spool: a deliver worker does
                app.send_task(REPORT_TASK, args=(unit_id, reason, str(kind)))
            else:
                handlers.fail(unit_id, reason, kind)
            raise Ignore() from exc

    @app.task(name=Stage.PREPARE.task_name, autoretry_for=(TransientFailure,), **retrying)
    def prepare(self: Task, unit_id: str, seg_path: str, image_paths: list[str]) -> dict[str, Any]:
        with metrics.task(Stage.PREPARE) as record:
            return guarded(
                self,
                unit_id,
                Stage.PREPARE,
                q.stage_max_retries,
                lambda: handlers.prepare(unit_id, seg_path, image_paths),
                record,
            )

    @app.task(name=Stage.INFER.task_name, autoretry_for=(TransientFailure,), **retrying)
    def infer(self: Task, message: dict[str, Any]) -> dict[str, Any]:
        unit_id = str(message.get("unit_id"))
        with metrics.task(Stage.INFER) as record:
            return guarded(
                self,
                unit_id,
                Stage.INFER,
                q.stage_max_retries,
                lambda: handlers.infer(message),
                record,
            )

    @app.task(
        name=Stage.DELIVER.task_name,
        autoretry_for=(DestinationsPending, TransientFailure),
        max_retries=q.delivery_max_retries,
        **retrying,
    )
    def deliver(self: Task, message: dict[str, Any]) -> dict[str, Any]:
        """The result is status.json's word for every destination (sent or failed, with the
        error) and the unit's end with the reason progress.json has: never a stale pending."""
        unit_id = str(message.get("unit_id"))
        done = self.request.retries
        with metrics.task(Stage.DELIVER) as record:
            outcome = guarded(
                self,
                unit_id,
                Stage.DELIVER,
                q.delivery_max_retries,
                lambda: handlers.deliver(message, reuse_recorded=done > 0),
                record,
            )
            unsent = [name for name, state in outcome.items() if state != DestinationState.SENT]
            if not unsent:
                handlers.done(unit_id)
                return handlers.delivery_result(unit_id, UnitState.DONE)
            if done >= q.delivery_max_retries:
                handlers.store.mark_failed(unit_id, unsent)
                reason = handlers.delivery_failure(unit_id, unsent, done)
                reason = f"{reason}; results recorded for `molsub resend`"
                handlers.fail(unit_id, reason, FailureKind.TRANSIENT)
                record.outcome = Outcome.FAILURE
                return handlers.delivery_result(unit_id, UnitState.FAILED, reason)
            delay = get_exponential_backoff_interval(backoff_base, done, backoff_max)
            log.info("unit %s: retrying delivery to %s in %d s", unit_id, ", ".join(unsent), delay)
            raise DestinationsPending(handlers.unsent_errors(unit_id, unsent))

    @app.task(name=REPORT_TASK, shared=False)
    def report(unit_id: str, reason: str, kind: str) -> None:
        """A failure of a stage whose host cannot see the spool, recorded by one that can."""
        handlers.fail(unit_id, reason, FailureKind(kind))


# The log context of each task: its unit and stage on every line logged while it runs,
# Celery's own lines about it included (they come before task_postrun).
_TASK_STAGES = {
    **{stage.task_name: LogStage(str(stage)) for stage in Stage},
    REPORT_TASK: LogStage.REPORT,
}
_task_context: dict[str, ContextTokens] = {}


def _unit_of(args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """The unit id of a task's arguments: prepare's and report's first, a message's unit_id."""
    first = args[0] if args else kwargs.get("unit_id", kwargs.get("message"))
    if isinstance(first, dict):
        first = first.get("unit_id")
    return first if isinstance(first, str) else None


def _on_task_start(
    task_id: str | None = None,
    task: Task | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    **_: Any,  # noqa: ANN401 - Celery's signal arguments
) -> None:
    stage = _TASK_STAGES.get(getattr(task, "name", ""))
    if stage is not None and task_id is not None:
        unit = _unit_of(args or (), kwargs or {})
        _task_context[task_id] = push_context(unit=unit, stage=stage)


def _on_task_end(task_id: str | None = None, **_: Any) -> None:  # noqa: ANN401
    tokens = _task_context.pop(task_id or "", None)
    if tokens:
        pop_context(tokens)


def _bind_log_context() -> None:
    """Connect the receivers once per process (Celery's signals are global)."""
    signals.task_prerun.connect(_on_task_start, weak=False, dispatch_uid="molsub-log-start")
    signals.task_postrun.connect(_on_task_end, weak=False, dispatch_uid="molsub-log-end")


def _keep_our_logging(**_: Any) -> None:  # noqa: ANN401
    """A setup_logging receiver: its presence tells Celery to leave logging alone, so that its
    lines go through the root handler of common/logs.py (text or JSON) like ours."""


def _say_as_log(msg: str, f: object = None) -> None:
    """Celery's worker writes a few words straight to stdout (``worker: Warm shutdown``): in
    JSON mode they go through logging instead, so that every line of the output is JSON."""
    logging.getLogger("celery.apps.worker").warning("%s", msg.strip())


def task_ids(unit_id: str) -> dict[str, str]:
    """Deterministic ids, so that enqueueing a unit twice is recognisable as the same work."""
    return {stage: f"molsub-{unit_id}-{stage}" for stage in QUEUES}


def enqueue_unit(
    app: Celery, unit_id: str, seg_path: str | Path, image_paths: Sequence[str | Path]
) -> str:
    """Queue prepare -> infer -> deliver for one unit; returns the prepare task's id.

    Re-enqueueing (e.g. the SCP's dispatcher after a crash before it marked the unit) is
    harmless: the same task ids, the same deterministic result UIDs, and deliver does not send
    again objects a destination already has.
    """
    ids = task_ids(unit_id)
    args = {Stage.PREPARE: (unit_id, str(seg_path), [str(p) for p in image_paths])}
    workflow = chain(
        *[
            app.signature(stage.task_name, args=args.get(stage, ())).set(
                task_id=ids[stage], queue=str(stage)
            )
            for stage in Stage
        ]
    )
    workflow.apply_async()
    log.info("unit %s enqueued", unit_id)
    return ids[Stage.PREPARE]


def run_worker(
    config: NodeConfig,
    queues: Sequence[str] = QUEUES,
    *,
    concurrency: int = 1,
    pool: str = "solo",
    loglevel: str = "INFO",
    hostname: str | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run a worker in this process until stopped (``celery worker`` equivalent).

    ``pool="solo"`` suits infer (one process owns the model and the GPU); prepare and deliver
    workers may use ``prefork`` with more concurrency (the worker metrics then count only this
    process). ``metrics_port`` (0: off) serves them on ``metrics_host``. Logging is the
    process's own (common/logs.py): Celery does not configure it, and in JSON mode prints no
    banner, so that every line of the output is JSON.
    """
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; known: {', '.join(QUEUES)}")
    signals.setup_logging.connect(_keep_our_logging, weak=False, dispatch_uid="molsub-logging")
    if config.logging.format is LogFormat.JSON:
        import celery.apps.worker as celery_worker

        celery_worker.safe_say = _say_as_log  # type: ignore[assignment]
    metrics = WorkerMetrics(retry_exceptions=RETRY_EXCEPTIONS)
    app = make_celery_app(config, metrics=metrics)
    worker = app.Worker(
        queues=list(queues),
        concurrency=concurrency,
        pool_cls=pool,
        loglevel=loglevel,
        hostname=hostname,
        quiet=config.logging.format is LogFormat.JSON,
    )
    metrics.describe_worker(",".join(queues), str(worker.hostname), config.model.device or "auto")
    if metrics_port:
        metrics.serve(metrics_port, metrics_host)
    worker.start()
