"""Association limits pynetdicom does not enforce by itself: no peer can deny service.

pynetdicom reads a PDU with blocking ``recv`` calls: a peer that sends half an A-ASSOCIATE-RQ
(or a 4 GB PDU length) parks the reading thread for ever, and the association's own ACSE
timeout then waits for that thread (``Association.kill``) for ever too. Its association limit
counts every connection thread, idle sockets included. Here:

- ``GuardedSocket``: every read has a deadline: the whole A-ASSOCIATE-RQ within the ACSE
  timeout of the connection, then each read within the network timeout. A PDU of unknown type
  or longer than the configured maximum is answered with an A-ABORT and the socket closed.
- ``AssociationGate`` (EVT_REQUESTED): counts negotiated associations only, in total and per
  calling AE title, checks the called AE title and binds calling AE titles to peer addresses;
  every rejection is logged with the calling AE title and the peer address.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

_PDU_TYPES = range(0x01, 0x08)
# An A-ASSOCIATE-RQ of a hundred contexts is ~40 kB: other PDUs may be this long whatever the
# P-DATA maximum is.
MIN_PDU_LIMIT = 1 << 16
_HEADER = 6


class AbortReason(IntEnum):
    """A-ABORT reason/diag. (PS3.8 9.3.8) sent by the service provider (source 2)."""

    UNRECOGNIZED_PDU = 0x01
    INVALID_PARAMETER = 0x06


@dataclass(frozen=True)
class Peer:
    """A calling AE title bound to the addresses it may call from."""

    ae_title: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_peers(entries: Iterable[str]) -> dict[str, Peer]:
    """``AET@address`` entries (address: an IP or a CIDR network), grouped by AE title.

    Raises ValueError naming the entry that is not of that form."""
    peers: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for entry in entries:
        aet, sep, address = entry.rpartition("@")
        if not sep or not aet.strip() or not address.strip():
            raise ValueError(f"{entry!r} is not AET@address")
        try:
            network = ipaddress.ip_network(address.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r}: {address!r} is not an IP address or network") from None
        peers.setdefault(aet.strip(), []).append(network)
    return {aet: Peer(aet, tuple(nets)) for aet, nets in peers.items()}


@dataclass(frozen=True)
class Limits:
    """What NodeSettings says about associations, in the units the guards use."""

    acse_timeout_s: float
    network_timeout_s: float
    max_pdu_bytes: int

    @property
    def pdu_limit(self) -> int:
        return max(self.max_pdu_bytes, MIN_PDU_LIMIT)


class GuardedSocket(AssociationSocket):
    """An AssociationSocket whose reads have deadlines and whose PDU headers are checked.

    Adopted by ``GuardedRequestHandler`` after pynetdicom made the socket (see ``adopt``).
    A violation closes the connection and returns short data: pynetdicom reads that as the
    transport closing (Evt17) and ends the association.
    """

    limits: Limits
    peer: str
    _deadline: float | None
    _expect_header: bool
    _closed_by_guard: bool

    @classmethod
    def adopt(cls, sock: AssociationSocket, limits: Limits, peer: str) -> GuardedSocket:
        sock.__class__ = cls  # pynetdicom made it (and queued Evt5); only the reads change
        guarded = sock  # type: ignore[assignment]
        assert isinstance(guarded, GuardedSocket)
        guarded.limits = limits
        guarded.peer = peer
        guarded._deadline = time.monotonic() + limits.acse_timeout_s
        guarded._expect_header = True
        guarded._closed_by_guard = False
        return guarded

    def recv(self, nr_bytes: int) -> bytearray:
        header = self._expect_header
        data = self._read(nr_bytes)
        if self._closed_by_guard:
            return bytearray()
        if header and len(data) == _HEADER:
            pdu_type, _, length = struct.unpack(">BBL", data)
            if pdu_type not in _PDU_TYPES:
                self._abort(AbortReason.UNRECOGNIZED_PDU, "unknown PDU type")
                return bytearray()
            if length > self.limits.pdu_limit:
                self._abort(AbortReason.INVALID_PARAMETER, f"PDU length {length} over the limit")
                return bytearray()
            self._expect_header = False
        elif not header:
            self._expect_header = True
            self._deadline = None  # a whole PDU (the A-ASSOCIATE-RQ first) has arrived
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        raw = self.socket
        data = bytearray()
        if raw is None:
            return data
        while len(data) < nr_bytes:
            timeout = self.limits.network_timeout_s
            if self._deadline is not None:
                timeout = min(timeout, self._deadline - time.monotonic())
            if timeout <= 0:
                self._close(f"no complete A-ASSOCIATE-RQ within {self.limits.acse_timeout_s:g} s")
                return data
            try:
                raw.settimeout(timeout)
                chunk = raw.recv(min(nr_bytes - len(data), 1 << 16))
            except TimeoutError:
                continue  # the loop decides: deadline passed, or a network timeout below
            except OSError:
                return data
            if not chunk:
                return data
            data.extend(chunk)
            if self._deadline is None and len(data) < nr_bytes:
                # Mid-PDU after association: a stall longer than the network timeout ends it.
                self._deadline = time.monotonic() + self.limits.network_timeout_s
        return data

    def _abort(self, reason: AbortReason, what: str) -> None:
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = int(reason)
        try:
            assert self.socket is not None
            self.socket.sendall(pdu.encode())
        except (OSError, AssertionError):
            pass
        self._close(f"{what}: A-ABORT sent")

    def _close(self, why: str) -> None:
        log.warning("connection from %s closed: %s", self.peer, why)
        self._closed_by_guard = True
        self._shutdown_socket()
        self._is_connected = False


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler, with the association's socket guarded."""

    server: GuardedServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        assert assoc.dul.socket is not None
        GuardedSocket.adopt(assoc.dul.socket, self.server.limits, peer)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """A ThreadedAssociationServer whose connections use GuardedRequestHandler."""

    limits: Limits

    def __init__(
        self,
        ae: ApplicationEntity,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[evt.EventHandlerType] | None = None,
        *,
        limits: Limits,
    ) -> None:
        self.limits = limits
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context,
            evt_handlers,
            request_handler=GuardedRequestHandler,
        )


