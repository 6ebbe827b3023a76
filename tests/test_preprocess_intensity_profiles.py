"""Intensity profiles: the ``default`` display pipeline and the authors' ``reference`` one."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from skimage.exposure import equalize_adapthist

from model.preprocess import extract_rois, image_intensities
from model.profiles import Profile
from tests.factories import make_mg, make_seg, roundtrip


def load_image(ds: Dataset) -> np.ndarray:
    """The whole image through the ``default`` profile (what the display and network see)."""
    display, _ = image_intensities(ds, Profile.DEFAULT)
    return display


def ramp(rows: int = 64, cols: int = 64, top: int = 4095) -> np.ndarray:
    """Every value from 0 to ``top`` along the flattened image, in order."""
    return np.linspace(0, top, rows * cols).round().astype(np.uint16).reshape(rows, cols)


def value_image(values: list[int]) -> np.ndarray:
    """A 1-row image holding ``values`` (padded to 8 columns), for exact look-ups."""
    row = np.zeros((4, 8), dtype=np.uint16)
    row[0, : len(values)] = values
    return row


def test_monochrome1_is_inverted() -> None:
    pixels = ramp()
    mono2 = load_image(roundtrip(make_mg(pixels, window=(2048, 4096))))
    mono1 = load_image(roundtrip(make_mg(pixels, window=(2048, 4096), photometric="MONOCHROME1")))
    assert mono2.std() > 0.2
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_linear_window_maps_center_to_half_and_clips_outside() -> None:
    center, width = 2000, 1000
    stored = value_image([center, center - width, center + width, 0, 4095, center + 250])
    out = load_image(roundtrip(make_mg(stored, window=(center, width))))[0]
    assert out[0] == pytest.approx(0.5, abs=2e-3)
    assert out[1] == 0.0 and out[3] == 0.0
    assert out[2] == 1.0 and out[4] == 1.0
    assert out[5] == pytest.approx(0.75, abs=2e-3)


def test_sigmoid_window_is_smooth_and_monotone() -> None:
    pixels = ramp()
    ds = roundtrip(make_mg(pixels, window=(2048, 2048), voi_function="SIGMOID"))
    out = load_image(ds).ravel().astype(np.float64)
    assert (out > 0).all() and (out < 1).all()  # never clipped
    steps = np.diff(out)
    assert (steps >= 0).all()
    assert (np.diff(out[::64]) > 0).all()  # strictly rising over a 64-value stride
    assert steps.max() < 0.01  # no jump anywhere
    assert out[np.argmin(np.abs(pixels.ravel().astype(int) - 2048))] == pytest.approx(0.5, abs=1e-3)
    # Differs from the LINEAR window of the same center and width away from the center.
    linear = load_image(roundtrip(make_mg(pixels, window=(2048, 2048)))).ravel()
    assert np.abs(out - linear).max() > 0.05


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1000.0), (2.0, -500.0), (0.5, 100.0)])
def test_modality_lut_applies_before_the_window(slope: float, intercept: float) -> None:
    """The window is in modality units: stored s maps to slope * s + intercept."""
    center, width = 1000.0, 400.0
    at_center = round((center - intercept) / slope)
    at_top = round((center + width - intercept) / slope)
    stored = value_image([at_center, at_top, 0])
    ds = roundtrip(make_mg(stored, window=(center, width), rescale=(intercept, slope)))
    out = load_image(ds)[0]
    assert out[0] == pytest.approx(0.5, abs=5e-3)
    assert out[1] == 1.0
    assert out[2] == 0.0
    # Without the rescale, the same stored value sits elsewhere in the window.
    plain = load_image(roundtrip(make_mg(stored, window=(center, width))))[0]
    assert abs(plain[0] - 0.5) > 0.1


def test_no_voi_uses_the_stored_range() -> None:
    pixels = (ramp(top=1000) + 300).astype(np.uint16)
    ds = make_mg(pixels, for_processing=True)
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    out = load_image(roundtrip(ds))
    expected = (pixels.astype(np.float64) - 300) / 1000
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_voi_lut_sequence_is_applied() -> None:
    pixels = ramp(top=4095)
    lut = np.sqrt(np.arange(4096) / 4095.0) * 255  # a gamma curve, 8-bit output
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor: entries, first, bits
    item.add_new(0x00283006, "US", lut.round().astype(int).tolist())  # LUT Data
    ds = make_mg(pixels, for_processing=True)
    ds.VOILUTSequence = [item]
    out = load_image(roundtrip(ds))
    expected = lut.round()[pixels] / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # The curve, not a linear stretch, is what was applied.
    assert np.abs(out - pixels / 4095.0).max() > 0.2


def reference_formula(raw: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The authors' steps, written out independently of model.preprocess."""
    equalised = (equalize_adapthist(raw, clip_limit=0.003) * 255).astype(np.uint8)
    crop = equalised[top : top + side, left : left + side]
    return (crop / 255 - 0.485) / 0.229


