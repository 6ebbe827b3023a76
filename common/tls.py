"""DICOM TLS (PS3.15 B.9, BCP 195): the SSL contexts of the SCP's port and of delivery.

TLS 1.2 is the floor on both sides, and every certificate is checked against the configured CA
(or, for a destination without one, the system's trust store): an untrusted or missing peer
certificate ends the connection in the handshake, before any DICOM is read.

The server context does its handshake lazily, in the association's own thread: pynetdicom wraps
each accepted socket in its single accept loop, and a handshake there would let one client that
connects and says nothing hold up every other association.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

from common.settings import Destination, TlsSettings

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites as BCP 195 recommends them (forward secrecy, AEAD); TLS 1.3 has only such.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"


log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


class _ServerSocket(ssl.SSLSocket):
    """An accepted connection whose handshake, done by its first read, says why it failed: a
    plain DICOM client, an untrusted or missing certificate, an old TLS version. (pynetdicom
    only sees the connection close.)"""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            if not getattr(self, "_refusal_logged", False):
                self._refusal_logged = True
                reason = str(exc.reason or exc)
                hint = _HINTS.get(reason, "")
                log.warning("TLS connection from %s refused: %s%s", _peer(self), reason, hint)
            raise


# OpenSSL's reasons for the refusals an admin meets, in words.
_HINTS = {
    "WRONG_VERSION_NUMBER": " (not TLS: a plain DICOM client?)",
    "HTTP_REQUEST": " (not TLS: an HTTP client)",
    "UNSUPPORTED_PROTOCOL": " (TLS below 1.2)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": " (no client certificate; require_client_cert is on)",
    "CERTIFICATE_VERIFY_FAILED": " (client certificate not issued by [tls] ca_file, or expired)",
    "NO_SHARED_CIPHER": " (no TLS 1.2 cipher suite in common)",
}


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "(peer gone)"
    return f"{host}:{port}"


class _LazyHandshakeContext(ssl.SSLContext):
    """A server context whose sockets shake hands on their first read, not on accept."""

    sslsocket_class = _ServerSocket

    def wrap_socket(  # type: ignore[override]
        self, sock: socket.socket, server_side: bool = False, **kwargs: object
    ) -> ssl.SSLSocket:
        if server_side:
            kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, server_side=server_side, **kwargs)  # type: ignore[arg-type]


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SCP port's context: the node's certificate, TLS 1.2+, client certificates from
    ``ca_file`` required when ``require_client_cert``."""
    if tls.certificate is None or tls.private_key is None:
        raise TlsConfigError("[tls] certificate and private_key are required when TLS is enabled")
    context = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    _load_chain(context, tls.certificate, tls.private_key, "[tls]")
    if tls.ca_file is not None:
        _load_ca(context, tls.ca_file, "[tls] ca_file")
    if tls.require_client_cert:
        if tls.ca_file is None:
            raise TlsConfigError("[tls] require_client_cert needs ca_file (the CA of the callers)")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(destination: Destination) -> ssl.SSLContext:
    """A destination's context: its server certificate verified (CA and name), TLS 1.2+, and
    the node's own certificate presented when one is configured (mutual authentication)."""
    label = f"[[destinations]] {destination.name!r}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    if destination.tls_ca_file is not None:
        _load_ca(context, destination.tls_ca_file, f"{label} tls_ca_file")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (destination.tls_certificate is None) != (destination.tls_private_key is None):
        raise TlsConfigError(f"{label}: tls_certificate and tls_private_key go together")
    if destination.tls_certificate is not None and destination.tls_private_key is not None:
        _load_chain(context, destination.tls_certificate, destination.tls_private_key, label)
    return context


def client_tls_args(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for a destination: (context, name its certificate must
    carry), or None for plain DICOM."""
    if not destination.tls:
        return None
    return client_context(destination), str(destination.tls_server_name or destination.host)


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, label: str) -> None:
    for path in (cert, key):
        if not Path(path).is_file():
            raise TlsConfigError(f"{label}: {path} not found")
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"{label}: certificate {cert} with key {key} not usable "
            f"(PEM, unencrypted key, the pair must match): {exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: Path, label: str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except FileNotFoundError:
        raise TlsConfigError(f"{label}: {ca_file} not found") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{label}: {ca_file} holds no usable PEM certificate: {exc}") from None
