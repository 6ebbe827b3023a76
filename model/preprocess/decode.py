"""Decoding of MG pixel data, whatever transfer syntax the modality chose.

pydicom picks the decoder per transfer syntax: RLE and deflate natively, JPEG 2000 and HTJ2K
through pylibjpeg-openjpeg, JPEG Lossless (SV1) and JPEG-LS through python-gdcm or pyjpegls.
The GPL pylibjpeg-libjpeg plugin is deliberately not a dependency.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from common.errors import InputError
from common.sop_classes import MG_SOP_CLASSES


def uid_of(ds: Dataset) -> str | None:
    return str(ds.get("SOPInstanceUID", "")) or None


def check_mg(ds: Dataset) -> None:
    """Refuse anything that is not a digital mammogram (tomosynthesis, SC-wrapped, CR...)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in MG_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "no SOP Class UID"
        raise InputError(uid_of(ds), f"not an MG image: {name}")
    if str(ds.get("Modality", "MG")) != "MG":
        raise InputError(uid_of(ds), f"not an MG image: Modality {ds.Modality}")


def decode_frame(ds: Dataset) -> np.ndarray:
    """The stored values of frame 1 as a 2-D array (mammograms are single-frame)."""
    check_mg(ds)
    if "PixelData" not in ds:
        raise InputError(uid_of(ds), "has no Pixel Data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(uid_of(ds), "is not a greyscale image (SamplesPerPixel != 1)")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot use this object"
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(
            uid_of(ds), f"pixel data cannot be decoded (transfer syntax {syntax}): {exc}"
        ) from exc
    if arr.ndim == 3:
        arr = arr[0]
    if arr.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(uid_of(ds), f"decoded size {arr.shape} differs from Rows/Columns")
    return arr
