"""worker.results.outline: the lesion outline the SR carries as its TID 1410 image region."""

from __future__ import annotations

import numpy as np
import pytest

from model.roi import RoiCrop, SquareBox
from worker.results.outline import MAX_POINTS, lesion_outline


def crop(mask: np.ndarray, top: int, left: int, image_shape: tuple[int, int]) -> RoiCrop:
    size = mask.shape[0]
    return RoiCrop(
        segment_number=1,
        segment_label="Lesion 1",
        source_sop_instance_uid="1.2.3",
        source_frame_number=1,
        image_shape=image_shape,
        box=SquareBox(top=top, left=left, size=size),
        network_input=np.zeros((8, 8), np.float32),
        display=np.zeros((size, size), np.uint8),
        mask=mask,
    )


def area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def test_a_square_lesion_is_outlined_by_its_pixel_edges_in_image_coordinates() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 5:25] = 1  # rows 10-19, columns 5-24 of the crop
    points = lesion_outline(crop(mask, top=100, left=300, image_shape=(1000, 800)))
    assert np.array_equal(points[0], points[-1])
    # Traced through the boundary pixels' centres: columns 305.5..324.5, rows 110.5..119.5.
    assert points[:, 0].min() == pytest.approx(305.5, abs=0.51)
    assert points[:, 0].max() == pytest.approx(324.5, abs=0.51)
    assert points[:, 1].min() == pytest.approx(110.5, abs=0.51)
    assert points[:, 1].max() == pytest.approx(119.5, abs=0.51)
    assert area(points) == pytest.approx(200, rel=0.15)


def test_a_lesion_past_the_image_corner_is_clipped_to_the_image() -> None:
    mask = np.zeros((30, 30), np.uint8)
    yy, xx = np.mgrid[0:30, 0:30]
    mask[(yy - 10) ** 2 + (xx - 10) ** 2 <= 64] = 1
    points = lesion_outline(crop(mask, top=-12, left=-12, image_shape=(500, 400)))
    assert (points >= 0).all()
    assert points[:, 0].max() <= 400 and points[:, 1].max() <= 500


def test_a_ragged_large_lesion_is_kept_under_the_vertex_limit() -> None:
    rng = np.random.default_rng(3)
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    radius = 300 + rng.integers(-40, 40, angles.size)
    yy, xx = np.mgrid[0:800, 0:800]
    theta = np.arctan2(yy - 400, xx - 400) % (2 * np.pi)
    limit = radius[(theta / (2 * np.pi) * angles.size).astype(int) % angles.size]
    mask = ((yy - 400) ** 2 + (xx - 400) ** 2 <= limit**2).astype(np.uint8)
    points = lesion_outline(crop(mask, top=0, left=0, image_shape=(800, 800)))
    assert len(points) <= MAX_POINTS + 1
    assert area(points) == pytest.approx(mask.sum(), rel=0.05)


def test_a_one_pixel_lesion_gets_its_box() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[7, 9] = 1
    points = lesion_outline(crop(mask, top=50, left=60, image_shape=(200, 200)))
    assert points.tolist() == [[69, 57], [70, 57], [70, 58], [69, 58], [69, 57]]


def test_an_empty_mask_is_an_error_that_names_the_segment() -> None:
    with pytest.raises(ValueError, match="segment 1 has an empty mask"):
        lesion_outline(crop(np.zeros((8, 8), np.uint8), top=0, left=0, image_shape=(64, 64)))
