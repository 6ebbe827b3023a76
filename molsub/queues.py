"""The node's view of its broker: messages waiting per queue, and whether it answers.

The node reports queue depths itself (molsub_queue_depth) so that one scrape target covers any
broker. Embedded broker: the message files kombu's filesystem transport keeps per queue under
SPOOL/queue/messages (``<ms>_<uuid>.<queue>.msg``; worker/queue/embedded_broker.py). Redis: the
LLEN of each queue's list, with short socket timeouts, so a scrape never hangs on a dead broker.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.settings import NodeConfig
from worker.queue.app import QUEUES, Stage, broker_settings

BROKER_TIMEOUT_S = 0.5


class BrokerError(Exception):
    """The broker did not answer (the reason in admin words)."""


def is_embedded(config: NodeConfig) -> bool:
    return not config.queue.broker_url.strip()


def messages_dir(config: NodeConfig) -> Path:
    """Where the embedded broker keeps its message files."""
    _, options = broker_settings(config)
    return Path(options["data_folder_out"])


def embedded_depths(folder: Path) -> dict[Stage, int]:
    """Message files waiting per queue (a missing folder: nothing queued yet)."""
    depths = dict.fromkeys(QUEUES, 0)
    suffixes = {f".{stage}.msg": stage for stage in QUEUES}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return depths
    for name in names:
        if name.startswith("."):  # a message still being written (embedded_broker.py)
            continue
        for suffix, stage in suffixes.items():
            if name.endswith(suffix):
                depths[stage] += 1
                break
    return depths


def _redis(url: str):  # noqa: ANN202 - redis.Redis, imported only when Redis is configured
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S
    )


def redis_depths(url: str) -> dict[Stage, int]:
    """LLEN of each queue's list; BrokerError when Redis does not answer in time."""
    import redis

    client = _redis(url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for stage in QUEUES:
                pipe.llen(str(stage))
            lengths = pipe.execute()
    except redis.exceptions.RedisError as exc:
        raise BrokerError(f"Redis broker did not answer: {type(exc).__name__}") from None
    finally:
        client.close()
    return {stage: int(n) for stage, n in zip(QUEUES, lengths, strict=True)}


def queue_depths(config: NodeConfig) -> dict[Stage, int]:
    """Messages waiting per queue, embedded or Redis; BrokerError when it cannot be read."""
    if is_embedded(config):
        try:
            return embedded_depths(messages_dir(config))
        except OSError as exc:
            raise BrokerError(f"embedded queue folder unreadable: {exc.strerror}") from None
    return redis_depths(config.queue.broker_url.strip())


def ping_redis(url: str) -> None:
    """PING with a short timeout; BrokerError saying why when it does not answer."""
    import redis

    client = _redis(url)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise BrokerError(
            f"Redis broker at {redact(url)} did not answer PING within {BROKER_TIMEOUT_S:g} s "
            f"({type(exc).__name__})"
        ) from None
    finally:
        client.close()


def redact(url: str) -> str:
    """The URL without a password (admins see it on /readyz)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
