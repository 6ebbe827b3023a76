"""The spool's free-space watermark ([node] min_free_mb).

Below it the SCP answers C-STORE 0xA700 (Out of Resources) before storing anything: a sender
retries later, rather than the node filling its disk with half a study and then failing the
SQLite write. statvfs is read at most once a second, so the check costs nothing per object.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
CACHE_S = 1.0  # how long one statvfs answer is trusted
WATERMARK_COMMENT = "spool filesystem below its free-space watermark"


@dataclass(frozen=True)
class DiskUsage:
    """The spool filesystem, in bytes (what an unprivileged process may use as free)."""

    free: int
    size: int


def disk_usage(path: str | Path) -> DiskUsage:
    st = os.statvfs(path)
    return DiskUsage(free=st.f_bavail * st.f_frsize, size=st.f_blocks * st.f_frsize)


class Watermark:
    """Is the spool filesystem below ``min_free_bytes``? (0: never). Thread-safe, cached."""

    def __init__(
        self,
        path: str | Path,
        min_free_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        usage: Callable[[str | Path], DiskUsage] = disk_usage,
    ) -> None:
        self.path = Path(path)
        self.min_free_bytes = min_free_bytes
        self._clock = clock
        self._usage = usage
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._below = False

    def below(self) -> bool:
        """True while free space is under the watermark (statvfs at most every CACHE_S)."""
        if self.min_free_bytes <= 0:
            return False
        now = self._clock()
        with self._lock:
            if self._checked_at is None or now - self._checked_at >= CACHE_S:
                try:
                    self._below = self._usage(self.path).free < self.min_free_bytes
                except OSError:
                    self._below = False  # the store itself will fail and say so
                self._checked_at = now
            return self._below
