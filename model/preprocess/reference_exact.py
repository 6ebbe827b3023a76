"""The ``reference-exact`` crop and resize: the authors' own, defects included.

Their published weights were trained on exactly these crops, so re-evaluating those weights on
their kind of data needs them; anything new should use ``default`` (see docs/profiles.md).
Reconstructed from their data_process.py (read_nii, set_bound, bound_adjust, get_roi) and
data_loader.py (albumentations Resize and Normalize), on the 8-bit CLAHE image of ``reference``:

1. Bounding box of mask > 0: top/left are the first row/column, bottom/right the LAST ones
   (inclusive), each moved out by the bound.
2. height = bottom - top and width = right - left (one pixel short of the inclusive extent);
   the shorter side is grown up (top) or to the left only, never centred.
3. Clamp with ``x, y = image.shape``, i.e. x = rows and y = columns, swapped: top < 0 moves the
   square down, left < 0 moves it right, right > rows moves it left, bottom > columns moves it
   up. Each move keeps the side, so the region stays a square of side max(height, width).
4. ``image[top:bottom, left:right]``: exclusive end; numpy silently drops what lies past the
   bottom/right edge, so the crop is then a rectangle (the clamp that should have stopped that
   compared the wrong axis), and step 5 stretches it to a square.
5. ``cv2.resize(crop, (n, n), interpolation=INTER_LINEAR)`` on uint8 (no antialiasing, uint8
   out), then ``(x - 0.485 * 255) / (0.229 * 255)`` in float32 (Normalize with one channel
   uses the first mean and std).

Readings where their description leaves room (the most literal one each time):

- The mask is what the caller gives: one SEG segment on one image in the node. Their nii masks
  could hold every lesion of the image; pass the union to ``lesion_input`` for that.
- Equal height and width: their ``else`` branch grows the top by zero, i.e. nothing.
- A clamp that leaves top or left negative (the square is larger than the image's short side):
  numpy would index from the far end and crop an empty or unrelated strip. That is refused with
  ValueError instead of reproduced; so is an empty crop (a one-pixel lesion with bound 0), on
  which their cv2.resize raises.

What the node reports: ``RoiCrop.box`` is their square after the clamp, ``SquareBox(top, left,
side)``. When it lies inside the image it is exactly what the network saw, and the Grad-CAM
map and the display crop line up with it. When it runs past the bottom edge (images wider than
tall) or the right edge (taller than wide), the network saw only ``box`` cut to the image,
stretched to a square; the node still lays the map over the whole box (the part outside the
image is padding in the display and dropped from the heatmap SEG), so along the cut axis the
map is stretched by side / visible length. A warning is logged for such crops and for crops
that cut the lesion.
"""

from __future__ import annotations

import logging

import numpy as np

from model.preprocess.intensity import NORM_MEAN, NORM_STD
from model.roi import SquareBox

log = logging.getLogger(__name__)

_MEAN_255 = np.float32(NORM_MEAN * 255.0)
_INV_STD_255 = np.float32(1.0 / (NORM_STD * 255.0))


def authors_square(mask: np.ndarray, bound_size: int) -> SquareBox:
    """Their square for ``mask`` (bool, the image's grid): steps 1-3 of the module docstring.

    ValueError where their crop would be empty or index from the image's far end.
    """
    rows_hit = np.flatnonzero(mask.any(axis=1))
    cols_hit = np.flatnonzero(mask.any(axis=0))
    if rows_hit.size == 0:
        raise ValueError("the lesion mask is empty")
    r0, r1, c0, c1 = int(rows_hit[0]), int(rows_hit[-1]), int(cols_hit[0]), int(cols_hit[-1])
    top, bottom = r0 - bound_size, r1 + bound_size
    left, right = c0 - bound_size, c1 + bound_size
    height, width = bottom - top, right - left
    if height > width:
        left -= height - width
    else:
        top -= width - height
    x, y = mask.shape  # their swap: x is the number of rows, y of columns
    if top < 0:
        bottom -= top
        top = 0
    if left < 0:
        right -= left
        left = 0
    if right > x:
        left -= right - x
        right = x
    if bottom > y:
        top -= bottom - y
        bottom = y
    side = bottom - top
    if side < 1:
        raise ValueError("the authors' crop is empty (a one-pixel lesion with bound 0)")
    if top < 0 or left < 0:
        raise ValueError(
            f"the authors' {side} px square does not fit their clamp on a {x}x{y} image "
            f"(start {top}, {left}: numpy would wrap to the far edge); not reproduced"
        )
    box = SquareBox(top=top, left=left, size=side)
    _warn_about(box, (r0, r1, c0, c1), mask.shape)
    return box


def authors_input(network_image: np.ndarray, box: SquareBox, input_size: int) -> np.ndarray:
    """Steps 4-5: ``network_image`` (the 8-bit CLAHE image / 255) cut at ``box`` as numpy
    slicing does, resized by OpenCV INTER_LINEAR on uint8, normalised; float32."""
    import cv2

    if box.top < 0 or box.left < 0:
        raise ValueError(f"{box} starts outside the image; not a reference-exact box")
    window = network_image[box.top : box.bottom, box.left : box.right]
    crop = np.round(window * 255.0).astype(np.uint8)
    resized = cv2.resize(crop, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32) - _MEAN_255) * _INV_STD_255


def _warn_about(box: SquareBox, lesion: tuple[int, int, int, int], shape: tuple[int, ...]) -> None:
    r0, r1, c0, c1 = lesion
    seen_rows = min(box.bottom, shape[0]) - box.top
    seen_cols = min(box.right, shape[1]) - box.left
    if (seen_rows, seen_cols) != (box.size, box.size):
        log.warning(
            "reference-exact: the authors' %d px square at (%d, %d) is cut by the image edge; "
            "the network sees %dx%d stretched to a square",
            box.size,
            box.top,
            box.left,
            seen_rows,
            seen_cols,
        )
    inside = box.top <= r0 and r1 < box.top + seen_rows and box.left <= c0
    if not (inside and c1 < box.left + seen_cols):
        log.warning(
            "reference-exact: the authors' crop rows %d-%d, columns %d-%d cuts the lesion "
            "(rows %d-%d, columns %d-%d)",
            box.top,
            box.top + seen_rows - 1,
            box.left,
            box.left + seen_cols - 1,
            r0,
            r1,
            c0,
            c1,
        )
