"""The prepare stage on a real vendor mammogram: a centred, padded lesion square.

The sample is a Siemens image stored as JPEG Lossless SV1 (decoded through python-gdcm); the
lesion sits at the bottom-right corner, where the authors' crop cut lesions off.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from model.preprocess import decode_frame, extract_rois
from model.preprocess.rois import MAX_DISPLAY_SIDE
from model.roi import RoiCrop
from tests.factories import make_mg, make_seg, roundtrip

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
BOUND = 100


@pytest.fixture(scope="module")
def siemens_mg(samples_dir: Path) -> Dataset:
    ds = pydicom.dcmread(samples_dir / "mg" / "OutOfBoundsOverlay.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    return ds


@pytest.fixture(scope="module")
def border_lesion(siemens_mg: Dataset) -> np.ndarray:
    """An irregular lesion 9 px from the bottom edge and 11 px from the right edge."""
    rows, cols = int(siemens_mg.Rows), int(siemens_mg.Columns)
    mask = np.zeros((rows, cols), dtype=bool)
    mask[rows - 80 : rows - 9, cols - 60 : cols - 11] = True  # 71 x 49 px
    mask[rows - 80 : rows - 70, cols - 60 : cols - 40] = False  # not a plain rectangle
    return mask


@pytest.fixture(scope="module")
def border_roi(siemens_mg: Dataset, border_lesion: np.ndarray) -> RoiCrop:
    seg = roundtrip(make_seg([siemens_mg], [border_lesion]))
    rois = extract_rois(seg, {str(siemens_mg.SOPInstanceUID): siemens_mg}, bound_size=BOUND)
    assert len(rois) == 1
    return rois[0]


def test_crop_is_a_centred_square_grown_by_the_bound(
    border_roi: RoiCrop, border_lesion: np.ndarray
) -> None:
    rows = np.flatnonzero(border_lesion.any(axis=1))
    cols = np.flatnonzero(border_lesion.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    box = border_roi.box
    assert box.size == max(height, width) + 2 * BOUND
    lesion_centre = ((rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2)
    box_centre = (box.top + box.size / 2, box.left + box.size / 2)
    assert abs(lesion_centre[0] - box_centre[0]) <= 1
    assert abs(lesion_centre[1] - box_centre[1]) <= 1


def test_border_lesion_is_padded_not_cut(
    border_roi: RoiCrop, border_lesion: np.ndarray, siemens_mg: Dataset
) -> None:
    box, rows, cols = border_roi.box, int(siemens_mg.Rows), int(siemens_mg.Columns)
    assert box.bottom > rows and box.right > cols, "the lesion must need padding here"
    assert border_roi.display.shape == (box.size, box.size)
    assert border_roi.mask.shape == (box.size, box.size)
    inside_rows, inside_cols = rows - box.top, cols - box.left
    assert not border_roi.display[inside_rows:, :].any()
    assert not border_roi.display[:, inside_cols:].any()
    assert border_roi.display[:inside_rows, :inside_cols].std() > 0  # real image content
    # The whole lesion is in the crop, at the same place.
    assert border_roi.mask.sum() == border_lesion.sum()
    np.testing.assert_array_equal(
        border_roi.mask[:inside_rows, :inside_cols], border_lesion[box.top :, box.left :]
    )
    assert border_roi.image_shape == (rows, cols)
    assert border_roi.source_sop_instance_uid == str(siemens_mg.SOPInstanceUID)


def test_network_input_is_224_float32(border_roi: RoiCrop) -> None:
    assert border_roi.network_input.shape == (224, 224)
    assert border_roi.network_input.dtype == np.float32
    assert np.isfinite(border_roi.network_input).all()
    # Normalised as (x - 0.485) / 0.229 from [0, 1].
    assert border_roi.network_input.min() >= (0 - 0.485) / 0.229 - 1e-5
    assert border_roi.network_input.max() <= (1 - 0.485) / 0.229 + 1e-5


def test_jpeg_lossless_decode_matches_dcmtk(siemens_mg: Dataset, tmp_path: Path) -> None:
    """python-gdcm (via pydicom) and dcmtk's own JPEG decoder give the same stored values."""
    dcmdjpeg = shutil.which("dcmdjpeg")
    assert dcmdjpeg, "dcmtk's dcmdjpeg is needed (Debian package dcmtk)"
    src = Path(siemens_mg.filename)
    out = tmp_path / "decoded.dcm"
    subprocess.run([dcmdjpeg, str(src), str(out)], check=True, capture_output=True)
    independent = pydicom.dcmread(out)
    assert independent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    expected = np.frombuffer(independent.PixelData, dtype="<u2").reshape(
        int(independent.Rows), int(independent.Columns)
    )
    decoded = decode_frame(siemens_mg)
    assert decoded.shape == (788, 1318)
    np.testing.assert_array_equal(decoded, expected)


def test_lesion_square_over_2048_is_capped_for_display() -> None:
    """Display and mask stop at 2048 px; the box stays in source-image coordinates."""
    size = 2600
    yy, xx = np.mgrid[:size, :size]
    mg = make_mg(((yy + xx) % 4096).astype(np.uint16))
    mask = np.zeros((size, size), dtype=bool)
    mask[150:2350, 250:2450] = True  # 2200 x 2200 px
    mask[150:1250, 250:1350] = False  # an L shape: the mask must be resized, not filled
    seg = roundtrip(make_seg([mg], [mask]))
    (roi,) = extract_rois(seg, {str(mg.SOPInstanceUID): mg}, bound_size=BOUND)
    assert roi.box.size == 2200 + 2 * BOUND
    assert (roi.box.top, roi.box.left) == (150 - BOUND, 250 - BOUND)
    assert roi.display.shape == (MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE)
    assert roi.mask.shape == (MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE)
    assert roi.mask.dtype == bool
    scale = MAX_DISPLAY_SIDE / roi.box.size
    assert roi.mask.sum() == pytest.approx(mask.sum() * scale**2, rel=0.01)
    # The cut-out quarter stays empty after the resize.
    cut = int((1250 - roi.box.top) * scale) - 2
    assert not roi.mask[: cut - 1, : cut - 1].any()
    assert roi.network_input.shape == (224, 224)
