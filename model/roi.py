"""Data passed between the pipeline stages: a lesion's crop in, its predictions out.

Everything here is plain numpy and built-in types, so that the Celery stages of the node can
serialise it into messages and run on hosts that cannot see the spool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SquareBox:
    """A square in source-image pixel coordinates; it may extend past the image (padded)."""

    top: int
    left: int
    size: int

    @property
    def bottom(self) -> int:
        return self.top + self.size

    @property
    def right(self) -> int:
        return self.left + self.size


@dataclass
class RoiCrop:
    """One lesion (a SEG segment) on one MG image, cropped and ready for the networks.

    ``network_input`` is the profile-preprocessed square at the model's input size (float32,
    HxW). ``display`` is the same square at native resolution, windowed for viewing (uint8,
    MONOCHROME2, outside-image padding 0) for the Secondary Capture. ``mask`` is the lesion
    mask over the same native square.
    """

    segment_number: int
    segment_label: str
    source_sop_instance_uid: str
    source_frame_number: int
    image_shape: tuple[int, int]
    box: SquareBox
    network_input: np.ndarray
    display: np.ndarray
    mask: np.ndarray


@dataclass
class RoiPrediction:
    """Every task's class probabilities (in ``model.tasks`` order) and the Grad-CAM map.

    ``cam`` is in [0, 1], float32, over the ROI's native square (``RoiCrop.box.size`` pixels
    on each side), for the predicted five-class subtype.
    """

    probabilities: dict[str, np.ndarray]
    cam: np.ndarray
    cam_target_layer: str = "features.denseblock4"
    extra: dict[str, object] = field(default_factory=dict)

    def predicted_index(self, task: str) -> int:
        return int(np.argmax(self.probabilities[task]))
