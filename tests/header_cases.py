"""Messy real headers: each case is one change applied to a real vendor sample (and its SEG).

The bases are real: the Siemens Mammomat image as it is (JPEG Lossless, ISO_IR 192, no
PixelSpacing), and the GE Senographe header (SIGMOID VOI, SNM3 view code, three windows) with a
small SYNTHETIC image put in place of its cut-down 1x2 pixels, so that a lesion fits.
A case changes the MG and, for patient and study attributes, the SEG too, as a toolkit that
made the SEG from that MG would have copied them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.factories import disk_mask, make_seg

SIEMENS = "mg/OutOfBoundsOverlay.dcm"
GE = "mg/MG-Im-GE_Seno_1_ForPresentation.dcm"
GE_SHAPE = (320, 256)  # rows, columns of the SYNTHETIC pixels put under the GE header


def load_siemens(samples: Path) -> Dataset:
    return pydicom.dcmread(samples / SIEMENS)


def load_ge(samples: Path) -> Dataset:
    """The real GE header over SYNTHETIC 12-bit pixels (its own pixel data is 1x2)."""
    ds = pydicom.dcmread(samples / GE)
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[: GE_SHAPE[0], : GE_SHAPE[1]]
    pixels = 1800 + 4 * yy + 2 * xx + rng.normal(0, 40, GE_SHAPE)
    pixels[140:180, 100:140] += 500
    set_pixels(ds, pixels.clip(0, 4095).astype(np.uint16))
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Uncompressed ``pixels`` (uint16) in place of the object's pixel data."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 0, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"


def lesion_mask(ds: Dataset) -> np.ndarray:
    """A disk well inside the image, where the test images have their brighter "mass"."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    return disk_mask((rows, cols), (rows // 2, cols // 2), max(8, min(rows, cols) // 10))


Change = Callable[[Dataset], None]


@dataclass(frozen=True)
class HeaderCase:
    """``change`` applies to the MG; ``on_seg`` says whether the SEG carries it too."""

    name: str
    base: str  # "siemens" or "ge"
    change: Change
    on_seg: bool = True


def _set(**values: object) -> Change:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


def _delete(*keywords: str) -> Change:
    def change(ds: Dataset) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return change


def _charset(charset: str, **names: str) -> Change:
    def change(ds: Dataset) -> None:
        ds.SpecificCharacterSet = charset
        for keyword, value in names.items():
            setattr(ds, keyword, value)

    return change


def _laterality_only_in_laterality(ds: Dataset) -> None:
    ds.ImageLaterality = ""
    ds.Laterality = "L"


def _laterality_only_in_view_code(ds: Dataset) -> None:
    """ImageLaterality empty; the View Code Sequence's modifier says Left (SCT 7771000)."""
    ds.ImageLaterality = ""
    if "Laterality" in ds:
        del ds.Laterality
    modifier = Dataset()
    modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = (
        "7771000",
        "SCT",
        "Left",
    )
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = [modifier]


def _rows_columns_swapped(ds: Dataset) -> None:
    """The pixel matrix transposed while PatientOrientation still describes the original."""
    set_pixels(ds, ds.pixel_array.T.copy())


def _pixel_spacing_missing(ds: Dataset) -> None:
    if "PixelSpacing" in ds:
        del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.094090909, 0.094090909]


CASES: tuple[HeaderCase, ...] = (
    HeaderCase("ge-as-is", "ge", lambda ds: None),
    HeaderCase("da-zeros", "ge", _set(PatientBirthDate="00000000")),
    HeaderCase("da-four-digits", "siemens", _set(StudyDate="0000")),
    HeaderCase("da-month-zero", "siemens", _set(PatientBirthDate="19000000")),
    HeaderCase("da-iso", "siemens", _set(StudyDate="2023-01-01")),
    HeaderCase("tm-colons", "siemens", _set(StudyTime="10:15:00")),
    HeaderCase("tm-long-fraction", "ge", _set(StudyTime="132135.1234567")),
    HeaderCase("as-no-unit", "siemens", _set(PatientAge="065")),
    HeaderCase("pn-single-component", "ge", _set(PatientName="MAMMOGRAPHY")),
    HeaderCase(
        "pn-non-ascii-latin1",
        "ge",
        _charset("ISO_IR 100", PatientName="Müller^Jürgen", ReferringPhysicianName="Noël^Zoë"),
    ),
    HeaderCase(
        "sh-lo-too-long",
        "siemens",
        _set(
            StationName="MAMMO-ROOM-3-WEST-WING-BUILDING-C-0042",  # 38 characters, SH holds 16
            InstitutionName="Radiology " * 8,  # 80 characters, LO holds 64
            StudyDescription="Screening mammography, bilateral, two views " * 2,
            Manufacturer="Siemens Healthineers " * 4,
        ),
    ),
    HeaderCase(
        "type2-missing",
        "siemens",
        _delete("StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime"),
    ),
    HeaderCase(
        "utf8-chinese-accented",
        "siemens",
        _charset(
            "ISO_IR 192",
            PatientName="Wang^Xiaohong=王^小红",
            ReferringPhysicianName="Müller^Zoë^Éléonore",
        ),
    ),
    HeaderCase("gb18030", "ge", _charset("GB18030", PatientName="Wang^Xiaohong=王^小红")),
    HeaderCase("laterality-in-laterality", "siemens", _laterality_only_in_laterality, False),
    HeaderCase("laterality-in-view-code", "siemens", _laterality_only_in_view_code, False),
    HeaderCase("view-position-missing", "ge", _delete("ViewPosition"), False),
    HeaderCase("rows-columns-swapped", "ge", _rows_columns_swapped, False),
    HeaderCase("pixel-spacing-missing", "ge", _pixel_spacing_missing, False),
)


def build_case(case: HeaderCase, samples: Path, index: int) -> tuple[Dataset, Dataset]:
    """(MG, SEG) for one case, with UIDs of their own so that cases never collide."""
    base = load_ge(samples) if case.base == "ge" else load_siemens(samples)
    base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
        entropy_srcs=[case.name, "mg"]
    )
    base.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[case.name, "study"])
    base.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[case.name, "series"])
    mg = copy.deepcopy(base)
    case.change(mg)
    # The SEG is drawn on the image; a toolkit that made it copied the patient and study
    # attributes as they were, so those changes are applied to the SEG afterwards.
    seg = make_seg([base if case.on_seg else mg], [lesion_mask(mg)])
    if case.on_seg:
        case.change(seg)
    seg.SeriesNumber = 900 + index
    return mg, seg
