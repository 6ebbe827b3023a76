"""Starting the node and its peers as local processes: for the demo, the tests and the benches.

One way to write a node's config (``molsub.config.to_toml``), start ``molsub serve`` on a free
port and learn the port from its one stdout line, start a private redis-server, wait with a
deadline and stop what was started. Loopback addresses only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from common.settings import NodeConfig
from molsub.config import to_toml
from molsub.node import Listening, wait_until_listening

T = TypeVar("T")

MOLSUB = (sys.executable, "-m", "molsub.cli")  # the CLI of this interpreter's installation


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the parent field of /proc/*/stat): what a test or
    a benchmark checks of the node's worker processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_for(check: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` after the
    deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 10.0
) -> None:
    """Terminate one process we started (by its handle), kill it if it does not stop."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


def write_config(config: NodeConfig, path: Path) -> Path:
    """``config`` as the node.toml at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(config))
    return path


def start_node(
    config_path: Path | None,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 300,
) -> tuple[subprocess.Popen[str], Listening]:
    """``molsub serve --config CONFIG --port 0 ARGS``; returns the process and what it listens on.

    The HTTP server is off (``--http-port 0``) unless ``args`` pass ``--http-port``: many nodes
    start side by side in the tests and benches, and [http] port's default would clash.

    Without ``config_path`` the node takes its config from ``env`` ($MOLSUB_CONFIG and the
    MOLSUB_<SECTION>_<KEY> overrides). The node's and its workers' logs go to ``log_path``;
    stdout carries the listening line.
    """
    config_args = ["--config", str(config_path)] if config_path is not None else []
    if not any(a == "--http-port" or a.startswith("--http-port=") for a in args):
        args = (*args, "--http-port", "0")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*MOLSUB, "serve", *config_args, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    try:
        return proc, wait_until_listening(proc, timeout_s)
    except BaseException:
        stop_process(proc)
        raise


@contextmanager
def running_node(
    config_path: Path | None,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 300,
    stop_timeout_s: float = 90,
) -> Iterator[tuple[subprocess.Popen[str], Listening]]:
    """``start_node`` for a ``with`` block: SIGTERM (then kill) on the way out."""
    proc, listening = start_node(config_path, log_path, *args, env=env, timeout_s=timeout_s)
    try:
        yield proc, listening
    finally:
        stop_process(proc, timeout_s=stop_timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()


def start_redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server on loopback ``port``, no persistence, answering PING (10 s at most)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    argv: Sequence[str] = (
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(workdir), "--daemonize", "no"),
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)

        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_for(ping, 10, f"redis-server on port {port}")
    except BaseException:
        stop_process(proc)
        raise
    return proc


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server on a free loopback port (never 6379), no persistence; yields its URL."""
    port = free_port()
    proc = start_redis(workdir, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)
