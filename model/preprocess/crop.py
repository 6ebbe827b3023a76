"""The lesion's square: bounding box grown by the bound size, centred, padded at borders.

The authors grew the box only up/left and clamped with rows and columns swapped, cutting lesions
near the bottom/right edge out of their crops; here the square is centred on the lesion and any
part outside the image is padded (0 = background), so the lesion is always whole and central.
"""

from __future__ import annotations

import numpy as np

from model.roi import SquareBox


def lesion_square(mask: np.ndarray, bound_size: int) -> SquareBox:
    """Centred square around the mask's bounding box grown by ``bound_size`` on every side."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    side = max(r1 - r0 + 1, c1 - c0 + 1) + 2 * bound_size
    top = (r0 + r1 + 1) // 2 - side // 2
    left = (c0 + c1 + 1) // 2 - side // 2
    return SquareBox(top=top, left=left, size=side)


def crop_square(image: np.ndarray, box: SquareBox, fill: float = 0) -> np.ndarray:
    """``image`` inside ``box``; the part of the box outside the image is ``fill``."""
    out = np.full((box.size, box.size), fill, dtype=image.dtype)
    r0, c0 = max(box.top, 0), max(box.left, 0)
    r1, c1 = min(box.bottom, image.shape[0]), min(box.right, image.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - box.top : r1 - box.top, c0 - box.left : c1 - box.left] = image[r0:r1, c0:c1]
    return out
