"""pynetdicom's files of objects being received, kept in SPOOL/tmp and removed on an abort.

With STORE_RECV_CHUNKED_DATASET pynetdicom streams each C-STORE's data set into a
``NamedTemporaryFile(delete=False)`` in the system temporary folder, and removes it only after
the C-STORE handler ran: a transfer that aborts halfway leaves its partial file (patient data,
up to a whole mammogram) there for ever. Made in SPOOL/tmp instead, such a file is private like
the rest of the spool, on the spool's file system (the handler's move into the spool is a
rename), removed when its connection closes, and at the latest by the next start's
``Spool.clear_temporary``.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages, evt

log = logging.getLogger(__name__)

PREFIX = "recv-"
# Installed instances, newest last, and what pynetdicom had before the first: two SCPs in one
# process (the tests) may stop in any order and must leave pynetdicom as they found it.
_lock = threading.Lock()
_active: list[PartialFiles] = []
_original: Any = None


class PartialFiles:
    """Points pynetdicom's received-object files into ``tmp_dir`` while installed.

    The switch is module-level in pynetdicom (like STORE_RECV_CHUNKED_DATASET): the newest
    installed instance is in effect; once all are uninstalled, in whatever order, pynetdicom's
    own factory is back.
    """

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = Path(tmp_dir)
        self._factory = functools.partial(
            tempfile.NamedTemporaryFile, dir=self.tmp_dir, prefix=PREFIX
        )

    def install(self) -> None:
        global _original
        with _lock:
            if not _active:
                _original = dimse_messages.NamedTemporaryFile
            if self not in _active:
                _active.append(self)
            _apply()

    def uninstall(self) -> None:
        with _lock:
            if self in _active:
                _active.remove(self)
                _apply()

    @staticmethod
    def on_close(event: evt.Event) -> None:
        """EVT_CONN_CLOSE: a C-STORE whose data set was still arriving will never complete;
        its partial file goes now. Runs in the DUL thread, the one that writes that file; a
        complete object has already left the message (pynetdicom resets it) and is untouched."""
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            return
        try:
            partial.close()
            size = Path(partial.name).stat().st_size
            Path(partial.name).unlink()
        except OSError:
            return
        log.warning(
            "association from %s ended during a C-STORE: partial object (%d bytes) removed",
            event.assoc.requestor.ae_title,
            size,
        )


def _apply() -> None:
    """pynetdicom's factory: the newest active instance's, or the original when none is."""
    global _original
    if _active:
        dimse_messages.NamedTemporaryFile = _active[-1]._factory  # type: ignore[assignment]
    elif _original is not None:
        dimse_messages.NamedTemporaryFile = _original
        _original = None
