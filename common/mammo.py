"""Mammography's closed sets: the standard views and their SNOMED CT codes (CID 4014)."""

from __future__ import annotations

from enum import StrEnum


class View(StrEnum):
    """View Position as mammography units write it."""

    CC = "CC"
    MLO = "MLO"

    @property
    def snomed(self) -> tuple[str, str]:
        """(code value, code meaning) in SCT, as ViewCodeSequence carries it."""
        return _SNOMED[self]


_SNOMED = {
    View.CC: ("399162004", "cranio-caudal"),
    View.MLO: ("399368009", "medio-lateral oblique"),
}
