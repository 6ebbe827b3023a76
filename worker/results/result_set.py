"""The objects built for one unit: one SR, a Secondary Capture per ROI, a heatmap SEG per image."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset


@dataclass
class ResultSet:
    sr: Dataset
    secondary_captures: list[Dataset] = field(default_factory=list)
    heatmap_segs: list[Dataset] = field(default_factory=list)

    def all(self) -> list[Dataset]:
        return [self.sr, *self.secondary_captures, *self.heatmap_segs]
