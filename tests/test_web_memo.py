"""molsub/web/memo.py: what the page and /metrics answer is computed once per second at most."""

from __future__ import annotations

import threading

from molsub.web.memo import Memo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_reused_within_max_age_and_recomputed_after() -> None:
    clock = Clock()
    memo: Memo[int] = Memo(max_age_s=1.0, clock=clock)
    calls: list[str] = []

    def compute(tag: str) -> int:
        calls.append(tag)
        return len(calls)

    assert memo.get("all", lambda: compute("a")) == 1
    clock.now += 0.5
    assert memo.get("all", lambda: compute("b")) == 1  # still fresh: not computed again
    assert memo.get("failed", lambda: compute("c")) == 2  # another key: its own value
    clock.now += 0.6  # "all" is 1.1 s old now
    assert memo.get("all", lambda: compute("d")) == 3
    assert calls == ["a", "c", "d"]


def test_stale_keys_are_dropped() -> None:
    clock = Clock()
    memo: Memo[int] = Memo(max_age_s=1.0, clock=clock)
    for key in range(5):
        memo.get(key, lambda: 0)
    clock.now += 2
    memo.get("new", lambda: 1)
    assert list(memo._values) == ["new"]


def test_concurrent_requests_share_one_computation() -> None:
    memo: Memo[int] = Memo(max_age_s=60.0)
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        started.set()
        release.wait(5)
        return 42

    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(memo.get("k", slow)))
    first.start()
    assert started.wait(5)
    others = [
        threading.Thread(target=lambda: results.append(memo.get("k", slow))) for _ in range(3)
    ]
    for thread in others:
        thread.start()
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert results == [42, 42, 42, 42]
    assert calls == [1]
