"""Image-plane augmentations on a known asymmetric pattern.

Conventions checked here (train/augment.py): rows grow downwards as displayed; a positive angle
turns the content clockwise; a positive x-shear moves rows below the centre to the left.
"""

from __future__ import annotations

import math

import pytest
import torch

from train.augment import (
    BACKGROUND,
    AugmentSettings,
    apply_draw,
    build_augment,
    draw_params,
)

SIDE = 64
CENTRE = (SIDE - 1) / 2  # torchvision's centre of rotation and shear, in pixel indices
BLOCK = (slice(8, 20), slice(10, 24))  # top-left quadrant
ONLY_FLIPS = AugmentSettings(rotation_deg=(0.0, 0.0), shear_x_deg=(0.0, 0.0))


def pattern(bar: bool = True) -> torch.Tensor:
    """(1, SIDE, SIDE): background, a bright block top-left and a bar along the left edge."""
    image = torch.full((1, SIDE, SIDE), BACKGROUND)
    image[0, BLOCK[0], BLOCK[1]] = 2.0
    if bar:
        image[0, :, 0:3] = 1.0
    return image


def centroid(image: torch.Tensor, above: float = 1.5) -> tuple[float, float]:
    """(row, column) centroid of the pixels brighter than ``above`` (the block only)."""
    plane = image[0].double()
    weight = (plane - BACKGROUND).clamp(min=0) * (plane > above)
    rows = torch.arange(SIDE, dtype=torch.float64)[:, None]
    cols = torch.arange(SIDE, dtype=torch.float64)[None, :]
    total = weight.sum()
    return float((weight * rows).sum() / total), float((weight * cols).sum() / total)


def weighted_centroid(image: torch.Tensor) -> tuple[float, float]:
    """Centroid of everything above the background (bilinear keeps it for the block alone)."""
    plane = image[0].double() - BACKGROUND
    rows = torch.arange(SIDE, dtype=torch.float64)[:, None]
    cols = torch.arange(SIDE, dtype=torch.float64)[None, :]
    total = plane.sum()
    return float((plane * rows).sum() / total), float((plane * cols).sum() / total)


def polar(point: tuple[float, float]) -> tuple[float, float]:
    """(radius, angle in degrees) about the centre, x to the right, y downwards."""
    dy, dx = point[0] - CENTRE, point[1] - CENTRE
    return math.hypot(dx, dy), math.degrees(math.atan2(dy, dx))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_horizontal_flip_moves_the_block_left_right_only() -> None:
    image = pattern()
    settings = AugmentSettings(hflip_p=1.0, vflip_p=0.0, rotation_deg=(0, 0), shear_x_deg=(0, 0))
    out = build_augment(settings)(image)
    row, col = centroid(image)
    new_row, new_col = centroid(out)
    assert new_row == pytest.approx(row)
    assert new_col == pytest.approx(SIDE - 1 - col)
    assert (out[0, :, -3:] == 1.0).all() and (out[0, :, :3] != 1.0).all()  # bar: left -> right
    assert torch.equal(out, image.flip(-1))


def test_vertical_flip_moves_the_block_top_bottom_only() -> None:
    image = pattern()
    settings = AugmentSettings(hflip_p=0.0, vflip_p=1.0, rotation_deg=(0, 0), shear_x_deg=(0, 0))
    out = build_augment(settings)(image)
    row, col = centroid(image)
    new_row, new_col = centroid(out)
    assert new_col == pytest.approx(col)
    assert new_row == pytest.approx(SIDE - 1 - row)
    assert (out[0, :, 0:3] == 1.0).all()  # the bar along the left edge stays there
    assert torch.equal(out, image.flip(-2))


@pytest.mark.parametrize("angle", [15.0, -15.0, 20.0])
def test_rotation_turns_the_block_about_the_centre_clockwise(angle: float) -> None:
    image = pattern(bar=False)
    settings = AugmentSettings(
        hflip_p=0.0, vflip_p=0.0, rotation_deg=(angle, angle), shear_x_deg=(0.0, 0.0)
    )
    out = build_augment(settings)(image)
    radius, before = polar(weighted_centroid(image))
    new_radius, after = polar(weighted_centroid(out))
    assert new_radius == pytest.approx(radius, abs=0.1)
    assert after - before == pytest.approx(angle, abs=0.2)  # + = clockwise as displayed


def test_rotation_never_exceeds_20_degrees() -> None:
    generator = seeded(1)
    angles = [draw_params(AugmentSettings(), generator).angle_deg for _ in range(4000)]
    assert max(abs(a) for a in angles) <= 20.0
    assert min(angles) < -19.5 and max(angles) > 19.5  # the whole range is used
    assert abs(sum(angles) / len(angles)) < 0.5
    # Measured on the image, with rotation alone.
    settings = AugmentSettings(hflip_p=0.0, vflip_p=0.0, shear_x_deg=(0.0, 0.0))
    augment = build_augment(settings, seeded(2))
    image = pattern(bar=False)
    _, before = polar(weighted_centroid(image))
    turns = [polar(weighted_centroid(augment(image)))[1] - before for _ in range(60)]
    assert max(abs(t) for t in turns) <= 20.2
    assert max(abs(t) for t in turns) > 15.0


