"""The node's Celery app: prepare -> infer -> deliver, each on its own queue.

Queues are split by the resource a task needs: ``prepare`` (spool disk, CPU), ``infer`` (the
model; GPU workers consume only this queue), ``deliver`` (network). Settings suit long GPU
tasks: late acks, requeue on a lost worker, one message prefetched, a broker visibility
timeout longer than the longest task. Messages are JSON only (see worker/messages.py).

Broker: ``[queue] broker_url`` (e.g. ``redis://host:6379/0``), or when empty an embedded one
needing no server: kombu's filesystem transport under SPOOL/queue (single host), with message
files written atomically (worker/embedded_broker.py).

``celery -A worker.celery_app:app worker -Q infer`` builds ``app`` on first access from the
node.toml named by $MOLSUB_CONFIG (environment overrides apply).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery, chain

from molsub.config import NodeConfig, load_node_config
from worker import embedded_broker, tasks
from worker.delivery import result_root
from worker.result_store import SENT, ResultStore

log = logging.getLogger(__name__)

QUEUES = ("prepare", "infer", "deliver")
PREPARE_TASK, INFER_TASK, DELIVER_TASK = "molsub.prepare", "molsub.infer", "molsub.deliver"


def retry_policy(config: NodeConfig) -> tuple[int, float, float]:
    """(max retries, first delay, longest delay) of the deliver task's exponential backoff."""
    q = config.queue
    return q.delivery_max_retries, q.delivery_retry_base_s, q.delivery_retry_max_s


def backoff_s(retries_done: int, base_s: float, max_s: float) -> float:
    return min(base_s * (2**retries_done), max_s)


def broker_settings(config: NodeConfig) -> tuple[str, dict[str, Any]]:
    """(broker URL, transport options); the filesystem transport when no URL is configured."""
    options: dict[str, Any] = {"visibility_timeout": config.queue.visibility_timeout_s}
    url = config.queue.broker_url.strip()
    if url:
        return url, options
    queue_dir = Path(config.node.spool_dir).resolve() / "queue"
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


def make_celery_app(config: NodeConfig) -> Celery:
    """The app for this node's config: same tasks and code path with either broker."""
    broker_url, transport_options = broker_settings(config)
    app = Celery("molsub", broker=broker_url, set_as_current=False)
    app.conf.update(
        # The embedded broker writes its message files atomically (worker/embedded_broker.py).
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
            PREPARE_TASK: {"queue": "prepare"},
            INFER_TASK: {"queue": "infer"},
            DELIVER_TASK: {"queue": "deliver"},
        },
        task_default_queue="prepare",
        worker_hijack_root_logger=False,
    )
    app.molsub_config = config
    _register_tasks(app)
    return app


def _register_tasks(app: Celery) -> None:
    @app.task(name=PREPARE_TASK, bind=True, shared=False)
    def prepare(self, unit_id: str, seg_path: str, image_paths: list[str]) -> dict[str, Any]:  # noqa: ANN001
        return tasks.run_prepare(self.app.molsub_config, unit_id, seg_path, image_paths)

    @app.task(name=INFER_TASK, bind=True, shared=False)
    def infer(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001
        return tasks.run_infer(self.app.molsub_config, message)

    @app.task(name=DELIVER_TASK, bind=True, shared=False, max_retries=None)
    def deliver(self, message: dict[str, Any]) -> dict[str, str]:  # noqa: ANN001
        config = self.app.molsub_config
        done = self.request.retries
        outcome = tasks.run_deliver(config, message, reuse_recorded=done > 0)
        unsent = [name for name, state in outcome.items() if state != SENT]
        if not unsent:
            return outcome
        unit_id = str(message["unit_id"])
        max_retries, base_s, max_s = retry_policy(config)
        if done >= max_retries:
            ResultStore(result_root(config)).mark_failed(unit_id, unsent)
            log.error(
                "unit %s: delivery to %s failed after %d retries; recorded for `molsub resend`",
                unit_id,
                ", ".join(unsent),
                done,
            )
            return outcome
        delay = backoff_s(done, base_s, max_s)
        log.info("unit %s: retrying delivery to %s in %.0f s", unit_id, ", ".join(unsent), delay)
        raise self.retry(countdown=delay)


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
    workflow = chain(
        app.signature(
            PREPARE_TASK, args=(unit_id, str(seg_path), [str(p) for p in image_paths])
        ).set(task_id=ids["prepare"], queue="prepare"),
        app.signature(INFER_TASK).set(task_id=ids["infer"], queue="infer"),
        app.signature(DELIVER_TASK).set(task_id=ids["deliver"], queue="deliver"),
    )
    workflow.apply_async()
    log.info("unit %s enqueued", unit_id)
    return ids["prepare"]


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


_default_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    """``app`` / ``celery`` are built on first access (importing this module reads nothing)."""
    global _default_app
    if name in ("app", "celery"):
        if _default_app is None:
            _default_app = make_celery_app(load_node_config())
        return _default_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
