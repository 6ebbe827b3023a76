"""The embedded broker: kombu's filesystem transport, with every message written atomically.

kombu's filesystem transport (5.x) creates each message file directly in the queue folder and
then writes it; a consumer in another process may move and read the file before the writer has
finished, get an empty or cut message and stop with a JSONDecodeError (kombu issue #1551). Here
a message is written to a hidden temporary file in the same folder, fsynced and renamed into
place: a consumer sees a whole message or none, and a queued unit survives a power loss.

The exchange tables (which queue a routing key goes to) had the same race: kombu creates a
table file empty ("wb") and only then locks and writes it, so a worker starting at the same
moment can read "" and die with a JSONDecodeError (seen once in a node test). Here a binding
is added under a lock file beside the table and the table replaced by rename: a reader sees the
old table or the new one, whole.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from common.durable import atomic_write_bytes

# What Celery's ``broker_transport`` names to use it (with ``broker_url = "filesystem://"``).
TRANSPORT = "worker.queue.embedded_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: object, **kwargs: object) -> None:
        # kombu's own file name, so consumers still take messages in the order they were put;
        # the temporary file (".tmp-...") does not end in ".<queue>.msg" and is never taken.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = Path(self.data_folder_out) / name
        try:
            atomic_write_bytes(path, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        table = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with (self.control_folder / f".{exchange}.lock").open("a") as guard:
            filesystem.lock(guard, filesystem.LOCK_EX)
            try:
                queues = self.get_table(exchange)
                if binding not in queues:
                    queues.insert(0, binding)
                    atomic_write_bytes(table, str_to_bytes(dumps(queues)))
            finally:
                filesystem.unlock(guard)


class Transport(filesystem.Transport):
    Channel = Channel
