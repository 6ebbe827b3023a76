"""The preprocessing profiles a bundle may name (model/preprocess/; docs/profiles.md).

Torch-free, so that bundle.json can be validated by processes that never load a network.
"""

from __future__ import annotations

from enum import StrEnum


class Profile(StrEnum):
    DEFAULT = "default"  # Modality LUT, VOI LUT / window, MONOCHROME1 inverted
    REFERENCE = "reference"  # the authors' intensities (raw, CLAHE, 8-bit), our centred crop
    REFERENCE_EXACT = "reference-exact"  # reference + their exact crop and resize, defects too

    @classmethod
    def parse(cls, value: str) -> Profile:
        """``value`` as a Profile; ValueError naming the known ones otherwise."""
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(cls)
            raise ValueError(f"unknown preprocessing profile {value!r}; known: {known}") from None
