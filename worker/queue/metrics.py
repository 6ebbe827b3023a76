"""A worker process's own metrics: task counts and times per stage, busy, GPU memory, info.

The node reports everything about units from the spool it owns; a worker reports only what the
node cannot see: how long its tasks take, whether it is busy, and the GPU memory of an infer
worker on a GPU host (docs/operations.md, "Metrics"). ``molsub worker --metrics-port N`` serves
them with prometheus_client's own HTTP server. Celery runs the solo pool (one process), so one
in-process registry holds them all.

worker/queue/app.py wraps each stage task in ``WorkerMetrics.task``: the wrapper knows how the
task ended (a retry, a unit failed, done), which Celery's signals cannot tell apart.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

METRICS_PORT_ENV = "MOLSUB_WORKER_METRICS_PORT"
STAGES = ("prepare", "infer", "deliver")
# Seconds: prepare and deliver take a fraction of a second to seconds; infer on a CPU minutes.
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Outcome(StrEnum):
    """How a stage task ended (the ``outcome`` label)."""

    SUCCESS = "success"  # the stage did its work (or skipped a unit that had already ended)
    RETRY = "retry"  # a transient failure or a destination not reached: Celery runs it again
    FAILURE = "failure"  # the unit ended failed here


@dataclass
class TaskRun:
    """One task being recorded; the task body sets ``outcome`` when the return says too little
    (a deliver that returns after recording the unit failed)."""

    stage: str
    outcome: Outcome | None = None


class WorkerMetrics:
    """The worker metrics of one process, in their own registry (not prometheus' global one)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        retry_exceptions: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.retry_exceptions = retry_exceptions
        self.tasks = Counter(
            "molsub_worker_tasks",
            "Stage tasks run by this worker, by how they ended",
            ["stage", "outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "molsub_worker_task_seconds",
            "Time of one stage task in this worker (every attempt, whatever its outcome)",
            ["stage"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.busy = Gauge(
            "molsub_worker_busy",
            "1 while a task of this stage runs in this worker",
            ["stage"],
            registry=self.registry,
        )
        self.gpu_memory = Gauge(
            "molsub_worker_gpu_memory_bytes",
            "GPU memory allocated by torch in this worker (only where CUDA is in use)",
            ["device"],
            registry=self.registry,
        )
        self.info = Gauge(
            "molsub_worker_info",
            "This worker: the queues it consumes, its host name and model device (value 1)",
            ["queues", "hostname", "device"],
            registry=self.registry,
        )
        for stage in STAGES:  # every series present from the first scrape, at 0
            self.busy.labels(stage).set(0)
            self.seconds.labels(stage)
            for outcome in Outcome:
                self.tasks.labels(stage, str(outcome))

    def describe_worker(self, queues: str, hostname: str, device: str) -> None:
        self.info.labels(queues, hostname, device).set(1)

    @contextmanager
    def task(self, stage: str) -> Iterator[TaskRun]:
        """Time one stage task and count its outcome: ``run.outcome`` if the body set it, else
        retry for ``retry_exceptions``, failure for any other exception, success on return."""
        run = TaskRun(stage)
        self.busy.labels(stage).set(1)
        started = time.perf_counter()
        outcome = Outcome.FAILURE
        try:
            yield run
            outcome = run.outcome or Outcome.SUCCESS
        except self.retry_exceptions:
            outcome = run.outcome or Outcome.RETRY
            raise
        except BaseException:
            outcome = run.outcome or Outcome.FAILURE
            raise
        finally:
            self.seconds.labels(stage).observe(time.perf_counter() - started)
            self.tasks.labels(stage, str(outcome)).inc()
            self.busy.labels(stage).set(0)
            self.read_gpu_memory()

    def read_gpu_memory(self) -> None:
        """torch's allocated CUDA memory per device, where this process uses CUDA at all."""
        torch = sys.modules.get("torch")  # never imported here: a CPU-only worker has no GPU
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            self.gpu_memory.labels(f"cuda:{index}").set(torch.cuda.memory_allocated(index))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on ``host:port`` in a daemon thread; returns the port bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(server.server_address[1])
        log.info("worker metrics on http://%s:%d/metrics", host, bound)
        return bound
