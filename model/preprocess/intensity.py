"""Intensity pipelines ("profiles") from stored values to what the networks see.

``default``: Modality LUT, then the first VOI transform the image carries (window LINEAR,
LINEAR_EXACT or SIGMOID, or a VOI LUT Sequence), MONOCHROME1 inverted, scaled to [0, 1]; with no
VOI the stored range is used. This is what the radiologist sees, so the same crop feeds the
display of the Secondary Capture.

``reference``: the authors' pipeline that their published weights were trained on: the raw stored
values (no LUTs, no inversion), CLAHE (skimage ``equalize_adapthist``, clip 0.003) over the whole
image, then 8-bit. ``reference-exact`` shares these intensities and differs only in the crop and
resize (model/preprocess/reference_exact.py, docs/profiles.md).

After the crop and resize both become ``(x - 0.485) / 0.229`` on a [0, 1] scale, as the authors
normalise, so both profiles feed the networks the same range.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_windowing

from common.errors import InputError

NORM_MEAN, NORM_STD = 0.485, 0.229

log = logging.getLogger(__name__)


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """The image's first window (PS3.3 C.11.2.1.2, pydicom's ``apply_windowing``), to [0, 1].

    pydicom maps to the stored range; the ends of that range are where -inf and +inf land for
    every VOI LUT Function, so the result is scaled by them. A window pydicom refuses (width
    below 1, an unknown function: both seen in real headers) falls back to the stored range.
    """
    try:
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        windowed = apply_windowing(values, ds)
    except ValueError as exc:
        log.warning("object %s: window not applied (%s); stored range used", _uid(ds), exc)
        return _stored_range(values)
    with np.errstate(all="ignore"):
        out = (windowed - low) / (high - low)
    if not np.isfinite(out).all():  # a NaN or infinite centre or width (fuzzed headers)
        log.warning("object %s: window not applied (not finite); stored range used", _uid(ds))
        return _stored_range(values)
    return out


def _stored_range(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    with np.errstate(all="ignore"):  # hi - lo may overflow: the caller checks the result
        return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "")) or "(no SOP Instance UID)"


def _apply_voi_lut(values: np.ndarray, item: Dataset) -> np.ndarray:
    """PS3.3 C.11.2.1.1 VOI LUT, to [0, 1].

    Not pydicom's ``apply_voi``: for 8-bit LUT entries it indexes with uint8, so a LUT with more
    than 256 entries (an 8-bit view of a 12-bit mammogram) wraps around every 256 values.
    """
    entries, first_mapped, bits = _lut_descriptor(item)
    element = item["LUTData"]
    if isinstance(element.value, bytes):  # OW: 16-bit words, little endian in every live syntax
        lut = np.frombuffer(element.value, dtype="<u2")[:entries].astype(np.float64)
    else:
        lut = np.atleast_1d(np.asarray(element.value, dtype=np.float64))[:entries]
    if not lut.size:
        raise ValueError("VOI LUT Data is empty")
    index = np.clip(np.floor(values) - first_mapped, 0, lut.size - 1).astype(np.intp)
    return lut[index] / float(2**bits - 1)


def _lut_descriptor(item: Dataset) -> tuple[int, int, int]:
    """(entries, first mapped value, bits) of a VOI LUT item; ValueError when malformed."""
    descriptor = item.get("LUTDescriptor")
    values = [descriptor] if descriptor is None or isinstance(descriptor, int) else list(descriptor)
    if len(values) != 3 or "LUTData" not in item or item.LUTData is None:
        raise ValueError("VOI LUT item without a 3-value descriptor and data")
    entries, first_mapped, bits = (int(v) for v in values)
    if not 1 <= bits <= 16:
        raise ValueError(f"VOI LUT of {bits} bits")
    return entries or 2**16, first_mapped, bits  # PS3.3: 0 entries means 65536


def to_display_range(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """The ``default`` profile over a whole image: float32 in [0, 1], bright = dense.

    A malformed VOI LUT or window falls back to the stored range (as a window pydicom refuses
    does); a Modality LUT that gives non-finite values makes the image unusable: InputError,
    never a NaN crop fed to the networks.
    """
    with np.errstate(all="ignore"):
        values = apply_modality_lut(stored, ds).astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(_uid(ds), "Rescale Slope / Intercept give non-finite values")
    out = None
    if "VOILUTSequence" in ds:
        try:
            out = _apply_voi_lut(values, ds.VOILUTSequence[0])
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            log.warning("object %s: VOI LUT not applied (%s); stored range used", _uid(ds), exc)
            out = _stored_range(values)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = _window(values, ds)
    if out is None:
        out = _stored_range(values)
    if not np.isfinite(out).all():  # e.g. values near the float range overflowing the scale
        raise InputError(_uid(ds), "intensities are not finite after the VOI transform")
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def reference_intensity(stored: np.ndarray) -> np.ndarray:
    """The authors' whole-image pipeline: raw values -> CLAHE(clip 0.003) -> uint8."""
    from skimage.exposure import equalize_adapthist

    equalised = equalize_adapthist(stored, clip_limit=0.003)
    return (equalised * 255).astype(np.uint8)


def normalise(unit_range: np.ndarray) -> np.ndarray:
    """[0, 1] -> the ImageNet-style scale the authors' networks were trained on."""
    return ((unit_range - NORM_MEAN) / NORM_STD).astype(np.float32)
