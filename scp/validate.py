"""Structural checks of a received object, before the SCP answers success.

What can be checked without decoding a pixel: the dataset parses to its end, Pixel Data is
there, its length fits Rows x Columns x Samples x BitsAllocated x frames (native syntaxes) or its
fragments are well formed (encapsulated ones), dimensions and bit depths are plausible for MG,
and a SEG's frames match its own grid. Full decoding stays in prepare; what fails here never
becomes a unit. Each failure names its check (``Check``), which picks the 0xC0xx status and
starts the Error Comment; comments and logs carry numbers and check names, never header text.

pydicom's own warnings and log records while a received header is read may quote its values
(a PN, a charset); ``quiet_parsing`` drops them for the thread that reads.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any

import pydicom
import pydicom.filereader
import pydicom.hooks
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from common.errors import InputError
from common.sop_classes import MG_SOP_CLASSES, SEGMENTATION

# Values this large stay on disk while the header is read (a 30 MB native Pixel Data is seen by
# its length and offset only).
DEFER_SIZE = 1 << 16
# Plausible MG geometry: detectors are 1.9k..6k a side (REFERENCE.md s.3); 12k leaves room for
# anything real and keeps a decoded image under 300 MB.
MAX_SIDE = 12288
MG_BITS_ALLOCATED = (8, 16)
MIN_BITS_STORED = 6  # the MG IOD allows 6..16
SEG_BITS_ALLOCATED = (1, 8, 16)  # BINARY; FRACTIONAL; LABELMAP
MAX_SEG_FRAMES = 4096
MAX_FRAGMENTS = 65536
MAX_OFFSET_TABLE = 4 * MAX_SEG_FRAMES
UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_OTHER_PIXEL_DATA = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))  # Float, Double Float


class Check(StrEnum):
    """A check a received object failed: its name starts the Error Comment."""

    PARSE = "parse"  # the dataset does not parse to its end
    TRUNCATED = "truncated"  # an element ends past the end of the object
    PIXEL_DATA = "pixel-data"  # no (integer) Pixel Data where the IOD needs it
    PIXEL_LENGTH = "pixel-length"  # native Pixel Data length != the grid it claims
    FRAGMENTS = "fragments"  # encapsulated Pixel Data items malformed
    GEOMETRY = "geometry"  # dimensions, samples or bit depths implausible for MG / SEG
    SEG_GRID = "seg-grid"  # a SEG's frames do not match its own description

    @property
    def status(self) -> int:
        """The C-STORE status (0xC000 range, "Cannot understand") that answers it."""
        return _STATUS[self]


_STATUS = {
    Check.PARSE: 0xC000,
    Check.TRUNCATED: 0xC001,
    Check.PIXEL_DATA: 0xC002,
    Check.PIXEL_LENGTH: 0xC003,
    Check.FRAGMENTS: 0xC004,
    Check.GEOMETRY: 0xC005,
    Check.SEG_GRID: 0xC006,
}


class InvalidObject(InputError):
    """A received object failed ``check``; the reason is ``"<check>: <what>"``."""

    def __init__(self, uid: str | None, check: Check, what: str) -> None:
        self.check = check
        super().__init__(uid, f"{check}: {what}")


# -- quiet parsing -----------------------------------------------------------------------------

_quiet = threading.local()


# What pydicom says when it had to guess the encoding of a header: its data then do not match
# what the object claims (explicit VR under an implicit syntax, or the reverse; VR bytes that
# are no VR), and the object is refused rather than spooled with a header read by guesswork.
GUESSED_ENCODING = (
    "Expected explicit VR, but found implicit VR",
    "Expected implicit VR, but found explicit VR",
    "VR lookup failed",
)


class _DropWhileQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


def _noting(original: Callable[..., None]) -> Callable[..., None]:
    """pydicom's ``warn_and_log`` as its reader calls it, noting the message for the quiet
    thread first: the note reaches ``read_header`` whatever logging and warnings filters say
    (a disabled logger or a "once" warning filter would hide the guess)."""

    def warn_and_log(msg: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        notes = getattr(_quiet, "notes", None)
        if getattr(_quiet, "on", False) and notes is not None:
            notes.append(str(msg))
        original(msg, *args, **kwargs)

    return warn_and_log


# Where the reader guesses: the dataset reader (implicit/explicit VR) and the VR lookup hook.
for _module in (pydicom.filereader, pydicom.hooks):
    _module.warn_and_log = _noting(_module.warn_and_log)  # type: ignore[attr-defined]


_FILTER = _DropWhileQuiet()
for _name in ("pydicom", "py.warnings"):  # py.warnings: where captured warnings are logged
    logging.getLogger(_name).addFilter(_FILTER)
_showwarning = warnings.showwarning


def _show_unless_quiet(*args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - showwarning's
    """warnings.catch_warnings is process-wide (not thread-safe): the quiet thread's warnings
    are dropped where they would be shown instead."""
    if not getattr(_quiet, "on", False):
        _showwarning(*args, **kwargs)


warnings.showwarning = _show_unless_quiet


@contextlib.contextmanager
def quiet_parsing() -> Iterator[list[str]]:
    """Reading an untrusted header: pydicom's warnings and log lines (which may quote values)
    are dropped for this thread, and their texts collected in the list yielded; other threads
    warn and log as usual."""
    was, notes_before = getattr(_quiet, "on", False), getattr(_quiet, "notes", None)
    notes: list[str] = []
    _quiet.on, _quiet.notes = True, notes
    try:
        yield notes
    finally:
        _quiet.on, _quiet.notes = was, notes_before


# -- reading -----------------------------------------------------------------------------------


def read_header(path: Path, name: str) -> pydicom.Dataset:
    """The dataset at ``path``, every element parsed except large deferred values, and its
    extent checked against the file: InvalidObject(PARSE or TRUNCATED) naming ``name``."""
    size = path.stat().st_size
    with quiet_parsing() as notes:
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
            deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
            end = 0 if deflated else _last_element_end(ds, path, size, name)
            _parse_all(ds)
        except InvalidObject:
            raise
        except Exception as exc:  # any parser failure is the sender's object, not ours
            what = f"dataset does not parse ({type(exc).__name__})"
            raise InvalidObject(name, Check.PARSE, what) from None
    if any(note.startswith(GUESSED_ENCODING) for note in notes):
        raise InvalidObject(name, Check.PARSE, "encoding does not match the transfer syntax")
    if end > size:
        raise InvalidObject(name, Check.TRUNCATED, f"object ends {end - size} bytes early")
    if not deflated and end < size:
        raise InvalidObject(name, Check.PARSE, f"{size - end} bytes after the last element")
    return ds


def _last_element_end(ds: pydicom.Dataset, path: Path, size: int, name: str) -> int:
    """Where the last top-level element ends in the file (from its raw offset and length)."""
    if not len(ds):
        raise InvalidObject(name, Check.PARSE, "empty dataset")
    raw = ds.get_item(list(ds.keys())[-1], keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
        raise InvalidObject(name, Check.PARSE, "last element has no file position")
    if raw.length != UNDEFINED:
        return int(raw.value_tell) + int(raw.length)
    if raw.value is not None:  # read whole by pydicom, then a sequence delimiter
        return int(raw.value_tell) + len(raw.value) + 8
    return scan_items(path, int(raw.value_tell), size, name).end


@dataclass(frozen=True)
class Items:
    """Encapsulated Pixel Data as stored: the Basic Offset Table and each fragment's length."""

    offsets: tuple[int, ...]
    fragments: tuple[int, ...]
    end: int  # file position after the sequence delimiter


