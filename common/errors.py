"""Errors for bad input: each names the DICOM object (by UID) and the reason."""

from __future__ import annotations


class InputError(ValueError):
    """An input object cannot be used; ``uid`` names it so the log line and CLI can say which."""

    def __init__(self, uid: str | None, reason: str) -> None:
        self.uid = uid
        self.reason = reason
        where = f"object {uid}" if uid else "input"
        super().__init__(f"{where}: {reason}")


class BundleError(ValueError):
    """A model bundle is malformed or does not match its recorded digests."""
