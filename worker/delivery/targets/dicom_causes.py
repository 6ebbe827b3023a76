"""Why a DICOM peer did not take an object, in words: PS3.8 and PS3.7 codes as text.

A site reads these in the log and in status.json. Each names what the peer said (a rejection's
result, source and reason, an abort's source, a status code and its meaning) so that "rejected"
or "no response" never hides the cause, and keeps the raw value for a search in the standard.
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS, code_to_category

ERROR_COMMENT_MAX = 64  # ErrorComment is LO: a peer that sends more gets cut, not echoed whole


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result (PS3.8 Table 9-21)."""

    PERMANENT = 1
    TRANSIENT = 2

    @property
    def words(self) -> str:
        return "rejected-permanent" if self is RejectResult.PERMANENT else "rejected-transient"


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source (PS3.8 Table 9-21): who in the peer said no."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3

    @property
    def words(self) -> str:
        return {
            RejectSource.SERVICE_USER: "service user",
            RejectSource.SERVICE_PROVIDER_ACSE: "service provider (ACSE)",
            RejectSource.SERVICE_PROVIDER_PRESENTATION: "service provider (presentation)",
        }[self]


# A-ASSOCIATE-RJ Reason/Diag. per source (PS3.8 Table 9-21); the other values are reserved.
REJECT_REASONS: dict[RejectSource, dict[int, str]] = {
    RejectSource.SERVICE_USER: {
        1: "no reason given",
        2: "application context name not supported",
        3: "calling AE title not recognised",
        7: "called AE title not recognised",
    },
    RejectSource.SERVICE_PROVIDER_ACSE: {1: "no reason given", 2: "protocol version not supported"},
    RejectSource.SERVICE_PROVIDER_PRESENTATION: {
        1: "temporary congestion",
        2: "local limit exceeded",
    },
}


class AbortSource(IntEnum):
    """A-ABORT PDU Source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


# A-ABORT Reason/Diag., meaningful when the source is the service provider (PS3.8 Table 9-26).
ABORT_REASONS = {
    0: "reason not specified",
    1: "unrecognised PDU",
    2: "unexpected PDU",
    4: "unrecognised PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}

# Presentation context Result/Reason of an A-ASSOCIATE-AC (PS3.8 Table 9-18).
CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason (provider rejection)",
    3: "abstract syntax not supported (provider rejection)",
    4: "transfer syntaxes not supported (provider rejection)",
}


def rejection_words(result: int | None, source: int | None, diagnostic: int | None) -> str:
    """``result: rejected-permanent, source: service user, reason: calling AE title ...``."""
    try:
        result_words = RejectResult(result).words
    except ValueError:
        result_words = f"unknown result {result}"
    try:
        known_source = RejectSource(source)
    except ValueError:
        return f"result: {result_words}, source: unknown source {source}, reason: {diagnostic}"
    reason = REJECT_REASONS[known_source].get(diagnostic or 0, f"reserved reason {diagnostic}")
    return f"result: {result_words}, source: {known_source.words}, reason: {reason}"


def abort_words(source: int | None, diagnostic: int | None) -> str:
    """An A-ABORT PDU the peer sent: its source, and the reason when its provider aborted."""
    if source == AbortSource.SERVICE_PROVIDER:
        reason = ABORT_REASONS.get(diagnostic or 0, f"reserved reason {diagnostic}")
        return f"A-ABORT, source: service provider (A-P-ABORT), reason: {reason}"
    if source == AbortSource.SERVICE_USER:
        return "A-ABORT, source: service user"
    return f"A-ABORT, source: reserved value {source}"


def context_words(result: int | None) -> str:
    return CONTEXT_RESULTS.get(result or 0, f"result {result}")


def status_words(code: int, error_comment: object = None) -> str:
    """``status 0xA700 (Failure: Refused: Out of Resources), error comment: 'disk full'``."""
    known = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    category, meaning = known if known else (code_to_category(code), "no meaning in PS3.4/PS3.7")
    text = f"status 0x{code:04X} ({category}: {meaning})"
    comment = _printable(error_comment)
    if comment:
        text += f", error comment: {comment!r}"
    return text


def _printable(value: object) -> str:
    """The peer's free text, cut to LO length, with no control characters to forge log lines."""
    if value is None:
        return ""
    text = "".join(c if c.isprintable() else " " for c in str(value)).strip()
    return text[:ERROR_COMMENT_MAX]
