"""A DICOM destination: one association, a C-STORE per object (PS3.4 Annex B).

Every wait is bounded by the destination's timeouts (TCP connect and ACSE, DIMSE, network), and
a failure says what the peer did: rejected the association (result, source, reason), aborted it
(source), accepted none of the presentation contexts of a SOP class, answered a failure status
(code, meaning, ErrorComment), went silent, or was never reached. pynetdicom reports most of
this on the Association and its events rather than by raising, so it is read from there.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ

from common.settings import Destination
from common.tls import TlsConfigError, client_tls_args
from worker.delivery.targets.base import DeliveryError
from worker.delivery.targets.dicom_causes import (
    abort_words,
    context_words,
    rejection_words,
    status_words,
)

log = logging.getLogger(__name__)

# Success (0x0000) and the C-STORE warnings that still mean "stored" (PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
# pynetdicom logs, and does not raise, why a TCP connect failed; this logger carries it.
TRANSPORT_LOGGER = "pynetdicom.transport"
CONNECT_ERROR_PREFIX = "TCP Initialisation Error:"
# A wait that ended this close to its limit ended because of the limit (timer resolution).
TIMER_SLACK_S = 0.05


def peer_name(destination: Destination) -> str:
    """How logs and reasons name a peer: AE title @ host:port."""
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def store_scu(destination: Destination, paths: Sequence[Path], *, calling_ae: str) -> None:
    """C-STORE each file over one association, proposing each object's SOP class.

    Returns once the peer stored every object (success or warning); otherwise raises a
    DeliveryError whose reason names the cause. The association is released when it is still
    up, and never waited on once the peer rejected or aborted it.
    """
    if not (destination.ae_title and destination.host and destination.port):
        raise DeliveryError(destination.name, "neither a folder nor ae_title + host + port")
    datasets = [_read(destination, path) for path in paths]
    try:
        tls_args = client_tls_args(destination)
    except TlsConfigError as exc:
        raise DeliveryError(destination.name, f"TLS not configured: {exc}") from exc
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = destination.acse_timeout_s
    ae.dimse_timeout = destination.dimse_timeout_s
    ae.network_timeout = destination.network_timeout_s
    for sop_class, syntaxes in _requested_contexts(datasets).items():
        ae.add_requested_context(sop_class, syntaxes)
    watch = _Watch(destination.network_timeout_s)
    assoc = _associate(ae, destination, watch, tls_args)
    try:
        _check_contexts(destination, assoc, datasets)
        for ds in datasets:
            _store_one(destination, assoc, watch, ds)
    finally:
        if assoc.is_established:  # the peer answered the last request: it can answer this
            assoc.release()  # within acse_timeout_s, or pynetdicom aborts


def _read(destination: Destination, path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise DeliveryError(
            destination.name, f"recorded object {path.name} unreadable: {exc}"
        ) from exc


def _requested_contexts(datasets: Sequence[Dataset]) -> dict[str, list[str]]:
    """Each SOP class with the objects' own transfer syntax and both uncompressed ones."""
    contexts: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), [])
        for syntax in (
            ds.file_meta.TransferSyntaxUID,
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
        ):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return contexts


class _Watch:
    """What the association's events say and its state does not: whether TCP connected, and
    the A-ABORT PDU the peer sent (pynetdicom turns it into a bare ``is_aborted``).

    Its handlers run in pynetdicom's DUL thread as the PDU is decoded, before the DUL wakes the
    caller, so the caller reads a complete record.
    """

    def __init__(self, network_timeout_s: float) -> None:
        self.network_timeout_s = network_timeout_s
        self.connected = False
        self.peer_abort: tuple[int | None, int | None] | None = None

    def handlers(self) -> list[tuple[evt.EventType, Callable[..., Any]]]:
        return [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_PDU_RECV, self._pdu)]

    def _opened(self, event: evt.Event) -> None:
        self.connected = True
        # pynetdicom sends in blocking mode with no limit: a peer that stops reading would hold
        # its DUL thread, and the abort that ends a DIMSE timeout, for ever. A send timeout
        # makes that send fail after network_timeout_s, which closes the connection.
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if isinstance(sock, socket.socket):
            seconds = int(self.network_timeout_s)
            micros = int((self.network_timeout_s - seconds) * 1_000_000)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros)
            )

    def _pdu(self, event: evt.Event) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ABORT_RQ):
            self.peer_abort = (pdu.source, pdu.reason_diagnostic)


