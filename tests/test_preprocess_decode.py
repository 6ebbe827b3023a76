"""JPEG Lossless (Process 14) in both transfer syntaxes, encoded by dcmtk, decoded by python-gdcm.

Complements test_preprocess_transfer_syntax.py (pydicom-encoded syntaxes, HTJ2K) and the Siemens
sample in test_preprocess.py: here the encoder (dcmtk, IJG) and the decoder (gdcm) are
independent codecs, and JPEG Lossless with a selection value other than 1 (…4.57) is covered.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model.preprocess import decode_frame
from tests.factories import make_mg

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk (dcmcjpeg) not installed")
@pytest.mark.parametrize(
    ("options", "syntax"),
    [(["+e1"], JPEG_LOSSLESS_SV1), (["+el", "+sv", "6"], JPEG_LOSSLESS)],
    ids=["sv1-4.70", "sv6-4.57"],
)
def test_jpeg_lossless_from_dcmtk_decodes_exactly(
    tmp_path: Path, options: list[str], syntax: str
) -> None:
    rng = np.random.default_rng(11)
    ramp = np.add.outer(np.arange(96) * 13, np.arange(80) * 7) % 4096
    pixels = np.clip(ramp + rng.integers(0, 16, size=ramp.shape), 0, 4095).astype(np.uint16)
    plain, jpeg = tmp_path / "plain.dcm", tmp_path / "jpeg.dcm"
    make_mg(pixels, bits_stored=12).save_as(plain, enforce_file_format=True)
    subprocess.run(["dcmcjpeg", *options, str(plain), str(jpeg)], check=True)
    received = pydicom.dcmread(jpeg)
    assert received.file_meta.TransferSyntaxUID == syntax
    assert received["PixelData"].is_undefined_length  # really encapsulated
    np.testing.assert_array_equal(decode_frame(received), pixels)
