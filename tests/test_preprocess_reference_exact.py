"""The ``reference-exact`` profile against the authors' steps written out here, line by line.

``their_roi`` follows their data_process.py (read_nii, set_bound, bound_adjust, get_roi) and
``their_input`` their data_loader.py (albumentations Resize = cv2 INTER_LINEAR on uint8,
Normalize with the first mean/std), independently of model/preprocess. All data is SYNTHETIC.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from skimage.exposure import equalize_adapthist

from common.errors import InputError
from model.bundle_info import read_bundle_info
from model.preprocess import decode_frame, extract_rois, image_intensities
from model.preprocess.crop import crop_square
from model.preprocess.rois import lesion_input
from model.profiles import Profile
from model.roi import RoiCrop
from model.tasks import TASKS
from tests.factories import make_mg, make_seg, roundtrip

INPUT = 224
ONE_GREY_LEVEL = 1 / (0.229 * 255)  # one step of their uint8 input, after normalisation


def their_roi(raw: np.ndarray, mask: np.ndarray, bound_size: int) -> tuple[np.ndarray, tuple]:
    """Their crop of the CLAHE image and (top, bottom, left, right), as their code computes."""
    image = (equalize_adapthist(raw, clip_limit=0.003) * 255).astype(np.uint8)
    white_pixels = np.where(mask > 0)
    top, bottom = np.min(white_pixels[0]), np.max(white_pixels[0])
    left, right = np.min(white_pixels[1]), np.max(white_pixels[1])
    top, bottom = top - bound_size, bottom + bound_size
    left, right = left - bound_size, right + bound_size
    x, y = image.shape
    height = bottom - top
    width = right - left
    if height > width:
        left -= height - width
    else:
        top -= width - height
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
    return image[top:bottom, left:right], (int(top), int(bottom), int(left), int(right))


def their_input(crop: np.ndarray) -> np.ndarray:
    resized = cv2.resize(crop, (INPUT, INPUT), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float64) - 0.485 * 255) / (0.229 * 255)


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int]
    lesion: tuple[slice, slice]
    bound: int


CASES = {
    # 30 x 80 lesion on a wide image: the swapped clamp (right > rows) moves the square left,
    # off the lesion; the 239 px square is shrunk to 224.
    "wide image, wide lesion": Case((300, 500), (slice(120, 150), slice(360, 440)), 80),
    # Near the bottom of a wide image: their slice drops the rows past the edge (110 x 159).
    "wide image, bottom edge": Case((300, 500), (slice(250, 290), slice(100, 130)), 60),
    # Near the bottom-right of a tall image: bottom > columns moves the square up, off the
    # lesion, and the slice drops the columns past the right edge (149 x 110).
    "tall image, bottom-right": Case((480, 320), (slice(380, 430), slice(280, 310)), 50),
    # A tall lesion mid-image: the square grows left only (lesion at its right), 199 -> 224.
    "tall lesion": Case((300, 460), (slice(60, 200), slice(150, 180)), 30),
}


def synthetic_raw(shape: tuple[int, int], lesion: tuple[slice, slice], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    raw = 900 + 4 * yy + 3 * xx + 300 * np.sin(xx / 17.0) + rng.normal(0, 120, shape)
    raw[lesion] += 700
    return raw.clip(0, 4095).astype(np.uint16)


@cache
def case_data(name: str) -> tuple[np.ndarray, np.ndarray, Dataset, Dataset]:
    """(raw pixels, lesion mask, MG, SEG) of ``CASES[name]``; made once, never modified."""
    return make_case(CASES[name])


def make_case(case: Case) -> tuple[np.ndarray, np.ndarray, Dataset, Dataset]:
    raw = synthetic_raw(case.shape, case.lesion, seed=0)
    mask = np.zeros(case.shape, dtype=bool)
    mask[case.lesion] = True
    mask[case.lesion[0].start, case.lesion[1].start] = False  # not a plain rectangle
    mg = make_mg(raw, photometric="MONOCHROME1", rescale=(-50.0, 1.5))  # ignored by reference
    seg = roundtrip(make_seg([mg], [mask]))
    return raw, mask, roundtrip(mg), seg


@cache
def rois_of(name: str, profile: str) -> tuple[RoiCrop, np.ndarray, np.ndarray]:
    """(the one RoiCrop, raw pixels, lesion mask) of ``CASES[name]`` under ``profile``."""
    raw, mask, mg, seg = case_data(name)
    images = {str(mg.SOPInstanceUID): mg}
    (roi,) = extract_rois(seg, images, profile=profile, bound_size=CASES[name].bound)
    return roi, raw, mask


@pytest.mark.parametrize("name", list(CASES))
def test_reference_exact_equals_the_authors_steps(name: str) -> None:
    case = CASES[name]
    roi, raw, mask = rois_of(name, "reference-exact")
    crop, (top, bottom, left, right) = their_roi(raw, mask, case.bound)
    expected = their_input(crop)
    assert roi.network_input.shape == (INPUT, INPUT) and roi.network_input.dtype == np.float32
    assert np.abs(roi.network_input - expected).max() <= ONE_GREY_LEVEL
    # The box is their square: its in-image part is exactly what their slice took.
    assert (roi.box.top, roi.box.left, roi.box.size) == (top, left, bottom - top)
    assert right - left == roi.box.size
    assert roi.display.shape == roi.mask.shape == (roi.box.size, roi.box.size)
    seen = crop.shape
    assert roi.mask[: seen[0], : seen[1]].sum() == mask[top:bottom, left:right].sum()


def test_the_cases_exercise_the_defects() -> None:
    """Each case does what its comment says, so the comparison above covers the defects."""
    seen = {name: their_roi(*case_data(name)[:2], c.bound)[0].shape for name, c in CASES.items()}
    assert seen["wide image, wide lesion"] == (239, 239)
    assert seen["wide image, bottom edge"] == (110, 159)
    assert seen["tall image, bottom-right"] == (149, 110)
    assert seen["tall lesion"] == (199, 199)
    for name in ("wide image, wide lesion", "tall image, bottom-right"):
        roi, _, _ = rois_of(name, "reference-exact")
        assert not roi.mask.any(), f"{name}: their square should miss the lesion"


@pytest.mark.parametrize("name", list(CASES))
def test_reference_differs_from_reference_exact(name: str) -> None:
    """The centred square and the antialiased float resize are a real change."""
    exact, _, mask = rois_of(name, "reference-exact")
    ours, _, _ = rois_of(name, "reference")
    assert np.abs(ours.network_input - exact.network_input).max() > 0.5
    assert ours.mask.sum() == mask.sum()  # the centred square keeps the whole lesion
    assert (ours.box.top, ours.box.left) != (exact.box.top, exact.box.left)


def test_lesion_input_is_the_node_crop() -> None:
    name = "tall image, bottom-right"
    roi, _, mask = rois_of(name, "reference-exact")
    _, _, mg, _ = case_data(name)
    same = lesion_input(mg, mask, profile=Profile.REFERENCE_EXACT, bound_size=CASES[name].bound)
    np.testing.assert_array_equal(same, roi.network_input)


def test_a_square_their_clamp_cannot_place_is_refused() -> None:
    """A square larger than the short side leaves a negative start: numpy would wrap around
    (here to an empty slice, on which their cv2.resize fails); the node refuses it."""
    case = Case((100, 300), (slice(40, 60), slice(200, 260)), 30)
    raw, mask, mg, seg = make_case(case)
    assert their_roi(raw, mask, case.bound)[0].size == 0
    with pytest.raises(InputError, match="segment 1: .*does not fit their clamp"):
        extract_rois(seg, {str(mg.SOPInstanceUID): mg}, profile="reference-exact", bound_size=30)
    with pytest.raises(ValueError, match="does not fit their clamp"):
        lesion_input(mg, mask, profile="reference-exact", bound_size=30)


def write_bundle_json(bundle_dir: Path, profile: str) -> None:
    """A bundle.json with one task whose weights file is a placeholder (never loaded here)."""
    weights = b"placeholder weights"
    (bundle_dir / "subtype5.pt").write_bytes(weights)
    document = {
        "format_version": 1,
        "name": "authors",
        "version": "1.0",
        "tasks": {
            "subtype5": {
                "classes": list(TASKS["subtype5"].class_names),
                "weights": "subtype5.pt",
                "sha256": hashlib.sha256(weights).hexdigest(),
            }
        },
        "preprocessing": {"profile": profile, "input_size": INPUT, "bound_size": 60},
        "provenance": {},
        "untrained": False,
    }
    (bundle_dir / "bundle.json").write_text(json.dumps(document), encoding="utf-8")


def test_a_reference_exact_bundle_is_accepted_and_drives_extract_rois(tmp_path: Path) -> None:
    write_bundle_json(tmp_path, "reference-exact")
    info = read_bundle_info(tmp_path)
    assert info.profile is Profile.REFERENCE_EXACT
    raw, mask, mg, seg = case_data("wide image, bottom edge")
    (roi,) = extract_rois(
        seg,
        {str(mg.SOPInstanceUID): mg},
        profile=info.profile,
        bound_size=info.bound_size,
        input_size=info.input_size,
    )
    expected = their_input(their_roi(raw, mask, info.bound_size)[0])
    assert np.abs(roi.network_input - expected).max() <= ONE_GREY_LEVEL
    # The display is the default windowing of their square (padded past the bottom edge).
    display_image, _ = image_intensities(mg, Profile.DEFAULT)
    expected_display = np.round(crop_square(display_image, roi.box) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(roi.display, expected_display)
    assert roi.box.bottom > mg.Rows and not roi.display[mg.Rows - roi.box.top :].any()


def test_real_vendor_image_with_a_lesion_at_the_bottom_right(samples_dir: Path) -> None:
    """The Siemens sample (788 x 1318, wider than tall; JPEG Lossless SV1): their clamp moves the
    square 740 px left, off the lesion, and numpy cuts it at the bottom edge."""
    mg = pydicom.dcmread(samples_dir / "mg" / "OutOfBoundsOverlay.dcm")
    rows, cols = int(mg.Rows), int(mg.Columns)
    mask = np.zeros((rows, cols), dtype=bool)
    mask[rows - 80 : rows - 9, cols - 60 : cols - 11] = True
    seg = roundtrip(make_seg([mg], [mask]))
    (roi,) = extract_rois(seg, {str(mg.SOPInstanceUID): mg}, profile="reference-exact")
    crop, (top, bottom, left, _) = their_roi(decode_frame(mg), mask, 100)
    assert crop.shape == (180, 270) and (top, left, bottom - top) == (608, 518, 270)
    assert (roi.box.top, roi.box.left, roi.box.size) == (608, 518, 270)
    assert np.abs(roi.network_input - their_input(crop)).max() <= ONE_GREY_LEVEL
    assert not roi.mask.any()