class _ConnectErrors(logging.Handler):
    """Keeps pynetdicom's "TCP Initialisation Error" text per thread, for the reason."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.by_thread: dict[int | None, str] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(CONNECT_ERROR_PREFIX):
            with self._lock:
                self.by_thread[record.thread] = message.removeprefix(CONNECT_ERROR_PREFIX).strip()


def _associate(
    ae: AE,
    destination: Destination,
    watch: _Watch,
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> Association:
    """An established association, or a DeliveryError saying why the peer did not give one.

    With ``tls_args`` the connection is DICOM TLS; a handshake that fails (the peer's
    certificate untrusted or not for its name, no common TLS version) is reported as such."""
    where = peer_name(destination)
    capture = _ConnectErrors()
    transport_log = logging.getLogger(TRANSPORT_LOGGER)
    transport_log.addHandler(capture)
    started = time.monotonic()
    try:
        assoc = ae.associate(
            str(destination.host),
            int(destination.port or 0),
            ae_title=str(destination.ae_title),
            evt_handlers=watch.handlers(),
            tls_args=tls_args,
        )
    finally:
        transport_log.removeHandler(capture)
    if assoc.is_established:
        return assoc
    elapsed = time.monotonic() - started
    answer = assoc.acceptor.primitive
    error = capture.by_thread.get(assoc.dul.ident, "")
    if assoc.is_rejected and answer is not None:
        why = (
            "rejected ("
            + rejection_words(answer.result, answer.result_source, answer.diagnostic)
            + ")"
        )
    elif not watch.connected and tls_args is not None and _is_tls_error(error):
        why = f"not opened: TLS handshake failed ({error})"
    elif not watch.connected:
        why = "not opened: no TCP connection" + (
            f" ({error})" if error else f" within acse_timeout_s = {destination.acse_timeout_s:g} s"
        )
    elif answer is not None and answer.result == 0:
        refused = "; ".join(
            f"{_sop_name(cx.abstract_syntax)}: {context_words(cx.result)}"
            for cx in assoc.rejected_contexts
        )
        why = f"accepted with no presentation context the node proposed ({refused})"
    elif watch.peer_abort is not None:
        why = "aborted by the peer before it answered (" + abort_words(*watch.peer_abort) + ")"
    elif elapsed >= destination.acse_timeout_s - TIMER_SLACK_S:
        why = (
            "request not answered within acse_timeout_s = "
            f"{destination.acse_timeout_s:g} s; aborted by the node"
        )
    else:
        why = "request not answered: the peer closed the connection (A-P-ABORT)"
        if tls_args is not None:  # TLS 1.3: a refused client certificate shows only now
            why += "; over TLS, the peer may have refused this node's certificate"
    raise DeliveryError(destination.name, f"association with {where} {why}")


def _is_tls_error(text: str) -> bool:
    """pynetdicom's connect error text is an ssl.SSLError's ("[SSL: ...]", "... (_ssl.c:...)")."""
    return "[SSL" in text or "_ssl.c" in text or "SSL" in text.split(":", 1)[0]


def _check_contexts(
    destination: Destination, assoc: Association, datasets: Sequence[Dataset]
) -> None:
    """Every object's SOP class has an accepted context, or nothing is sent: say which not."""
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    refused = {
        str(cx.abstract_syntax): context_words(cx.result)
        for cx in assoc.rejected_contexts
        if str(cx.abstract_syntax) not in accepted
    }
    missing = sorted({str(ds.SOPClassUID) for ds in datasets} - accepted)
    if missing:
        names = "; ".join(
            f"{_sop_name(uid)}: {refused.get(uid, 'not in the answer')}" for uid in missing
        )
        raise DeliveryError(
            destination.name,
            f"{peer_name(destination)} accepted no presentation context for {names}",
        )


def _store_one(destination: Destination, assoc: Association, watch: _Watch, ds: Dataset) -> None:
    where = peer_name(destination)
    uid = str(ds.SOPInstanceUID)
    if not assoc.is_established:  # the peer ended it after the previous object
        raise DeliveryError(destination.name, _ended(destination, watch, uid, 0.0))
    started = time.monotonic()
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, AttributeError) as exc:  # no accepted context fits the object's syntax
        raise DeliveryError(destination.name, f"object {uid} not sent to {where}: {exc}") from exc
    except RuntimeError as exc:  # the association ended as the send began
        raise DeliveryError(destination.name, _ended(destination, watch, uid, 0.0)) from exc
    code = status.get("Status")
    if code is None:
        elapsed = time.monotonic() - started
        # The association is over, but pynetdicom's reactor may not have marked it so yet: a
        # release now would wait acse_timeout_s for an answer that cannot come. An abort marks
        # it at once and returns (a no-op when pynetdicom already sent one).
        assoc.abort()
        raise DeliveryError(destination.name, _ended(destination, watch, uid, elapsed))
    code = int(code)
    if code not in STORED_STATUSES:
        raise DeliveryError(
            destination.name,
            f"{where} refused object {uid}: {status_words(code, status.get('ErrorComment'))}",
        )
    if code != 0x0000:
        log.warning(
            "%s stored object %s with a warning: %s",
            where,
            uid,
            status_words(code, status.get("ErrorComment")),
        )


def _ended(destination: Destination, watch: _Watch, uid: str, elapsed: float) -> str:
    """Why no C-STORE response came for object ``uid`` after ``elapsed`` seconds."""
    where = peer_name(destination)
    if watch.peer_abort is not None:
        return f"{where} aborted the association at object {uid} ({abort_words(*watch.peer_abort)})"
    if elapsed >= destination.dimse_timeout_s - TIMER_SLACK_S:
        return (
            f"no C-STORE response from {where} for object {uid} within dimse_timeout_s = "
            f"{destination.dimse_timeout_s:g} s; association aborted by the node"
        )
    if elapsed >= destination.network_timeout_s - TIMER_SLACK_S:
        return (
            f"{where} read none of object {uid} for network_timeout_s = "
            f"{destination.network_timeout_s:g} s; connection closed by the node (A-P-ABORT)"
        )
    return f"{where} closed the connection without a C-STORE response for object {uid} (A-P-ABORT)"


def _sop_name(uid: object) -> str:
    known = UID(str(uid))
    return f"{known.name} ({known})" if known.name != str(known) else str(known)
