"""The readiness checks behind /readyz (and molsub_ready): can this node take a study now?

- scp: the DICOM port is listening;
- spool: a small file can be created, fsynced and removed in SPOOL/tmp;
- broker: Redis answers PING within 0.5 s (embedded: its queue folder is writable);
- model: the bundle's weights match bundle.json (hashed at start, then again only when a
  bundle file's mtime or size changes, so a probe every few seconds costs a stat per file);
- workers: the local worker processes are alive (only when `molsub serve` runs them).

Each failed check says what is wrong in words an admin can act on; none raises.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import BundleError
from common.settings import NodeConfig
from common.spool_layout import SpoolLayout
from model.bundle_info import read_bundle_info
from molsub.queues import BrokerError, is_embedded, messages_dir, ping_redis
from molsub.web.view import Check, Readiness

OK = Check(True, "")

# (name, mtime_ns, size) of each bundle file: the model check's cache key.
Signature = tuple[tuple[str, int, int], ...]


def writable(folder: Path, what: str) -> Check:
    """Create, fsync and remove a small file in ``folder`` (made if missing)."""
    probe = folder / f".readyz-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return Check(False, f"{what} {folder} is not writable: {exc.strerror or exc}")
    return Check(True, f"{what} {folder} writable")


class ModelCheck:
    """The bundle verified (every weights file's sha256), re-verified when its files change."""

    def __init__(self, bundle: Path | None) -> None:
        self.bundle = bundle
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        self._result = Check(False, "model bundle not verified yet")

    def _files(self) -> Signature:
        assert self.bundle is not None
        entries = []
        for path in sorted(self.bundle.rglob("*")):
            if path.is_file():
                st = path.stat()
                entries.append((str(path.relative_to(self.bundle)), st.st_mtime_ns, st.st_size))
        return tuple(entries)

    def __call__(self) -> Check:
        if self.bundle is None:
            return Check(False, "[model] bundle is not set: workers cannot run the model")
        with self._lock:
            try:
                signature = self._files()
            except OSError as exc:
                return Check(False, f"model bundle {self.bundle} unreadable: {exc.strerror}")
            if signature != self._signature:
                try:
                    info = read_bundle_info(self.bundle)
                    self._result = Check(
                        True,
                        f"{info.display_name}, digest {info.digest[:12]}, weights verified",
                    )
                except (BundleError, OSError) as exc:
                    self._result = Check(False, f"model bundle {self.bundle}: {exc}")
                self._signature = signature
            return self._result


def broker_check(config: NodeConfig) -> Check:
    if is_embedded(config):
        result = writable(messages_dir(config), "embedded queue folder")
        return result if not result.ok else Check(True, "embedded broker: queue folder writable")
    try:
        ping_redis(config.queue.broker_url.strip())
    except BrokerError as exc:
        return Check(False, str(exc))
    return Check(True, "Redis broker answers PING")


class NodeHealth:
    """The node's readiness: call it for a Readiness (cheap enough for a probe per second)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        scp_listening: Callable[[], int | None],
        workers: Callable[[], Sequence[str]] | None = None,
        max_age_s: float = 0.0,
    ) -> None:
        """``scp_listening``: the port the SCP listens on, or None; ``workers``: a problem per
        local worker not running (None: this node runs no local workers); ``max_age_s``: how
        long a result is answered again (the page, /metrics and /readyz asking at once share
        one spool fsync and one broker PING)."""
        self.config = config
        self.max_age_s = max_age_s
        self._last: tuple[float, Readiness] | None = None
        self._lock = threading.Lock()
        self.scp_listening = scp_listening
        self.workers = workers
        self.model = ModelCheck(config.model.bundle)
        self.model()  # hash the weights now, at start, not in the first probe

    def scp(self) -> Check:
        port = self.scp_listening()
        if port is None:
            return Check(False, "the DICOM port is not listening")
        return Check(True, f"DICOM listening on {self.config.node.host}:{port}")

    def spool(self) -> Check:
        return writable(SpoolLayout.at(self.config.node.spool_dir).tmp, "spool folder")

    def local_workers(self) -> Check:
        assert self.workers is not None
        problems = list(self.workers())
        if problems:
            return Check(False, "; ".join(problems))
        return Check(True, "local workers running")

    def __call__(self) -> Readiness:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.max_age_s:
                return self._last[1]
            readiness = self._check()
            self._last = (now, readiness)
            return readiness

    def _check(self) -> Readiness:
        checks = {
            "scp": self.scp(),
            "spool": self.spool(),
            "broker": broker_check(self.config),
            "model": self.model(),
        }
        if self.workers is not None:
            checks["workers"] = self.local_workers()
        return Readiness(checks)
