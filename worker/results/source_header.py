"""What the results copy from a source image or SEG, made valid: the one place that decides.

Real headers break the rules of their VRs (a birth date "00000000", a time "10:15:00", a Station
Name of 38 characters), and highdicom copies the Patient, Study and equipment attributes of a
source as they are: the results would be invalid or, for a date of year 0, not built at all.
``clean_header`` returns a copy where every attribute the results copy is checked against its VR:

- a valid value is kept as it is;
- an invalid one is repaired where the repair is certain (``Repair.REPAIRED``): trailing padding
  removed, an SH/LO/ST/LT cut to its VR's length, a Person Name component cut to 64 characters,
  a CS in lower case upper-cased, a DA written ``YYYY-MM-DD`` or ``YYYY.MM.DD`` made
  ``YYYYMMDD``, a TM with colons made ``HHMMSS``, more than 6 fractional digits of a TM cut to 6;
- otherwise it is dropped: a type 2 attribute is left empty (``Repair.EMPTIED``), others are
  removed (``Repair.REMOVED``).

Missing type 2 attributes of the copied modules (StudyID, AccessionNumber, ...) are added empty,
as the modules require. PatientID, StudyInstanceUID, AccessionNumber and every UID are never
changed. Each object's repairs are logged once, with its UID and the keywords, never a value.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.valuerep import validate_value

from common.mammo import View

log = logging.getLogger(__name__)

# Never changed, whatever they hold: they identify the patient, the study and the objects.
PROTECTED = frozenset({"PatientID", "StudyInstanceUID", "AccessionNumber"})
# Copied besides the Patient and Study modules: who acquired the image (highdicom's
# ContributingEquipment.for_image_acquisition), and where and how it was taken.
IMAGE_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ImageLaterality",
    "Laterality",
    "ViewPosition",
    "PatientOrientation",
    "PixelSpacing",
    "ImagerPixelSpacing",
)
TEXT_MAX_LEN = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
_INVALID = object()  # _clean_element: no certain repair
PN_COMPONENT_MAX_LEN = 64
_PADDING = " \x00"


class Repair(StrEnum):
    REPAIRED = "repaired"  # made valid with certainty; the meaning is unchanged
    EMPTIED = "emptied"  # type 2: left empty (invalid, or missing and required)
    REMOVED = "removed"  # invalid and not type 2: left out


@dataclass(frozen=True)
class HeaderRepair:
    keyword: str
    repair: Repair


@functools.cache
def _copied_modules(sop_class_uid: str) -> dict[str, str]:
    """Keyword -> DICOM type of every root attribute of the Patient and Study modules of the
    object's IOD: the attributes highdicom copies into a result (from its own module table, so
    that what is cleaned here is exactly what is copied there). In optional modules (clinical
    trial, patient study) every attribute counts as type 3: none is added when missing."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return {}
    modules = get_module_attribute_map()
    found: dict[str, str] = {}
    for module in get_iod_module_map()[iod]:
        if module["ie"] in ("Patient", "Study"):
            mandatory = module.get("usage") == "M"
            for attribute in modules[module["key"]]:
                if not attribute["path"]:
                    kind = str(attribute["type"]) if mandatory else "3"
                    found.setdefault(str(attribute["keyword"]), kind)
    return found


@contextlib.contextmanager
def _values_unlogged() -> Iterator[None]:
    """pydicom warns and logs every invalid value it reads, value included; this module checks
    the values itself and must not put them in a log (workers are single-threaded)."""
    before = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode = before


def clean_header(ds: Dataset) -> tuple[Dataset, list[HeaderRepair]]:
    """A copy of ``ds`` whose copied attributes are valid, and what was done to make them so."""
    with _values_unlogged():
        return _clean_header(ds)


def _clean_header(ds: Dataset) -> tuple[Dataset, list[HeaderRepair]]:
    out = Dataset()
    out.file_meta = getattr(ds, "file_meta", Dataset())
    for elem in ds:
        out.add(elem)  # shallow: only the elements changed below are replaced
    types = _copied_modules(str(ds.get("SOPClassUID", "")))
    repairs: list[HeaderRepair] = []
    for keyword in (*types, *IMAGE_KEYWORDS):
        kind = types.get(keyword, "3")
        type_2 = kind in ("2", "2C")
        if keyword not in out:
            if kind == "2":  # required, may be empty (2C: only under its condition)
                out.add_new(keyword, dictionary_VR(keyword), "")
                repairs.append(HeaderRepair(keyword, Repair.EMPTIED))
            continue
        if keyword in PROTECTED:
            continue
        elem = out[keyword]
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            continue
        outcome = _clean_element(elem)
        if outcome is None:
            continue
        if outcome is _INVALID:
            if type_2:
                out[keyword] = DataElement(elem.tag, elem.VR, "")
                repairs.append(HeaderRepair(keyword, Repair.EMPTIED))
            else:
                del out[keyword]
                repairs.append(HeaderRepair(keyword, Repair.REMOVED))
            continue
        out[keyword] = DataElement(elem.tag, elem.VR, outcome)
        repairs.append(HeaderRepair(keyword, Repair.REPAIRED))
    if repairs:
        log.info(
            "object %s: header repaired for the results: %s",
            ds.get("SOPInstanceUID", "(no SOP Instance UID)"),
            ", ".join(f"{r.keyword} {r.repair}" for r in repairs),
        )
    return out, repairs


