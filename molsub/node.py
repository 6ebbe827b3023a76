"""`molsub serve` and `molsub worker`: the node as processes.

serve = the C-STORE SCP (scp/) + its dispatcher, which hands each ready unit to Celery, plus, by
default, local worker processes: one for prepare and deliver, one for infer, so the model stays
loaded in one process and a slow inference never holds up delivery. With Redis configured the
same workers can instead run on other hosts (`molsub worker --queues infer` on a GPU host).

Faults: a local worker that exits is started again (``[queue] worker_restart_limit`` times per
``worker_restart_window_s``, then the node exits 1 for systemd to restart it); the workers die
with the node (PR_SET_PDEATHSIG), so a node killed by SIGKILL and restarted never runs twice the
consumers; the dispatcher offers again units a dead worker lost (scp/dispatcher.py, Stall).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import NodeConfig
from common.units import Unit
from molsub.config import load_node_config

if TYPE_CHECKING:
    from molsub.web.server import HttpServer
    from scp.server import NodeSCP

log = logging.getLogger(__name__)

# prepare and deliver share a process; infer has its own, so the model stays loaded in one.
LOCAL_WORKER_QUEUES: tuple[tuple[str, ...], ...] = (("prepare", "deliver"), ("infer",))


@dataclass(frozen=True)
class Listening:
    """What the node's one stdout line says: ``listening HOST:PORT as AE_TITLE``.

    Supervisors, the demo, the tests and the benchmarks start the node with ``--port 0`` and
    learn the real port from this line.
    """

    host: str
    port: int
    ae_title: str

    def line(self) -> str:
        return f"listening {self.host}:{self.port} as {self.ae_title}"

    @classmethod
    def parse(cls, line: str) -> Listening | None:
        """The line's fields, or None for any other line."""
        words = line.split()
        if len(words) != 4 or words[0] != "listening" or words[2] != "as":
            return None
        host, _, port = words[1].rpartition(":")
        return cls(host, int(port), words[3])


def wait_until_listening(proc: subprocess.Popen[str], timeout_s: float) -> Listening:
    """Read a started node's stdout until its listening line, without blocking past the deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:  # EOF: the node exited
                break
            listening = Listening.parse(line)
            if listening is not None:
                return listening
        elif proc.poll() is not None:
            break
    code = proc.poll()
    if code is None:
        raise TimeoutError(f"the node did not report listening within {timeout_s:g} s")
    raise RuntimeError(f"the node exited ({code}) before listening")


def celery_enqueuer(config: NodeConfig) -> Callable[[Unit], None]:
    """The SCP's enqueue callback: each ready unit becomes a prepare -> infer -> deliver chain."""
    from worker.queue.app import enqueue_unit, make_celery_app

    app = make_celery_app(config)

    def enqueue(unit: Unit) -> None:
        enqueue_unit(app, unit.unit_id, unit.seg_path or "", unit.image_paths)

    return enqueue


def check(config: NodeConfig) -> list[str]:
    """Problems that would stop the node doing its job (empty list: ready to serve)."""
    from common.errors import BundleError
    from model.bundle_info import read_bundle_info

    problems = []
    if config.model.bundle is None:
        problems.append("[model] bundle is not set: workers cannot run the model")
    else:
        try:
            read_bundle_info(config.model.bundle)
        except (BundleError, OSError) as exc:
            problems.append(f"[model] bundle {config.model.bundle}: {exc}")
    if not config.destinations:
        problems.append("no [[destinations]]: results would only be recorded in the spool")
    return problems


def describe(config: NodeConfig, *, workers: bool) -> str:
    lines = [config.describe()]
    if workers:
        for queues in LOCAL_WORKER_QUEUES:
            lines.append(f"local worker process: queues {','.join(queues)}")
    else:
        lines.append("local workers: none (--no-workers); run `molsub worker` elsewhere")
    return "\n".join(lines)


