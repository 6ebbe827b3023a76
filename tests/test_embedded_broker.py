"""The embedded broker never hands a consumer a half-written message (kombu issue #1551)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from queue import Empty

from kombu import Connection

from worker.queue import embedded_broker

MESSAGES = 40
BODY_CHARS = 4_000_000  # large enough that writing one message takes a while
DEADLINE_S = 120


def _produce(transport: type, options: dict[str, object]) -> None:
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.channel()
        for i in range(MESSAGES):
            channel._put("q", {"index": i, "body": "x" * BODY_CHARS})


def race(transport: type, root: Path) -> tuple[list[int], list[BaseException]]:
    """A producer process puts big messages while this process takes them from the same
    folder, as the node's processes do; returns the indices taken and the errors met."""
    messages = root / "messages"
    messages.mkdir(parents=True)
    options: dict[str, object] = {
        "data_folder_in": str(messages),
        "data_folder_out": str(messages),
        "store_processed": False,
        "control_folder": str(root / "control"),
    }
    producer = multiprocessing.get_context("fork").Process(
        target=_produce, args=(transport, options)
    )
    taken: list[int] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + DEADLINE_S
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.channel()
        producer.start()
        while len(taken) < MESSAGES and time.monotonic() < deadline:
            try:
                message = channel._get("q")
            except Empty:
                if not producer.is_alive() and not any(messages.glob("*.msg")):
                    break  # everything put has been taken (or lost)
                continue
            except Exception as exc:  # a cut message: what kombu's own transport can give
                errors.append(exc)
                continue
            if len(message["body"]) != BODY_CHARS:
                errors.append(ValueError(f"message {message['index']} is cut"))
            taken.append(message["index"])
    producer.join(DEADLINE_S)
    assert producer.exitcode == 0
    return taken, errors


def test_consumer_takes_every_message_whole_in_order(tmp_path: Path) -> None:
    taken, errors = race(embedded_broker.Transport, tmp_path)
    assert errors == []
    assert taken == list(range(MESSAGES))
    assert list((tmp_path / "messages").iterdir()) == []  # no temporary file left behind


def _bind_many(transport: type, options: dict[str, object], worker: int) -> None:
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.channel()
        for i in range(BINDINGS):
            channel._queue_bind("celery", f"key-{worker}-{i}", "", f"q-{worker}-{i}")


BINDINGS = 60


def test_workers_binding_queues_at_once_never_see_a_cut_exchange_table(tmp_path: Path) -> None:
    """Workers starting together bind their queues while others read the table: every read
    is a whole table, and no binding is lost."""
    options: dict[str, object] = {
        "data_folder_in": str(tmp_path / "m"),
        "data_folder_out": str(tmp_path / "m"),
        "control_folder": str(tmp_path / "control"),
    }
    (tmp_path / "m").mkdir()
    context = multiprocessing.get_context("fork")
    binders = [
        context.Process(target=_bind_many, args=(embedded_broker.Transport, options, w))
        for w in range(3)
    ]
    errors: list[BaseException] = []
    with Connection(
        "filesystem://", transport=embedded_broker.Transport, transport_options=options
    ) as conn:
        channel = conn.channel()
        for p in binders:
            p.start()
        deadline = time.monotonic() + DEADLINE_S
        while any(p.is_alive() for p in binders) and time.monotonic() < deadline:
            try:
                channel.get_table("celery")
            except Exception as exc:  # kombu's own transport: JSONDecodeError on "" here
                errors.append(exc)
        for p in binders:
            p.join(DEADLINE_S)
        table = channel.get_table("celery")
    assert [p.exitcode for p in binders] == [0, 0, 0]
    assert errors == []
    assert len(table) == 3 * BINDINGS
