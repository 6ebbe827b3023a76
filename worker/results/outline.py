"""Where a lesion is on its mammogram, as SR spatial coordinates (SCOORD).

Viewers draw a TID 1410 measurement only when its group carries an image region (OHIF's
cornerstone-dicom-sr draws SCOORDs and nothing else), so each ROI's group gets its SEG
segment on the source image as either its bounding box (a closed 5-point POLYLINE, which OHIF
3.x also lists, as a rectangle) or its outline: the boundary of the mask's largest connected
part, a closed polygon of at most ``MAX_POINTS`` vertices (the box when the mask is too thin to
trace). A lesion's fused group is marked by its centre (a POINT).

All coordinates are (column, row) in the source image's pixel space with (0, 0) the top-left
corner of the top-left pixel (PS3.3 C.18.6.1.1), clipped to the image.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import approximate_polygon, find_contours

from model.roi import RoiCrop

MAX_POINTS = 128
# The polygon may leave the traced boundary by at most this many pixels (then more, doubling,
# until it has at most MAX_POINTS vertices): a radiologist sees no difference at mammogram size.
START_TOLERANCE_PX = 1.0


def _mask(roi: RoiCrop) -> np.ndarray:
    mask = np.asarray(roi.mask) > 0
    if not mask.any():
        raise ValueError(f"segment {roi.segment_number} has an empty mask on its image")
    return mask


def lesion_box(roi: RoiCrop) -> np.ndarray:
    """The segment's bounding box, pixel edges included: closed, shape (5, 2)."""
    return _box(_mask(roi), roi)


def lesion_centre(roi: RoiCrop) -> np.ndarray:
    """The centre of the segment's pixels, shape (1, 2)."""
    rows, cols = np.nonzero(_mask(roi))
    centre = [[cols.mean() + roi.box.left + 0.5, rows.mean() + roi.box.top + 0.5]]
    return _clip(np.asarray(centre, dtype=np.float64), roi.image_shape)


def lesion_outline(roi: RoiCrop) -> np.ndarray:
    """Closed (first point = last point) polygon around the segment, shape (n, 2)."""
    mask = _mask(roi)
    # Zero padding closes contours that touch the crop's edge.
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    longest = max(contours, key=len) if contours else np.empty((0, 2))
    polygon = _simplify(longest) if len(longest) >= 4 else longest
    if len(polygon) < 4:  # not a polygon (three corners and the closing point) any more
        return _box(mask, roi)
    rows = polygon[:, 0] - 1 + roi.box.top + 0.5  # -1: the padding; +0.5: pixel centre
    cols = polygon[:, 1] - 1 + roi.box.left + 0.5
    return _clip(np.stack([cols, rows], axis=1), roi.image_shape)


def _simplify(contour: np.ndarray) -> np.ndarray:
    tolerance = START_TOLERANCE_PX
    polygon = approximate_polygon(contour, tolerance)
    while len(polygon) > MAX_POINTS:
        tolerance *= 2
        polygon = approximate_polygon(contour, tolerance)
    if not np.array_equal(polygon[0], polygon[-1]):
        polygon = np.vstack([polygon, polygon[:1]])
    return polygon


def _box(mask: np.ndarray, roi: RoiCrop) -> np.ndarray:
    """The mask's bounding box as a closed rectangle, pixel edges included."""
    rows, cols = np.nonzero(mask)
    top, bottom = rows.min() + roi.box.top, rows.max() + 1 + roi.box.top
    left, right = cols.min() + roi.box.left, cols.max() + 1 + roi.box.left
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    return _clip(np.asarray(corners, dtype=np.float64), roi.image_shape)


def _clip(points: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    height, width = image_shape
    points[:, 0] = np.clip(points[:, 0], 0, width)
    points[:, 1] = np.clip(points[:, 1], 0, height)
    return points.astype(np.float32)
