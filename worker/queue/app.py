"""The node's Celery app: prepare -> infer -> deliver, each on its own queue.

Queues are split by the resource a task needs: ``prepare`` (spool disk, CPU), ``infer`` (the
model; GPU workers consume only this queue), ``deliver`` (network). Settings suit long GPU
tasks: late acks, requeue on a lost worker, one message prefetched, a broker visibility
timeout longer than the longest task. Messages are JSON only (see worker/queue/messages.py).

Broker: ``[queue] broker_url`` (e.g. ``redis://host:6379/0``), or when empty an embedded one
needing no server: kombu's filesystem transport under SPOOL/queue (single host), with message
files written atomically (worker/queue/embedded_broker.py).

Everything here is handed the node's settings (common.settings.NodeConfig) and, in tests, a
Pipeline with stand-in stages; ``molsub worker`` and ``molsub serve`` build both from node.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from celery import Celery, Task, chain
from celery.utils.time import get_exponential_backoff_interval

from common.settings import NodeConfig
from common.spool_layout import SpoolLayout
from worker.delivery.store import DestinationState
from worker.pipeline import Pipeline
from worker.queue import embedded_broker
from worker.queue.handlers import StageHandlers

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


class DestinationsPending(Exception):
    """Some destinations did not take the results yet: Celery retries the deliver task."""


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


def make_celery_app(config: NodeConfig, *, pipeline: Pipeline | None = None) -> Celery:
    """The app for this node's config: same tasks and code path with either broker.

    ``pipeline`` defaults to the configured model bundle; tests pass one with stand-ins.
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
        task_routes={stage.task_name: {"queue": str(stage)} for stage in Stage},
        task_default_queue=str(Stage.PREPARE),
        worker_hijack_root_logger=False,
    )
    _register_tasks(app, StageHandlers.for_config(config, pipeline), config)
    return app


def _register_tasks(app: Celery, handlers: StageHandlers, config: NodeConfig) -> None:
    q = config.queue
    # Celery's own backoff takes whole seconds (at least 1): these are the values it uses.
    backoff_base, backoff_max = int(max(1.0, q.delivery_retry_base_s)), int(q.delivery_retry_max_s)

    @app.task(name=Stage.PREPARE.task_name, shared=False)
    def prepare(unit_id: str, seg_path: str, image_paths: list[str]) -> dict[str, Any]:
        return handlers.prepare(unit_id, seg_path, image_paths)

    @app.task(name=Stage.INFER.task_name, shared=False)
    def infer(message: dict[str, Any]) -> dict[str, Any]:
        return handlers.infer(message)

    # Celery's exponential backoff (retry_backoff * 2**retries, at most retry_backoff_max),
    # without jitter so that a site can predict when the next attempt comes.
    @app.task(
        name=Stage.DELIVER.task_name,
        bind=True,
        shared=False,
        autoretry_for=(DestinationsPending,),
        max_retries=q.delivery_max_retries,
        retry_backoff=backoff_base,
        retry_backoff_max=backoff_max,
        retry_jitter=False,
    )
    def deliver(self: Task, message: dict[str, Any]) -> dict[str, str]:
        done = self.request.retries
        outcome = handlers.deliver(message, reuse_recorded=done > 0)
        unsent = [name for name, state in outcome.items() if state != DestinationState.SENT]
        if not unsent:
            return outcome
        unit_id = str(message["unit_id"])
        if done >= q.delivery_max_retries:
            handlers.store.mark_failed(unit_id, unsent)
            log.error(
                "unit %s: delivery to %s failed after %d retries; recorded for `molsub resend`",
                unit_id,
                ", ".join(unsent),
                done,
            )
            return outcome
        delay = get_exponential_backoff_interval(backoff_base, done, backoff_max)
        log.info("unit %s: retrying delivery to %s in %d s", unit_id, ", ".join(unsent), delay)
        raise DestinationsPending(", ".join(unsent))


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
) -> None:
    """Run a worker in this process until stopped (``celery worker`` equivalent).

    ``pool="solo"`` suits infer (one process owns the model and the GPU); prepare and deliver
    workers may use ``prefork`` with more concurrency.
    """
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; known: {', '.join(QUEUES)}")
    app = make_celery_app(config)
    worker = app.Worker(
        queues=list(queues),
        concurrency=concurrency,
        pool_cls=pool,
        loglevel=loglevel,
        hostname=hostname,
    )
    worker.start()