def test_shear_moves_rows_horizontally_in_proportion_to_their_offset() -> None:
    shear = 10.0
    settings = AugmentSettings(
        hflip_p=0.0, vflip_p=0.0, rotation_deg=(0.0, 0.0), shear_x_deg=(shear, shear)
    )
    augment = build_augment(settings)
    # A vertical bar through the middle: each row's copy moves by -tan(shear) * (row - centre).
    bar = torch.full((1, SIDE, SIDE), BACKGROUND)
    bar[0, :, 30:34] = 2.0  # centred on column 31.5
    out = augment(bar)[0].double() - BACKGROUND
    cols = torch.arange(SIDE, dtype=torch.float64)
    for row in range(4, SIDE - 4):
        shift = float((out[row] * cols).sum() / out[row].sum()) - 31.5
        expected = -math.tan(math.radians(shear)) * (row - CENTRE)
        assert shift == pytest.approx(expected, abs=0.02), row
    # Vertical positions are unchanged: the block's row, and every row's total, stay put.
    image = pattern(bar=False)
    sheared = augment(image)
    row, col = weighted_centroid(image)
    new_row, new_col = weighted_centroid(sheared)
    assert new_row == pytest.approx(row, abs=1e-6)
    assert new_col - col == pytest.approx(-math.tan(math.radians(shear)) * (row - CENTRE), abs=0.02)
    rows_before = (image[0].double() - BACKGROUND).sum(dim=1)
    rows_after = (sheared[0].double() - BACKGROUND).sum(dim=1)
    torch.testing.assert_close(rows_after, rows_before, rtol=0, atol=1e-4)


def test_shear_draws_stay_within_10_degrees() -> None:
    generator = seeded(3)
    shears = [draw_params(AugmentSettings(), generator).shear_x_deg for _ in range(4000)]
    assert max(abs(s) for s in shears) <= 10.0
    assert min(shears) < -9.7 and max(shears) > 9.7


def test_flip_probabilities_are_near_one_half_and_independent() -> None:
    """400 seeded samples of one batch: each flip in about half of them."""
    image = pattern()
    batch = image.expand(400, 1, SIDE, SIDE).contiguous()
    out = build_augment(ONLY_FLIPS, seeded(4))(batch)
    block_right = torch.tensor([centroid(o)[1] > CENTRE for o in out])
    block_bottom = torch.tensor([centroid(o)[0] > CENTRE for o in out])
    assert 0.44 < block_right.double().mean() < 0.56
    assert 0.44 < block_bottom.double().mean() < 0.56
    assert 0.19 < (block_right & block_bottom).double().mean() < 0.31
    generator = seeded(6)
    many = [draw_params(AugmentSettings(), generator) for _ in range(4000)]
    assert 0.47 < sum(d.hflip for d in many) / 4000 < 0.53
    assert 0.47 < sum(d.vflip for d in many) / 4000 < 0.53


def test_none_leaves_images_unchanged() -> None:
    augment = build_augment(AugmentSettings.none())
    image = pattern()
    assert torch.equal(augment(image), image)
    batch = torch.randn(5, 1, SIDE, SIDE, generator=seeded(7))
    assert torch.equal(augment(batch), batch)


def test_each_sample_of_a_batch_gets_its_own_draw_in_order() -> None:
    image = pattern()
    batch = image.expand(8, 1, SIDE, SIDE).contiguous()
    out = build_augment(AugmentSettings(), seeded(8))(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    distinct = {tuple(o.flatten()[::97].tolist()) for o in out}
    assert len(distinct) == 8
    generator = seeded(8)
    for sample in out:
        draw = draw_params(AugmentSettings(), generator)
        torch.testing.assert_close(sample, apply_draw(image, draw, AugmentSettings()))


def test_global_rng_is_used_without_a_generator() -> None:
    augment = build_augment(AugmentSettings())
    batch = pattern().expand(4, 1, SIDE, SIDE).contiguous()
    torch.manual_seed(11)
    first = augment(batch)
    torch.manual_seed(11)
    assert torch.equal(augment(batch), first)
    assert not torch.equal(augment(batch), first)  # the global stream moved on


def test_area_brought_in_is_the_background() -> None:
    image = torch.full((1, SIDE, SIDE), 1.0)
    settings = AugmentSettings(
        hflip_p=0.0, vflip_p=0.0, rotation_deg=(45.0, 45.0), shear_x_deg=(0.0, 0.0)
    )
    out = build_augment(settings)(image)
    for corner in (out[0, 0, 0], out[0, 0, -1], out[0, -1, 0], out[0, -1, -1]):
        assert float(corner) == pytest.approx(BACKGROUND)
    assert float(out[0, SIDE // 2, SIDE // 2]) == pytest.approx(1.0)
    assert float(out.min()) >= BACKGROUND - 1e-5 and float(out.max()) <= 1.0 + 1e-5
    # A background-only crop stays background: no seam where the rotated edge runs.
    blank = torch.full((1, SIDE, SIDE), BACKGROUND)
    torch.testing.assert_close(build_augment(settings)(blank), blank)


def test_bad_inputs_and_settings_are_refused() -> None:
    augment = build_augment(AugmentSettings())
    with pytest.raises(ValueError, match="float"):
        augment(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float"):
        augment(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="hflip_p"):
        AugmentSettings(hflip_p=1.5)
    with pytest.raises(ValueError, match="shear_x_deg"):
        AugmentSettings(shear_x_deg=(10.0, -10.0))
