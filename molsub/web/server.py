"""The node's HTTP server: uvicorn in a daemon thread of `molsub serve`.

The socket is bound here, before the thread starts, so that a port in use is a clear error at
start (``[http] port N: address in use``) rather than a log line from a thread. uvicorn gets no
logging config of its own (the node's applies), no access log (a probe every second would
drown the DICOM log) and no lifespan; its event loop lives in its own thread, so the DICOM
receiving path, the SCP's threads, never waits on it.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class HttpServerError(RuntimeError):
    """The HTTP server could not start (the message names the setting)."""


class HttpServer:
    """``start()`` returns once listening (or raises HttpServerError); ``stop()`` joins."""

    def __init__(
        self, app: ASGIApp, host: str, port: int, on_stop: Callable[[], None] | None = None
    ) -> None:
        """``on_stop``: called once the server has stopped (closes what the app reads)."""
        self.app = app
        self.on_stop = on_stop
        self.host = host
        self.requested_port = port
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                port = self.requested_port
                raise HttpServerError(f"[http] port {port}: address in use") from None
            raise HttpServerError(
                f"[http] host {self.host} port {self.requested_port}: {exc.strerror or exc}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        sock = self._bind()
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException:  # noqa: BLE001 - a thread's end must be logged, not lost
                log.exception("HTTP server stopped")
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name="molsub-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive():
                raise HttpServerError(f"[http] port {self.port}: the HTTP server did not start")
            if time.monotonic() > deadline:
                self.stop()
                raise HttpServerError(
                    f"[http] port {self.port}: not serving within {START_TIMEOUT_S:g} s"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("HTTP server did not stop within %g s", STOP_TIMEOUT_S)
            self._thread = None
        self._server = None
        if self.on_stop is not None:
            self.on_stop()
            self.on_stop = None