def test_reference_profile_equals_the_authors_formula() -> None:
    """A 24 px lesion plus a 100 px bound gives a 224 px square: no resize is involved."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:320, :300]
    raw = 1500 + 6 * yy + 3 * xx + rng.normal(0, 150, yy.shape)
    raw[150:174, 160:184] += 600  # a brighter "mass"
    raw = raw.clip(0, 4095).astype(np.uint16)
    mg = make_mg(raw, photometric="MONOCHROME1", rescale=(-50.0, 1.5))  # ignored by reference
    mask = np.zeros(raw.shape, dtype=bool)
    mask[150:174, 160:184] = True
    seg = roundtrip(make_seg([mg], [mask]))
    images = {str(mg.SOPInstanceUID): roundtrip(mg)}

    (roi,) = extract_rois(seg, images, profile="reference", bound_size=100)
    assert roi.box.size == 224
    assert (roi.box.top, roi.box.left) == (50, 60)
    expected = reference_formula(raw, 50, 60, 224)
    np.testing.assert_allclose(roi.network_input, expected, atol=1e-5)

    # CLAHE ran over the whole image, not only the crop, and differs from the default profile.
    crop_only = (equalize_adapthist(raw[50:274, 60:284], clip_limit=0.003) * 255).astype(np.uint8)
    assert np.abs(roi.network_input - (crop_only / 255 - 0.485) / 0.229).max() > 0.05
    (default_roi,) = extract_rois(seg, images, profile="default", bound_size=100)
    assert np.abs(default_roi.network_input - roi.network_input).max() > 0.5


def test_reference_profile_after_resize_stays_close_to_the_formula() -> None:
    """Larger square: the 8-bit crop is resized to 224; bilinear/antialias changes pixels only a
    little, so the mean error is small."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:400, :400]
    raw = (1000 + 5 * yy + 4 * xx + rng.normal(0, 40, yy.shape)).clip(0, 4095).astype(np.uint16)
    mg = make_mg(raw)
    mask = np.zeros(raw.shape, dtype=bool)
    mask[150:250, 150:250] = True  # 100 + 2 * 100 = 300 px square
    seg = roundtrip(make_seg([mg], [mask]))
    (roi,) = extract_rois(seg, {str(mg.SOPInstanceUID): mg}, profile="reference")
    assert roi.box.size == 300
    full = reference_formula(raw, roi.box.top, roi.box.left, 300)
    # Independent resize: average 300 -> 224 via skimage's anti-aliased bilinear resize.
    from skimage.transform import resize

    expected = resize(full, (224, 224), order=1, anti_aliasing=True, preserve_range=True)
    assert np.abs(roi.network_input - expected).mean() < 0.05
    # Invalid profile names are rejected, not silently defaulted.
    with pytest.raises(ValueError, match="unknown preprocessing profile"):
        extract_rois(seg, {str(mg.SOPInstanceUID): mg}, profile="clahe")