@dataclass
class AssociationGate:
    """EVT_REQUESTED: which association requests are let in, counted and logged."""

    ae_title: str
    max_associations: int
    max_per_aet: int
    check_called_aet: bool = True
    allowed_calling_aets: tuple[str, ...] = ()
    peers: dict[str, Peer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: dict[int, tuple[Association, str]] = field(default_factory=dict)

    def handle(self, event: evt.Event) -> None:
        """pynetdicom logs and ignores a notification handler's exception, which would let
        the association in: a failure here rejects it instead."""
        try:
            self._decide(event.assoc)
        except Exception as exc:  # noqa: BLE001 - reject, never accept by accident
            log.error("association gate failed (%s): rejecting", type(exc).__name__)
            if not event.assoc.is_rejected:
                self._reject(event.assoc, (0x02, 0x03, 0x02), "gate error")

    def _decide(self, assoc: Association) -> None:
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        address = str(assoc.requestor.address)
        # (result, source, diagnostic) of A-ASSOCIATE-RJ, PS3.8 7.1.1.9
        if self.check_called_aet and called != self.ae_title:
            return self._reject(assoc, (0x01, 0x01, 0x07), "called AE title not this node's")
        allowed = set(self.allowed_calling_aets) | set(self.peers)
        if self.allowed_calling_aets and calling not in allowed:
            return self._reject(assoc, (0x01, 0x01, 0x03), "calling AE title not allowed")
        peer = self.peers.get(calling)
        if peer is not None and not _address_in(address, peer.networks):
            return self._reject(assoc, (0x01, 0x01, 0x03), "calling AE title not bound to address")
        with self._lock:
            self._prune()
            if len(self._live) >= self.max_associations:
                return self._reject(assoc, (0x02, 0x03, 0x02), "maximum associations reached")
            same = sum(1 for _, aet in self._live.values() if aet == calling)
            if same >= self.max_per_aet:
                return self._reject(assoc, (0x02, 0x03, 0x02), "maximum for this AE title reached")
            self._live[id(assoc)] = (assoc, calling)

    def live(self) -> int:
        with self._lock:
            self._prune()
            return len(self._live)

    def _prune(self) -> None:
        for key, (assoc, _) in list(self._live.items()):
            if not assoc.is_alive() or assoc.is_released or assoc.is_aborted:
                del self._live[key]

    @staticmethod
    def _reject(assoc: Association, rsd: tuple[int, int, int], why: str) -> None:
        rq = assoc.requestor.primitive
        log.warning(
            "association from %r at %s rejected: %s",
            str(rq.calling_ae_title).strip(),
            assoc.requestor.address,
            why,
        )
        assoc.acse.send_reject(*rsd)
        assoc.is_rejected = True
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # as pynetdicom does after its own rejections


def _address_in(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
