"""Builders of small MG images and lesion SEGs for tests. All data made here is SYNTHETIC.

The MG header and the multi-image SEG are made by ``molsub.synth`` (the `molsub synth`
generator), so tests and synthetic studies share one implementation.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from common.sop_classes import MG_FOR_PRESENTATION, MG_FOR_PROCESSING
from molsub.synth import build_lesion_seg, build_mg

__all__ = [
    "HTJ2K_CODESTREAM",
    "MG_FOR_PRESENTATION",
    "MG_FOR_PROCESSING",
    "disk_mask",
    "htj2k_expected_pixels",
    "make_htj2k_mg",
    "make_mg",
    "make_seg",
    "roundtrip",
]


def make_mg(
    pixels: np.ndarray | None = None,
    *,
    rows: int = 256,
    cols: int = 200,
    laterality: str = "L",
    view: str = "CC",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    for_processing: bool = False,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    seed: int = 0,
) -> Dataset:
    """A single-frame MG image with the header a real mammography unit writes (SYNTHETIC)."""
    if pixels is None:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 2**bits_stored, size=(rows, cols), dtype=np.uint16)
    return build_mg(
        pixels,
        laterality=laterality,
        view=view,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        sop_instance_uid=generate_uid(),
        patient_id=patient_id,
        photometric=photometric,
        bits_stored=bits_stored,
        for_processing=for_processing,
        window=window,
        voi_function=voi_function,
        rescale=rescale,
    )


def make_seg(
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    *,
    segment_labels: Sequence[str] | None = None,
    seg_uid: str | None = None,
) -> Dataset:
    """A BINARY SEG: ``masks[i]`` (HxW or SxHxW for S segments) is over ``sources[i]``.

    highdicom builds a SEG over one image without a Frame of Reference (as MG images are); a
    SEG over CC and MLO together is made by merging per-image SEGs frame by frame, as other
    toolkits write them (``molsub.synth.build_lesion_seg``).
    """
    return build_lesion_seg(sources, masks, segment_labels=segment_labels, seg_uid=seg_uid)


def roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, as a receiver would see the object."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def disk_mask(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return ((rr - center[0]) ** 2 + (cc - center[1]) ** 2) <= radius**2


# A 20x24 12-bit HTJ2K (Part 15, reversible 5/3) codestream of `htj2k_expected_pixels()`,
# made once with OpenJPH 0.9 (Debian openjph-tools: `ojph_compress -reversible true
# -num_decomps 2` from a 16-bit PGM): pydicom 3.0 has no HTJ2K encoder and pylibjpeg-openjpeg
# only decodes HTJ2K.
HTJ2K_CODESTREAM = base64.b64decode(
    "/0//UQApQAAAAAAUAAAAGAAAAAAAAAAAAAAAFAAAABgAAAAAAAAAAAABCwEB/1AACAACAAAAB/9SAAwAAgABAAIE"
    "BEAB/1wACiBweHh4cHB4/2QAFgABT3BlbkpQSCBWZXIgMC45LjAu/5AACgAAAAACuQAB/5PAAXbgcVCXpf1N97ts"
    "imr4rxdljkxnMaFGtEDCP4PogVTSqM5bNCcgtAeYw0/6Ac9cns6tGC8hQNM9AMAAuvgAF2UAAu0A49g6IVFPrv7B"
    "eJmEuPlmApdCJ6QZYXhAs4qSbb3FUhla/gBE054XRCMLxCARnQDjStiiKOSbGxXYAZ/+t5LhUujR7QhewEUjVd7o"
    "TmVg2io9r/IFf8ikcTxyIgvEICKeAMkVFHzt0erhwwU6ez9oeegGLHIK1xJN5uISeIEGNrzC6uy/PkeLCzZBQyde"
    "TkB8QQMvPgDAAX0/AAX05AAL6JBhMeP2lGL2RkHCU4x7F4uFDQO4fx+m1sWLYmi9u5Mq6MWY1snFtMLAZ6w3zMWL"
    "e8UsNp6e1jDCiCFWLIyYKKMUw/mFsDAo1apVsffEWBz/WRmCcjHmwHmDFAf/cy+ZPWnKpZzkfPM19/8J8wMuRtJ1"
    "hjkxB0h5jDgAY9wNgv0BRCQQ4LkkDyAg0MsPovHVi9Wejy5IAxiuIIHr8MRn0QIhfGIu8rWF8aStMFC2ExdrL6ZY"
    "GACLw9hyH0YsVjyrPWMxJ/DDtJ/Fl3GYMLHFYsTMKibvi2IutnUx70UxUaK8mPOLbS1G6b49xoQPAP4jJjm1z2aK"
    "yfmcxfGBnA3T/yiFWO8MY1nEAMM4FUFpchGTNsLgnKPYZDFG+AyjmV0ysklCSSDpZ9V8eP0qzscJVwo5AYxSIQDN"
    "UURn0gKLFzPGOMoiKYovtpgUGGGEkZTFMFbs4lHGGONRFiMF41EWW0yRFMUuXmTsYkWLcl6MlBljzigxZ9ZozZyZ"
    "s/9Lc4zRGqSsnDWn/yvOy7nWwhjM6WLA2Jz5/2KIMRjjhgC+n3au7ob0tuyS2GYHyDA/xji3/NGN80sC66frX6wy"
    "jsIwD78QQGfaAv/Z"
)


def htj2k_expected_pixels() -> np.ndarray:
    yy, xx = np.mgrid[:24, :20]
    pixels = ((yy * 171 + xx * 37 + (yy * xx) % 13 * 61) % 4096).astype(np.uint16)
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    return pixels


def make_htj2k_mg(transfer_syntax: str) -> Dataset:
    """An MG image whose pixel data is ``HTJ2K_CODESTREAM``, labelled with an HTJ2K syntax."""
    pixels = htj2k_expected_pixels()
    ds = make_mg(np.zeros_like(pixels))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([HTJ2K_CODESTREAM])
    ds["PixelData"].VR = "OB"
    return ds
