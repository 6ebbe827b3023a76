"""A result kept for a moment: what several browsers and Prometheus ask for within the same
couple of seconds is computed once. The HTTP server shares the process (and its CPU) with the DICOM
receiver, so the page must not cost more when more people look at it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

FRESH_S = 2.0  # what /metrics, the page and its fragment answer is at most this old


class Memo(Generic[T]):
    """``get(key, compute)``: the value computed for ``key`` less than ``max_age_s`` ago, else
    a new one. One computation at a time: a request that arrives during one waits for it and
    takes its result, rather than computing the same thing beside it."""

    def __init__(
        self, max_age_s: float = FRESH_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._values: dict[Hashable, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            now = self.clock()
            kept = self._values.get(key)
            if kept is not None and now - kept[0] < self.max_age_s:
                return kept[1]
            value = compute()
            # Few keys (a state filter each): drop the stale ones rather than grow.
            self._values = {k: v for k, v in self._values.items() if now - v[0] < self.max_age_s}
            self._values[key] = (now, value)
            return value