def _worker_command(config: NodeConfig, queues: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "molsub.cli", "worker", "--queues", ",".join(queues)]
    if config.source is not None:
        cmd += ["--config", str(config.source)]
    return cmd


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the node dies, however it dies (Linux).

    SIGKILL rather than Celery's warm SIGTERM: the node's successor must not meet a consumer
    still finishing a task; the task's unit is offered again by the dispatcher's stall sweep.
    """

    # Loaded here, before the fork: the child only calls prctl (no locks, no imports).
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the node died before prctl took effect
            os._exit(1)

    return preexec


def start_worker(config: NodeConfig, queues: Sequence[str]) -> subprocess.Popen[bytes]:
    """One worker process on this host; it reads the same config (file and environment).

    Its output goes to the node's stderr: the node's stdout is for its own status lines.
    """
    return subprocess.Popen(
        _worker_command(config, queues),
        stdout=sys.stderr.fileno(),
        preexec_fn=_die_with_parent(os.getpid()),  # prctl and getppid only: fork-safe
    )


def start_local_workers(config: NodeConfig) -> list[subprocess.Popen[bytes]]:
    """The local worker processes, one per entry of LOCAL_WORKER_QUEUES."""
    return [start_worker(config, q) for q in LOCAL_WORKER_QUEUES]


class WorkerSupervisor:
    """Keeps the local workers running: one that exits is started again, unless more than
    ``limit`` exits fell within ``window_s`` (then ``check`` says give up)."""

    def __init__(self, config: NodeConfig, queues: Sequence[Sequence[str]]) -> None:
        self.config = config
        self.queues = [tuple(q) for q in queues]
        self.limit = config.queue.worker_restart_limit
        self.window_s = config.queue.worker_restart_window_s
        self.processes = [start_worker(config, q) for q in self.queues]
        self._exits: list[float] = []

    def check(self, now: float | None = None) -> bool:
        """Restart each worker that exited; False when the restart limit is spent."""
        now = time.monotonic() if now is None else now
        for index, proc in enumerate(self.processes):
            code = proc.poll()
            if code is None:
                continue
            self._exits = [t for t in self._exits if now - t < self.window_s] + [now]
            queues = ",".join(self.queues[index])
            if len(self._exits) > self.limit:
                log.error(
                    "local worker (%s) exited with %s: %d exits within %g s, more than "
                    "[queue] worker_restart_limit %d; stopping the node",
                    queues,
                    code,
                    len(self._exits),
                    self.window_s,
                    self.limit,
                )
                return False
            log.error("local worker (%s) exited with %s; starting it again", queues, code)
            self.processes[index] = start_worker(self.config, self.queues[index])
        return True


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """SIGTERM = Celery's warm shutdown: the running task finishes first."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _own_device_uids(config: NodeConfig) -> tuple[str, ...]:
    """The configured bundle's device UID, so the SCP knows the node's own results by it (it
    also knows them by manufacturer, whatever bundle made them)."""
    from common.errors import BundleError
    from model.bundle_info import parse_bundle_json

    if config.model.bundle is None:
        return ()
    try:
        # bundle.json alone names the weights (their recorded sha256s): no need to hash the
        # weights at start-up; the workers verify them when they load them.
        return (parse_bundle_json(Path(config.model.bundle)).device_uid,)
    except BundleError as exc:
        log.warning("model bundle not readable (%s); own results known by manufacturer", exc)
        return ()


def worker_problems(supervisor: WorkerSupervisor) -> list[str]:
    """A line per local worker not running now (the readiness check ``workers``)."""
    return [
        f"local worker ({','.join(queues)}) exited with {proc.returncode}; being restarted"
        for queues, proc in zip(supervisor.queues, supervisor.processes, strict=True)
        if proc.poll() is not None
    ]


