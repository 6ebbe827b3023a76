"""Decoding MG pixel data in every transfer syntax a mammography unit may send, and refusals.

JPEG Lossless SV1 is covered by the real Siemens sample in test_preprocess.py.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_encoder

from common.errors import InputError
from model.preprocess import check_mg, decode_frame, image_intensities
from model.profiles import Profile
from tests.factories import (
    HTJ2K_CODESTREAM,
    htj2k_expected_pixels,
    make_htj2k_mg,
    make_mg,
    roundtrip,
)


def load_image(ds: Dataset) -> np.ndarray:
    """The whole image through the ``default`` profile (what the display and network see)."""
    display, _ = image_intensities(ds, Profile.DEFAULT)
    return display


def twelve_bit_mg() -> tuple[Dataset, np.ndarray]:
    """A 12-bit image using the full stored range, with structure and noise."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:96, :80]
    pixels = (yy * 40 + xx * 3 + rng.integers(0, 64, size=yy.shape)) % 4096
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    pixels = pixels.astype(np.uint16)
    return make_mg(pixels), pixels


def reread(ds: Dataset) -> Dataset:
    """Write with the dataset's own transfer syntax and read back, as a receiver would."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


@pytest.mark.parametrize(
    "syntax",
    [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_compressed_syntaxes_decode_exactly(syntax: uid.UID) -> None:
    encoder = get_encoder(syntax)
    if not encoder.is_available:
        pytest.skip(f"no {syntax.name} encoder installed: {encoder.missing_dependencies}")
    ds, pixels = twelve_bit_mg()
    ds.compress(syntax)
    received = reread(ds)
    assert received.file_meta.TransferSyntaxUID == syntax
    assert received["PixelData"].is_undefined_length  # really encapsulated
    decoded = decode_frame(received)
    assert decoded.shape == pixels.shape
    np.testing.assert_array_equal(decoded, pixels)


def test_htj2k_lossless_decodes_exactly() -> None:
    pixels = htj2k_expected_pixels()
    assert HTJ2K_CODESTREAM[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ
    assert HTJ2K_CODESTREAM[6] & 0x40, "Rsiz must flag a Part 15 (HT) codestream"
    received = reread(make_htj2k_mg(uid.HTJ2KLossless))
    assert received.file_meta.TransferSyntaxUID == uid.HTJ2KLossless
    np.testing.assert_array_equal(decode_frame(received), pixels)


@pytest.mark.parametrize(
    "syntax",
    [uid.DeflatedExplicitVRLittleEndian, uid.ImplicitVRLittleEndian],
    ids=["deflated", "implicit"],
)
def test_native_syntaxes_decode_exactly(syntax: uid.UID) -> None:
    ds, pixels = twelve_bit_mg()
    ds.file_meta.TransferSyntaxUID = syntax
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    if syntax == uid.DeflatedExplicitVRLittleEndian:
        assert pixels.tobytes() not in buf.getvalue(), "the dataset was not deflated"
    buf.seek(0)
    received = pydicom.dcmread(buf)
    assert received.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(decode_frame(received), pixels)


def test_truncated_jpeg_ls_frame_names_the_image() -> None:
    ds, _ = twelve_bit_mg()
    ds.compress(uid.JPEGLSLossless)
    received = reread(ds)
    frame = next(generate_frames(received.PixelData, number_of_frames=1))
    received.PixelData = encapsulate([frame[: len(frame) // 3]])
    with pytest.raises(InputError) as caught:
        decode_frame(received)
    assert caught.value.uid == str(ds.SOPInstanceUID)
    assert str(ds.SOPInstanceUID) in str(caught.value)
    assert "cannot be decoded" in str(caught.value)
    assert uid.JPEGLSLossless in str(caught.value)


def test_corrupted_jpeg_lossless_frame_names_the_image(samples_dir: Path) -> None:
    ds = pydicom.dcmread(samples_dir / "mg" / "OutOfBoundsOverlay.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:32] + bytes(len(frame) - 32)])  # header kept, data lost
    with pytest.raises(InputError) as caught:
        load_image(ds)
    assert str(ds.SOPInstanceUID) in str(caught.value)
    assert "cannot be decoded" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MG-Im-Hologic-PropProj.dcm", "Secondary Capture"),
        ("jpeg2k_3d.dcm", "Breast Tomosynthesis"),
    ],
)
def test_non_mg_objects_are_refused_by_uid(samples_dir: Path, name: str, reason: str) -> None:
    ds = pydicom.dcmread(samples_dir / "mg" / name)
    assert ds.Modality == "MG"  # the header says MG; only the SOP class tells
    for call in (check_mg, decode_frame, load_image):
        with pytest.raises(InputError) as caught:
            call(ds)
        assert str(ds.SOPInstanceUID) in str(caught.value)
        assert "not an MG image" in str(caught.value)
        assert reason in str(caught.value)


def test_mg_without_pixel_data_is_refused() -> None:
    ds, _ = twelve_bit_mg()
    del ds.PixelData
    with pytest.raises(InputError, match="has no Pixel Data") as caught:
        decode_frame(roundtrip(ds))
    assert caught.value.uid == str(ds.SOPInstanceUID)


def test_mg_modality_mismatch_is_refused() -> None:
    ds, _ = twelve_bit_mg()
    ds.Modality = "CR"
    with pytest.raises(InputError, match="Modality CR") as caught:
        check_mg(ds)
    assert caught.value.uid == str(ds.SOPInstanceUID)