def scan_items(path: Path, start: int, size: int, uid: str | None) -> Items:
    """Walk the items of an encapsulated value from ``start`` by their headers only (no
    fragment is read): TRUNCATED when one runs past the file, FRAGMENTS when malformed."""
    offsets: tuple[int, ...] = ()
    fragments: list[int] = []
    pos = start
    with path.open("rb") as fh:
        while True:
            fh.seek(pos)
            header = fh.read(8)
            if len(header) < 8:
                raise InvalidObject(uid, Check.TRUNCATED, "encapsulated data has no delimiter")
            group, elem, length = struct.unpack("<HHL", header)
            pos += 8
            if (group, elem) == (0xFFFE, 0xE0DD):
                if length:
                    raise InvalidObject(uid, Check.FRAGMENTS, "delimiter with a length")
                return Items(offsets, tuple(fragments[1:]), pos)
            if (group, elem) != (0xFFFE, 0xE000) or length == UNDEFINED:
                raise InvalidObject(uid, Check.FRAGMENTS, "an item is not a defined-length item")
            if pos + length > size:
                raise InvalidObject(uid, Check.TRUNCATED, "a fragment runs past the object")
            if not fragments:  # the first item is the Basic Offset Table
                if length % 4 or length > MAX_OFFSET_TABLE:
                    raise InvalidObject(uid, Check.FRAGMENTS, "offset table length")
                table = fh.read(length)
                offsets = struct.unpack(f"<{length // 4}L", table)
            elif len(fragments) > MAX_FRAGMENTS:
                raise InvalidObject(uid, Check.FRAGMENTS, f"over {MAX_FRAGMENTS} fragments")
            fragments.append(length)
            pos += length


