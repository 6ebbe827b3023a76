"""`molsub serve` and `molsub worker`: the node as processes.

serve = the C-STORE SCP (scp/) + its dispatcher, which hands each ready unit to Celery, plus, by
default, local worker processes: one for prepare and deliver, one for infer, so the model stays
loaded in one process and a slow inference never holds up delivery. With Redis configured the
same workers can instead run on other hosts (`molsub worker --queues infer` on a GPU host).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from molsub.config import ConfigError, NodeConfig, load_config

log = logging.getLogger(__name__)

LOCAL_WORKER_QUEUES: tuple[tuple[str, ...], ...] = (("prepare", "deliver"), ("infer",))


def read_config(path: Path | None) -> NodeConfig:
    """--config, else $MOLSUB_CONFIG, else built-in defaults; env overrides apply to all."""
    chosen = path or (
        Path(os.environ["MOLSUB_CONFIG"]) if os.environ.get("MOLSUB_CONFIG") else None
    )
    return load_config(chosen)


def check(config: NodeConfig) -> list[str]:
    """Problems that would stop the node doing its job (empty list: ready to serve)."""
    from model.bundle import read_bundle_info
    from model.errors import BundleError

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


def start_local_workers(config: NodeConfig) -> list[subprocess.Popen[bytes]]:
    """Worker processes on this host; they read the same config (file and environment).

    Their output goes to the node's stderr: the node's stdout is for its own status lines.
    """
    return [
        subprocess.Popen(_worker_command(config, q), stdout=sys.stderr.fileno())
        for q in LOCAL_WORKER_QUEUES
    ]


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


def serve(config: NodeConfig, *, workers: bool = True, port: int | None = None) -> int:
    """Run until SIGTERM/SIGINT: SCP + dispatcher (+ local workers)."""
    from molsub.config import with_node
    from scp.server import NodeSCP
    from scp.state import Unit
    from worker.celery_app import enqueue_unit, make_celery_app

    if port is not None:
        config = with_node(config, port=port)
    app = make_celery_app(config)

    def enqueue(unit: Unit) -> None:
        enqueue_unit(app, unit.unit_id, unit.seg_path or "", unit.image_paths)

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    processes = start_local_workers(config) if workers else []
    scp = NodeSCP(config, enqueue)
    try:
        scp.start()
        # The line a supervisor or a test waits for; the real port when 0 was asked for.
        print(f"listening {config.node.host}:{scp.port} as {config.node.ae_title}", flush=True)
        while not stopping.wait(1.0):
            for proc in processes:
                if proc.poll() is not None:
                    log.error("local worker exited with %s; stopping the node", proc.returncode)
                    stopping.set()
    finally:
        scp.stop()
        stop_processes(processes)
    return 0


def worker(config: NodeConfig, queues: Sequence[str]) -> int:
    from worker.celery_app import run_worker

    run_worker(config, queues)
    return 0


def serve_main(
    config_path: Path | None, *, check_only: bool, workers: bool, port: int | None
) -> int:
    try:
        config = read_config(config_path)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if check_only:
        print(describe(config, workers=workers))
        problems = check(config)
        for problem in problems:
            print(f"problem: {problem}")
        print("configuration OK" if not problems else f"{len(problems)} problem(s)")
        return 0 if not problems else 1
    return serve(config, workers=workers, port=port)
