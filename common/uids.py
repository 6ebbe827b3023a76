"""DICOM UIDs: validity, and the one way this product derives a UID from a name.

Derived UIDs are ``2.25.<decimal of 128 hash bits>`` (PS3.5 B.2): at most 44 characters, always
valid, and the same name always gives the same UID, so a re-run replaces rather than duplicates.
"""

from __future__ import annotations

import hashlib
import re

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): also safe as a file name."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


def uid_from_hex_digest(hex_digest: str) -> str:
    """``2.25.`` and the first 128 bits of a hex digest, as a decimal integer."""
    return f"2.25.{int(hex_digest[:32], 16)}"


def hashed_uid(name: str) -> str:
    """The UID of ``name``: ``2.25.`` and the first 128 bits of its sha256."""
    return uid_from_hex_digest(hashlib.sha256(name.encode("utf-8")).hexdigest())