def _parse_all(ds: pydicom.Dataset) -> None:
    """Convert every element (sequences included): a value pydicom cannot convert raises here,
    not in prepare. Deferred values (large, on disk) are left there."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if tag == _PIXEL_DATA or (isinstance(raw, RawDataElement) and raw.value is None):
            continue  # deferred, or Pixel Data: checked from its raw offset and length
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_all(item)


# -- checks ------------------------------------------------------------------------------------


def check_object(ds: pydicom.Dataset, path: Path, sop_uid: str, sop_class: str) -> None:
    """The pixel checks of an MG image or a SEG (other classes have none here)."""
    if sop_class not in MG_SOP_CLASSES and sop_class != SEGMENTATION:
        return
    if any(t in ds for t in _OTHER_PIXEL_DATA) or _PIXEL_DATA not in ds:
        raise InvalidObject(sop_uid, Check.PIXEL_DATA, "no integer Pixel Data")
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    encapsulated = isinstance(raw, RawDataElement) and raw.length == UNDEFINED
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not encapsulated and syntax.is_compressed:
        raise InvalidObject(sop_uid, Check.FRAGMENTS, "compressed syntax, native Pixel Data")
    if encapsulated and not syntax.is_compressed:
        raise InvalidObject(sop_uid, Check.FRAGMENTS, "native syntax, encapsulated Pixel Data")
    grid = _geometry(ds, sop_uid, is_seg=sop_class == SEGMENTATION)
    if encapsulated:
        items = scan_items(path, int(raw.value_tell), path.stat().st_size, sop_uid)
        _check_fragments(items, grid.frames, sop_uid)
    else:
        length = _value_length(ds)
        if length == 0:
            raise InvalidObject(sop_uid, Check.PIXEL_DATA, "Pixel Data is empty")
        expected = grid.native_length
        if length not in (expected, expected + (expected % 2)):
            raise InvalidObject(
                sop_uid, Check.PIXEL_LENGTH, f"{length} bytes, the grid needs {expected}"
            )
    if sop_class == SEGMENTATION:
        _check_seg_grid(ds, grid.frames, sop_uid)


class _Grid:
    def __init__(self, rows: int, cols: int, samples: int, bits: int, frames: int) -> None:
        self.rows, self.cols, self.samples, self.bits, self.frames = (
            rows,
            cols,
            samples,
            bits,
            frames,
        )

    @property
    def native_length(self) -> int:
        bits = self.rows * self.cols * self.samples * self.bits * self.frames
        return (bits + 7) // 8


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _geometry(ds: pydicom.Dataset, sop_uid: str, *, is_seg: bool) -> _Grid:
    """Rows, Columns, samples, bit depths and frames, each within what MG or SEG can be."""
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel")
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    high = _int(ds, "HighBit")
    frames = _int(ds, "NumberOfFrames", 1)

    def fail(what: str) -> InvalidObject:
        return InvalidObject(sop_uid, Check.GEOMETRY, what)

    if not rows or not cols or not 1 <= rows <= MAX_SIDE or not 1 <= cols <= MAX_SIDE:
        raise fail(f"Rows/Columns missing or outside 1..{MAX_SIDE}")
    if samples != 1:
        raise fail("SamplesPerPixel is not 1")
    if _int(ds, "PixelRepresentation") not in (0, 1):
        raise fail("PixelRepresentation is not 0 or 1")
    allowed_bits = SEG_BITS_ALLOCATED if is_seg else MG_BITS_ALLOCATED
    if allocated not in allowed_bits:
        raise fail(f"BitsAllocated {allocated} not in {'/'.join(map(str, allowed_bits))}")
    min_stored = allocated if is_seg else MIN_BITS_STORED
    if stored is None or not min_stored <= stored <= allocated:
        raise fail(f"BitsStored not in {min_stored}..{allocated}")
    if high != stored - 1:
        raise fail("HighBit is not BitsStored - 1")
    if frames is None or frames < 1:
        raise fail("NumberOfFrames is not a positive integer")
    if not is_seg and frames != 1:
        raise fail("an MG image has one frame")
    if is_seg and frames > MAX_SEG_FRAMES:
        raise fail(f"more than {MAX_SEG_FRAMES} frames")
    return _Grid(rows, cols, samples, allocated, frames)


def _value_length(ds: pydicom.Dataset) -> int:
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length = getattr(raw, "length", None)
    if isinstance(raw, RawDataElement) and length is not None:
        return int(length)
    return len(raw.value or b"")


def _check_fragments(items: Items, frames: int, sop_uid: str) -> None:
    """Fragments of even length, at least one per frame; a non-empty offset table has one
    increasing offset per frame, the first 0, each inside the data."""

    def fail(what: str) -> InvalidObject:
        return InvalidObject(sop_uid, Check.FRAGMENTS, what)

    fragments, offsets = items.fragments, items.offsets
    if not any(fragments):
        raise fail("no fragment data")
    if any(length % 2 for length in fragments):
        raise fail("a fragment has an odd length")
    if len(fragments) < frames:
        raise fail(f"{len(fragments)} fragments for {frames} frames")
    if offsets:
        total = sum(length + 8 for length in fragments)
        if len(offsets) != frames or offsets[0] != 0:
            raise fail(f"offset table has {len(offsets)} entries for {frames} frames")
        if any(b <= a for a, b in pairwise(offsets)) or offsets[-1] >= total:
            raise fail("offset table is not increasing within the data")


def _check_seg_grid(ds: pydicom.Dataset, frames: int, sop_uid: str) -> None:
    """One functional-group item per frame, each naming a segment the SEG describes."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        count = 0 if per_frame is None else len(per_frame)
        raise InvalidObject(sop_uid, Check.SEG_GRID, f"{count} per-frame items for {frames} frames")
    numbers = {_int(s, "SegmentNumber") for s in ds.get("SegmentSequence") or []}
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    shared_ident = (shared.get("SegmentIdentificationSequence") if shared else None) or []
    for index, item in enumerate(per_frame, start=1):
        ident = item.get("SegmentIdentificationSequence") or shared_ident
        if len(ident) != 1 or _int(ident[0], "ReferencedSegmentNumber") not in numbers:
            raise InvalidObject(
                sop_uid, Check.SEG_GRID, f"frame {index} names no segment the SEG describes"
            )
