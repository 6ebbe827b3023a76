"""The one bilinear resize of the product: crops, Grad-CAM maps, overlays, synthetic fields.

Half-pixel centres (``align_corners=False``), edges clamped, anti-aliased only when an axis
shrinks, so a map that is shrunk for display does not alias and an upsampled one is plain
bilinear.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def resize_bilinear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (2-D) resized to ``shape`` (rows, columns), float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) == tuple(shape):
        return tensor[0, 0].numpy().copy()
    shrink = tensor.shape[-2] > shape[0] or tensor.shape[-1] > shape[1]
    out = F.interpolate(
        tensor, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink
    )
    return out[0, 0].numpy()


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """A square ``image`` resized to ``side`` x ``side``, float32."""
    return resize_bilinear(image, (side, side))