def start_http(
    config: NodeConfig, scp: NodeSCP, supervisor: WorkerSupervisor | None
) -> HttpServer | None:
    """Metrics hooked into the SCP and its dispatcher, health checks, and the HTTP server on
    [http] host:port (None when port = 0). Raises HttpServerError when it cannot listen."""
    from molsub.health import NodeHealth
    from molsub.metrics import NodeMetrics
    from molsub.web.app import create_app
    from molsub.web.memo import FRESH_S
    from molsub.web.server import HttpServer
    from molsub.web.view import NodeView

    if not config.http.port:
        log.info("status page and metrics off ([http] port = 0)")
        return None
    from scp.state import StateDB

    assert scp.db is not None and scp.dispatcher is not None
    dispatcher = scp.dispatcher
    # A connection of its own: the page's and the scrape's reads never queue behind the SCP's
    # writes on the receiving path, nor hold them up (SQLite WAL: readers do not block writers).
    db = StateDB(scp.db.db_path, scp.db.root)
    health = NodeHealth(
        config,
        scp_listening=lambda: scp.port if scp.listening else None,
        workers=(lambda: worker_problems(supervisor)) if supervisor is not None else None,
        max_age_s=FRESH_S,
    )
    metrics = NodeMetrics(
        config,
        db,
        associations=lambda: scp.gate.live() if scp.gate is not None else 0,
        ready=lambda: health().ready,
    )
    scp.store_observer = metrics.observe_store
    dispatcher.on_unit_end = metrics.unit_ended
    view = NodeView(
        config,
        db,
        metrics.registry,
        health,
        wake_dispatcher=dispatcher.wake,
        delivered=metrics.delivered,
    )
    http = HttpServer(create_app(view), config.http.host, config.http.port, on_stop=db.close)
    try:
        http.start()
    except BaseException:
        db.close()
        raise
    log.info("status page http://%s:%d/", config.http.host, http.port)
    return http


def serve(
    config: NodeConfig,
    *,
    workers: bool = True,
    port: int | None = None,
    http_port: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (exit 0): SCP + dispatcher (+ local workers) (+ the HTTP
    server). Exit 1 when the local workers keep dying, so that a supervisor restarts the node,
    or when the HTTP port cannot be listened on."""
    from molsub.web.server import HttpServerError
    from scp.dispatcher import Stall
    from scp.server import NodeSCP

    if port is not None:
        config = config.with_node(port=port)
    if http_port is not None:
        config = replace(config, http=replace(config.http, port=http_port))
    enqueue = celery_enqueuer(config)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    supervisor = WorkerSupervisor(config, LOCAL_WORKER_QUEUES) if workers else None
    scp = NodeSCP(
        config.node,
        enqueue,
        inputs=config.inputs,
        own_device_uids=_own_device_uids(config),
        tls=config.tls,
    )
    code = 0
    http: HttpServer | None = None
    try:
        scp.start()
        if scp.dispatcher is not None:
            q = config.queue
            scp.dispatcher.stall = Stall(q.stall_timeout_s, q.max_redeliveries)
        try:
            http = start_http(config, scp, supervisor)
        except HttpServerError as exc:
            log.error("%s; the node stops", exc)
            return 1
        # The line a supervisor or a test waits for; the real port when 0 was asked for.
        print(Listening(config.node.host, scp.port, config.node.ae_title).line(), flush=True)
        while not stopping.wait(1.0):
            if supervisor is not None and not supervisor.check():
                code = 1
                stopping.set()
    finally:
        if http is not None:
            http.stop()
        scp.stop()
        stop_processes(supervisor.processes if supervisor else [])
    return code


def serve_main(
    config_path: Path | None,
    *,
    check_only: bool,
    workers: bool,
    port: int | None,
    http_port: int | None = None,
) -> int:
    config = load_node_config(config_path)
    if http_port is not None:
        config = replace(config, http=replace(config.http, port=http_port))
    if check_only:
        print(describe(config, workers=workers))
        problems = check(config)
        for problem in problems:
            print(f"problem: {problem}")
        print("configuration OK" if not problems else f"{len(problems)} problem(s)")
        return 0 if not problems else 1
    return serve(config, workers=workers, port=port)