def _clean_element(elem: DataElement) -> object:
    """None when the value is valid as it is, the repaired value, or _INVALID."""
    values = list(elem.value) if isinstance(elem.value, MultiValue | list | tuple) else None
    items = values if values is not None else [elem.value]
    if all(_valid(elem.VR, v) for v in items):
        return None
    repaired = [_repair(elem.VR, v) for v in items]
    if any(r is None or not _valid(elem.VR, r) for r in repaired):
        return _INVALID
    return repaired if values is not None else repaired[0]


def _valid(vr: str, value: object) -> bool:
    if vr == "PN":
        return _valid_person_name(value)
    if vr in ("DS", "IS"):
        value = str(value)  # pydicom's DSfloat / IS keep the string they were read from
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except (ValueError, TypeError):
        return False
    if vr == "DA":
        return _real_date(str(value))
    if vr == "TM":
        return _real_time(str(value))
    return True


def _repair(vr: str, value: object) -> object | None:
    """The value made valid where that is certain, else None."""
    if vr == "PN":
        return _repair_person_name(value)
    if not isinstance(value, str):
        return None
    text = value.rstrip(_PADDING)
    if vr in TEXT_MAX_LEN:
        return text[: TEXT_MAX_LEN[vr]]
    if vr == "CS":
        return text.upper()
    if vr == "DA":
        match = re.fullmatch(r"(\d{4})[-.](\d{2})[-.](\d{2})", text)
        return "".join(match.groups()) if match else text
    if vr == "TM":
        text = text.replace(":", "")
        whole, dot, fraction = text.partition(".")
        return f"{whole}{dot}{fraction[:6]}" if dot else whole
    return text


def _real_date(text: str) -> bool:
    """DA is a calendar date (pydicom checks the pattern; 00000000 and 20230230 are not dates)."""
    if not text:
        return True
    try:
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _real_time(text: str) -> bool:
    whole = text.partition(".")[0]
    if not whole:
        return True
    hh, mm, ss = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    return hh < 24 and mm < 60 and ss < 61  # 60: a leap second


def _person_name_groups(value: object) -> list[list[str]]:
    """Component groups (alphabetic, ideographic, phonetic) of their components."""
    return [group.split("^") for group in str(value).split("=")]


def _valid_person_name(value: object) -> bool:
    """PS3.5 6.2: at most 3 component groups of at most 5 components, each at most 64 chars."""
    groups = _person_name_groups(value)
    return len(groups) <= 3 and all(
        len(group) <= 5 and all(len(c) <= PN_COMPONENT_MAX_LEN for c in group) for group in groups
    )


def _repair_person_name(value: object) -> str | None:
    groups = _person_name_groups(value)
    if len(groups) > 3 or any(len(group) > 5 for group in groups):
        return None  # which components belong where is not certain
    cut = [[c.rstrip(_PADDING)[:PN_COMPONENT_MAX_LEN] for c in group] for group in groups]
    return "=".join("^".join(group) for group in cut)


# --- laterality and view, wherever the header keeps them ---------------------------------

# Left / Right (SCT, SNM3) and left / right breast (SCT, SNM3).
_LEFT = ("7771000", "G-A101", "80248007", "T-04030")
_RIGHT = ("24028007", "G-A100", "73056007", "T-04020")
# CID 4014 "View for Mammography": SCT and the older SNOMED-RT (SNM3) codes vendors still write.
VIEW_POSITION_BY_CODE = {
    "399162004": "CC",
    "R-10242": "CC",
    "399368009": "MLO",
    "R-10226": "MLO",
    "399260004": "ML",
    "R-10224": "ML",
    "399352003": "LM",
    "R-10228": "LM",
    "399099002": "LMO",
    "R-10230": "LMO",
    "399192003": "XCCL",
    "R-1024A": "XCCL",
    "399101009": "XCCM",
    "R-1024B": "XCCM",
    "399196000": "FB",
    "R-10244": "FB",
    "399188001": "SIO",
    "R-102D0": "SIO",
}


def _codes(ds: Dataset, *keywords: str) -> Iterator[Dataset]:
    for keyword in keywords:
        for item in ds.get(keyword, []) or []:
            yield item
            yield from _codes(item, "ViewModifierCodeSequence", "AnatomicRegionModifierSequence")


def laterality_of(image: Dataset) -> str | None:
    """L or R from ImageLaterality, else Laterality, else a laterality code (SCT Left/Right)
    or "left"/"right" in the view or anatomic region codes."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(image.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    for item in _codes(image, "ViewCodeSequence", "AnatomicRegionSequence"):
        value = str(item.get("CodeValue", ""))
        meaning = str(item.get("CodeMeaning", "")).lower()
        if value in _LEFT or re.search(r"\bleft\b", meaning):
            return "L"
        if value in _RIGHT or re.search(r"\bright\b", meaning):
            return "R"
    return None


def view_position_of(image: Dataset) -> str | None:
    """ViewPosition, else the one its View Code Sequence names (CID 4014)."""
    value = str(image.get("ViewPosition", "") or "").strip().upper()
    if value:
        return value
    for item in image.get("ViewCodeSequence", []) or []:
        found = VIEW_POSITION_BY_CODE.get(str(item.get("CodeValue", "")))
        if found:
            return found
    return None


def view_code_of(image: Dataset) -> Code | None:
    """The view as a code: the image's own View Code Sequence item, else from ViewPosition."""
    for item in image.get("ViewCodeSequence", []) or []:
        if all(k in item for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")):
            return Code(
                str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)
            )
    position = view_position_of(image)
    if position in set(View):
        value, meaning = View(position).snomed
        return Code(value, "SCT", meaning)
    return None


def clean_headers(datasets: Iterable[Dataset]) -> list[Dataset]:
    """``clean_header`` of each, repairs logged."""
    return [clean_header(ds)[0] for ds in datasets]
