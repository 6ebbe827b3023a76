"""Malformed objects for the fuzz tests, made from the real public samples (and a SEG built over
one of them as tests/factories.py builds SEGs). Nothing here is written into the repository.

Two families, as hypothesis strategies over ``Base`` objects:

- ``store_cases``: what the SCP's structural checks (scp/validate.py) must refuse or take:
  truncations, flipped length fields, VR and byte corruptions, header/pixel mismatches, a bogus
  Transfer Syntax UID in the file meta, broken SEG grids, empty segments, no Pixel Data.
- ``prepare_cases`` (tests/test_fuzz_prepare.py): objects that pass those checks but that
  prepare cannot use: SEGs pointing at nothing or at another grid, empty segments, compressed
  pixel data that does not decode, window / LUT headers that make no sense.

``structural_defect`` is the independent judge of "well formed": pydicom parses every element
and the pixel data has the length (native) or the frames (encapsulated) its header claims. It
shares no code with scp/validate.py on purpose.
"""

from __future__ import annotations

import copy
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from common.sop_classes import MG_SOP_CLASSES, SEGMENTATION

MG_LITTLE = "mg/MG_Explicit_Little.dcm"  # 512x512, 8 bit, Explicit VR LE
GE = "mg/MG-Im-GE_Seno_1_ForPresentation.dcm"  # real GE header, 16 bit, 1x2 px
SIEMENS = "mg/OutOfBoundsOverlay.dcm"  # real Siemens, JPEG Lossless SV1, 788x1318
CR_SEG = "sr_seg/seg_image_cr_binary.dcm"  # highdicom's BINARY SEG over a 16x16 CR
SEG_LITTLE = "seg-over-MG_Explicit_Little"  # built here, see seg_over_little()

# Fixed UIDs and date, so that a base object (and so every derandomized example) is the same
# bytes in every run.
_ROOT = "2.25.31415926535897932384626433832795"
SEG_UID, SEG_SERIES, TRACKING, DIM_ORG = (f"{_ROOT}{i}" for i in range(1, 5))
UNKNOWN_UID = f"{_ROOT}99"  # a valid UID no object has
SEG_MASK_CENTRE, SEG_MASK_RADIUS = (256, 256), 40

# Syntaxes the node accepts, plus two no one negotiates: the mislabels a sender can make.
MISLABELS = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    RLELossless,
    "1.2.840.10008.1.2.4.9999",
    "1.2.3.4.5.6.7",
)
VRS = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UC", b"UI",
    b"UL", b"UN", b"UR", b"US", b"UT",
]  # fmt: skip
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}  # fmt: skip
GEOMETRY_KEYWORDS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PixelRepresentation",
)


@dataclass(frozen=True)
class Element:
    """A top-level element as stored: where its header starts and its length field is."""

    tag: int
    header: int  # offset of the tag
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4
    explicit: bool  # has a VR field at header + 4


@dataclass(frozen=True)
class Base:
    """A real (or built) object as file bytes, with where its parts are."""

    name: str
    data: bytes
    meta_end: int  # first byte of the dataset after the file meta
    sop_class: str
    elements: tuple[Element, ...]
    pixel_header: int  # offset of the Pixel Data element's tag (len(data) if none)
    items: tuple[int, ...]  # offsets of encapsulated item headers (BOT first), else ()


@dataclass(frozen=True)
class Case:
    """One malformed object: which base, what was done (a short label for counts), its bytes."""

    base: str
    mutation: str
    data: bytes

    @property
    def label(self) -> str:
        return f"{self.base}:{self.mutation}"

    def __repr__(self) -> str:  # hypothesis prints failing examples: not a megabyte of bytes
        return f"Case({self.label!r}, {len(self.data)} bytes, sha1 {_sha1(self.data)})"


def _sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(data).hexdigest()[:12]


# -- bases -------------------------------------------------------------------------------------


def to_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seg_over_little(samples_dir: Path) -> Dataset:
    """A BINARY SEG with one disk over the real 512x512 MG sample, fixed UIDs (tests' way)."""
    import datetime

    from molsub.synth import build_lesion_seg  # what tests.factories.make_seg calls
    from tests.factories import disk_mask

    mg = pydicom.dcmread(samples_dir / MG_LITTLE)
    mask = disk_mask((int(mg.Rows), int(mg.Columns)), SEG_MASK_CENTRE, SEG_MASK_RADIUS)
    return build_lesion_seg(
        [mg],
        [mask],
        seg_uid=SEG_UID,
        series_uid=SEG_SERIES,
        tracking_uids=[TRACKING],
        dimension_organization_uid=DIM_ORG,
        content_datetime=datetime.datetime(2026, 1, 1, 12, 0, 0),
    )


def file_meta(data: bytes) -> tuple[Dataset, int]:
    """The file meta of ``data`` and where the dataset after it starts."""
    fp = BytesIO(data)
    fp.seek(132)  # after the preamble and "DICM"
    meta = pydicom.filereader._read_file_meta_info(fp)  # the meta alone, not the dataset
    return meta, 132 + 12 + int(meta.FileMetaInformationGroupLength)


def make_base(name: str, data: bytes) -> Base:
    """Locate the file meta's end, the top-level elements and any encapsulated items."""
    meta, meta_end = file_meta(data)
    syntax = UID(str(meta.TransferSyntaxUID))
    explicit = not syntax.is_implicit_VR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(BytesIO(data), defer_size=256)
    elements = []
    pixel_header, value_at, undefined = len(data), 0, False
    for tag in list(ds.keys()):  # noqa: SIM118 - tags, in file order
        raw = ds.get_item(tag, keep_deferred=True)
        long_form = explicit and str(raw.VR).encode() in _LONG_VRS
        if isinstance(raw, RawDataElement):
            tell = int(raw.value_tell)
            header = tell - (12 if long_form else 8)
        else:  # pydicom reads sequences at once: it keeps where their header was
            header = int(raw.file_tell)
            tell = header + (12 if long_form or not explicit else 8)
        if explicit and not long_form:
            length_at, size = tell - 2, 2
        else:
            length_at, size = tell - 4, 4
        elements.append(Element(int(tag), header, length_at, size, explicit))
        if int(tag) == 0x7FE00010:
            pixel_header, value_at = header, tell
            undefined = struct.unpack("<L", data[tell - 4 : tell])[0] == 0xFFFFFFFF
    items: list[int] = []
    if undefined:
        pos = value_at
        while pos + 8 <= len(data):
            group, elem, length = struct.unpack("<HHL", data[pos : pos + 8])
            if (group, elem) != (0xFFFE, 0xE000):
                break
            items.append(pos)
            pos += 8 + length
    return Base(name, data, meta_end, str(meta.MediaStorageSOPClassUID), tuple(elements),
                pixel_header, tuple(items))  # fmt: skip


@cache
def bases(samples_dir: Path) -> dict[str, Base]:
    """The real MGs (native 8 and 16 bit, JPEG Lossless), a SEG over one, the CR SEG sample."""
    out = {}
    for name in (MG_LITTLE, GE, SIEMENS, CR_SEG):
        ds = pydicom.dcmread(samples_dir / name)
        out[name] = make_base(name, to_bytes(ds))
    out[SEG_LITTLE] = make_base(SEG_LITTLE, to_bytes(seg_over_little(samples_dir)))
    return out


def dataset_of(base: Base) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(BytesIO(base.data))


def with_meta_syntax(data: bytes, syntax: str) -> bytes:
    """The same dataset bytes under a file meta that names ``syntax``."""
    meta, meta_end = file_meta(data)
    meta.TransferSyntaxUID = syntax
    buf = BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data[meta_end:]


# -- the independent judge ---------------------------------------------------------------------


def _touch(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _touch(item)


def _positive(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    number = int(value)  # raises on None or garbage: not well formed
    if number < 1:
        raise ValueError(f"{keyword} {number}")
    return number


# pydicom warnings that mean it guessed at the structure (value warnings, e.g. a too long LO or
# an unknown Specific Character Set, are not structural).
_GUESSES = (
    "but found",  # "Expected explicit VR, but found implicit VR": the syntax is not the data's
    "End of file reached",
    "VR lookup failed",
    "even multiple",
    "delimiter",
)


def structural_defect(data: bytes) -> str | None:
    """Why the file is not well formed, or None: pydicom parses every element to the end of
    the file, and an MG or SEG carries integer Pixel Data of the size its header claims."""
    fp = BytesIO(data)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(fp)
            _touch(ds)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the verdict
        return f"parse ({type(exc).__name__})"
    guessed = [str(w.message) for w in caught if any(s in str(w.message) for s in _GUESSES)]
    if guessed:
        return f"parse (pydicom guessed: {guessed[0][:60]})"
    if fp.tell() != len(data):
        return f"parse ({len(data) - fp.tell()} bytes not read)"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in MG_SOP_CLASSES and sop_class != SEGMENTATION:
        return None
    if "PixelData" not in ds:
        return "pixel-data"
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if not syntax.is_transfer_syntax:
        return "syntax (not a transfer syntax)"
    try:
        rows, cols = _positive(ds, "Rows"), _positive(ds, "Columns")
        samples, bits = _positive(ds, "SamplesPerPixel", 1), _positive(ds, "BitsAllocated")
        frames = _positive(ds, "NumberOfFrames", 1)
    except (TypeError, ValueError) as exc:
        return f"geometry ({exc})"
    encapsulated = ds["PixelData"].is_undefined_length
    if encapsulated != syntax.is_compressed:
        return "pixel-data (encapsulation does not match the syntax)"
    if encapsulated:
        try:
            got = sum(1 for _ in generate_frames(ds.PixelData, number_of_frames=frames))
        except Exception as exc:  # noqa: BLE001
            return f"fragments ({type(exc).__name__})"
        if got != frames:
            return f"fragments ({got} frames for {frames})"
    else:
        expected = (rows * cols * samples * bits * frames + 7) // 8
        length = len(ds.PixelData or b"")
        if length not in (expected, expected + expected % 2):
            return f"pixel-length ({length} for {expected})"
    if sop_class == SEGMENTATION:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        if len(per_frame) != frames:
            return f"seg-grid ({len(per_frame)} frame items for {frames} frames)"
        numbers = {int(s.SegmentNumber) for s in ds.get("SegmentSequence") or []}
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        for item in per_frame:
            ident = item.get("SegmentIdentificationSequence") or shared.get(
                "SegmentIdentificationSequence", []
            )
            if len(ident) != 1 or int(ident[0].ReferencedSegmentNumber) not in numbers:
                return "seg-grid (a frame names no segment)"
    return None


# -- structural mutations (the C-STORE path) ---------------------------------------------------

Mutator = Callable[[Base], st.SearchStrategy[Case]]


def _case(base: Base, mutation: str, data: bytes) -> Case:
    return Case(base.name, mutation, data)


def _pick(elements: tuple[Element, ...]) -> st.SearchStrategy[Element]:
    """An element by index (short reprs in hypothesis' reports)."""
    return st.integers(0, len(elements) - 1).map(elements.__getitem__)


def truncation(base: Base) -> st.SearchStrategy[Case]:
    return st.integers(base.meta_end, len(base.data) - 1).map(
        lambda cut: _case(base, "truncated", base.data[:cut])
    )


def length_flip(base: Base) -> st.SearchStrategy[Case]:
    """An element's length field: one bit flipped, or a chosen value."""

    def apply(element: Element, how: int | str) -> Case:
        data = bytearray(base.data)
        fmt = "<H" if element.length_size == 2 else "<L"
        at, size = element.length_at, element.length_size
        (old,) = struct.unpack(fmt, data[at : at + size])
        if isinstance(how, int):
            new = old ^ (1 << (how % (8 * size)))
        else:
            top = (1 << (8 * size)) - 1
            new = {"zero": 0, "max": top, "plus2": old + 2, "minus2": old - 2}[how] & top
        data[at : at + size] = struct.pack(fmt, new)
        return _case(base, f"length-{'bit' if isinstance(how, int) else how}", bytes(data))

    how = st.one_of(st.integers(0, 31), st.sampled_from(["zero", "max", "plus2", "minus2"]))
    return st.builds(apply, _pick(base.elements), how)


def vr_corruption(base: Base) -> st.SearchStrategy[Case]:
    """An explicit element's VR replaced by another VR or by two arbitrary bytes."""
    explicit = [e for e in base.elements if e.explicit]

    def apply(element: Element, vr: bytes) -> Case:
        data = bytearray(base.data)
        data[element.header + 4 : element.header + 6] = vr
        kind = "vr-valid" if vr in VRS else "vr-garbage"
        return _case(base, kind, bytes(data))

    vrs = st.one_of(st.sampled_from(VRS), st.binary(min_size=2, max_size=2))
    return st.builds(apply, _pick(tuple(explicit)), vrs)


def byte_overwrite(base: Base) -> st.SearchStrategy[Case]:
    """1..4 arbitrary bytes anywhere in the header part of the dataset (before Pixel Data)."""

    def apply(offset: int, junk: bytes) -> Case:
        data = bytearray(base.data)
        data[offset : offset + len(junk)] = junk
        return _case(base, "bytes", bytes(data[: len(base.data)]))

    end = max(base.meta_end + 1, base.pixel_header)
    return st.builds(apply, st.integers(base.meta_end, end - 1), st.binary(min_size=1, max_size=4))


def trailing_junk(base: Base) -> st.SearchStrategy[Case]:
    return st.binary(min_size=1, max_size=16).map(
        lambda junk: _case(base, "trailing", base.data + junk)
    )


def mislabelled_syntax(base: Base) -> st.SearchStrategy[Case]:
    """The dataset bytes unchanged, the file meta's Transfer Syntax UID another (or bogus)."""
    current = str(file_meta(base.data)[0].TransferSyntaxUID)
    others = [s for s in MISLABELS if s != current]
    return st.sampled_from(others).map(
        lambda s: _case(base, f"syntax-{UID(s).keyword or 'bogus'}", with_meta_syntax(base.data, s))
    )


def header_value(base: Base) -> st.SearchStrategy[Case]:
    """One of the grid's attributes set to another value, or removed."""

    def apply(keyword: str, value: int | None) -> Case:
        ds = dataset_of(base)
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        return _case(base, f"{keyword}={'none' if value is None else 'changed'}", to_bytes(ds))

    values = st.one_of(st.none(), st.integers(0, 17), st.integers(0, 65535))
    return st.builds(apply, st.sampled_from(GEOMETRY_KEYWORDS), values)


def pixel_length(base: Base) -> st.SearchStrategy[Case]:
    """Native Pixel Data shortened or grown (the header unchanged)."""

    def apply(delta: int) -> Case:
        ds = dataset_of(base)
        pixels = bytes(ds.PixelData)
        ds.PixelData = pixels[:delta] if delta < 0 else pixels + b"\x00" * delta
        return _case(base, "pixel-length", to_bytes(ds))

    deltas = st.integers(-4096, 4096).filter(lambda d: d != 0)
    return st.builds(apply, deltas)


def fragment_item(base: Base) -> st.SearchStrategy[Case]:
    """An encapsulated item header (the offset table or a fragment): tag or length damaged."""

    def apply(index: int, how: str, value: int) -> Case:
        data = bytearray(base.data)
        at = base.items[index % len(base.items)]
        if how == "tag":
            data[at : at + 4] = struct.pack("<HH", value & 0xFFFF, (value >> 16) & 0xFFFF)
        else:
            data[at + 4 : at + 8] = struct.pack("<L", value)
        return _case(base, f"item-{how}", bytes(data))

    return st.builds(
        apply, st.integers(0, 7), st.sampled_from(["tag", "length"]), st.integers(0, 2**32 - 1)
    )


def seg_structure(base: Base) -> st.SearchStrategy[Case]:
    """A SEG whose own description is broken: no segments, no Pixel Data, a frame naming a
    segment that is not there, frames added, a grid changed under the same pixels."""

    def apply(how: str, value: int) -> Case:
        ds = dataset_of(base)
        if how == "no-segments":
            ds.SegmentSequence = []
        elif how == "no-pixel-data":
            del ds.PixelData
        elif how == "unknown-segment":
            group = ds.PerFrameFunctionalGroupsSequence[0]
            if "SegmentIdentificationSequence" not in group:
                group = ds.SharedFunctionalGroupsSequence[0]
            group.SegmentIdentificationSequence[0].ReferencedSegmentNumber = value % 65535 + 2
        elif how == "frames":
            ds.NumberOfFrames = int(ds.get("NumberOfFrames", 1)) + 1 + value % 3
        elif how == "grid":
            ds.Rows = int(ds.Rows) + 1 + value % 64
        elif how == "no-frame-items":
            ds.PerFrameFunctionalGroupsSequence = []
        return _case(base, f"seg-{how}", to_bytes(ds))

    hows = ["no-segments", "no-pixel-data", "unknown-segment", "frames", "grid", "no-frame-items"]
    return st.builds(apply, st.sampled_from(hows), st.integers(0, 1000))


def seg_unknown_refs(base: Base) -> st.SearchStrategy[Case]:
    """Well formed, but every reference names an image no one will send."""
    return st.just(_case(base, "seg-unknown-refs", to_bytes(point_refs_at(dataset_of(base)))))


def point_refs_at(seg: Dataset, uid: str = UNKNOWN_UID) -> Dataset:
    """The SEG with every source image reference replaced by ``uid``."""
    for series in seg.get("ReferencedSeriesSequence", []):
        for item in series.get("ReferencedInstanceSequence", []):
            item.ReferencedSOPInstanceUID = uid
    groups = list(seg.get("PerFrameFunctionalGroupsSequence", []))
    groups += list(seg.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                source.ReferencedSOPInstanceUID = uid
    return seg


GENERIC: tuple[Mutator, ...] = (
    truncation,
    length_flip,
    vr_corruption,
    byte_overwrite,
    trailing_junk,
    mislabelled_syntax,
    header_value,
)


def mutators_for(base: Base) -> list[Mutator]:
    chosen = list(GENERIC)
    if base.items:
        chosen.append(fragment_item)
    elif base.pixel_header < len(base.data):
        chosen.append(pixel_length)
    if base.sop_class == SEGMENTATION:
        chosen += [seg_structure, seg_unknown_refs]
    return chosen


def store_cases(samples_dir: Path) -> st.SearchStrategy[Case]:
    """Any structural mutation of any base (the bases weighted equally)."""
    per_base = [
        st.one_of([mutate(base) for mutate in mutators_for(base)])
        for base in bases(samples_dir).values()
    ]
    return st.one_of(per_base)


# -- semantic breakage (the prepare stage) -----------------------------------------------------


@dataclass(frozen=True)
class PrepareCase:
    """A SEG and its images that pass the SCP's checks but cannot be prepared."""

    mutation: str
    seg: bytes
    images: tuple[bytes, ...]

    def __repr__(self) -> str:
        sizes = ", ".join(str(len(i)) for i in self.images)
        return f"PrepareCase({self.mutation!r}, SEG sha1 {_sha1(self.seg)}, images {sizes} bytes)"


def _little_pair(samples_dir: Path) -> tuple[Dataset, Dataset]:
    all_bases = bases(samples_dir)
    return dataset_of(all_bases[SEG_LITTLE]), dataset_of(all_bases[MG_LITTLE])


def _set_seg_pixels(seg: Dataset, mask: np.ndarray) -> None:
    seg.Rows, seg.Columns = mask.shape
    seg.PixelData = np.packbits(mask.astype(np.uint8).ravel(), bitorder="little").tobytes()


@st.composite
def prepare_cases(draw: st.DrawFn, samples_dir: Path) -> PrepareCase:
    """One semantically broken unit over the real 512x512 MG (or the Siemens JPEG MG)."""
    seg, mg = _little_pair(samples_dir)
    how = draw(
        st.sampled_from(
            [
                "refs-unknown",
                "refs-partly-unknown",
                "grid",
                "empty-mask",
                "extra-empty-segment",
                "undecodable-jpeg",
                "undecodable-rle",
                "window",
                "voi-lut",
                "rescale",
            ]
        )
    )
    images = [mg]
    if how == "refs-unknown":
        point_refs_at(seg, UNKNOWN_UID)
    elif how == "refs-partly-unknown":  # the series says the MG, the frame another image
        derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        derivation.SourceImageSequence[0].ReferencedSOPInstanceUID = UNKNOWN_UID
    elif how == "grid":
        rows = draw(st.integers(1, 700))
        cols = draw(st.integers(1, 700).filter(lambda c: (rows, c) != (512, 512)))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        mask = rng.random((rows, cols)) < 0.2
        mask[rows // 2, cols // 2] = True
        _set_seg_pixels(seg, mask)
    elif how == "empty-mask":
        _set_seg_pixels(seg, np.zeros((int(seg.Rows), int(seg.Columns)), bool))
    elif how == "extra-empty-segment":
        extra = copy.deepcopy(seg.SegmentSequence[0])
        extra.SegmentNumber = 2
        extra.SegmentLabel = "no frame"
        seg.SegmentSequence.append(extra)
    elif how in ("undecodable-jpeg", "undecodable-rle"):
        mg = _undecodable(samples_dir, how, draw)
        images = [mg]
        mask = np.zeros((int(mg.Rows), int(mg.Columns)), bool)
        mask[int(mg.Rows) // 2 - 10 : int(mg.Rows) // 2 + 10, 100:120] = True
        from molsub.synth import build_lesion_seg

        seg = build_lesion_seg([mg], [mask], seg_uid=SEG_UID)
    elif how == "window":
        mg.WindowCenter = draw(st.sampled_from(["0", "-1e308", "nan", "1e308", "inf"]))
        mg.WindowWidth = draw(st.sampled_from(["0", "-5", "1e-300", "nan", "inf", "1e308"]))
        mg.VOILUTFunction = draw(st.sampled_from(["LINEAR", "SIGMOID", "LINEAR_EXACT", "BOGUS"]))
    elif how == "voi-lut":
        item = Dataset()
        descriptor = draw(st.lists(st.integers(0, 65535), min_size=1, max_size=4))
        item.add_new("LUTDescriptor", "US", descriptor if len(descriptor) > 1 else descriptor[0])
        if draw(st.booleans()):
            lut = draw(st.lists(st.integers(0, 65535), min_size=0, max_size=8))
            item.add_new("LUTData", "US", lut)
        mg.VOILUTSequence = [item]
    elif how == "rescale":
        mg.RescaleSlope = draw(st.sampled_from(["0", "-1", "1e308", "nan", "inf"]))
        mg.RescaleIntercept = draw(st.sampled_from(["0", "-1e308", "nan", "1e308"]))
    return PrepareCase(how, to_bytes(seg), tuple(to_bytes(ds) for ds in images))


def _undecodable(samples_dir: Path, how: str, draw: st.DrawFn) -> Dataset:
    """An MG whose (sane) fragments hold a codestream no decoder can read."""
    from pydicom.encaps import encapsulate

    if how == "undecodable-jpeg":
        mg = dataset_of(bases(samples_dir)[SIEMENS])
        frame = bytearray(next(generate_frames(mg.PixelData, number_of_frames=1)))
        # Damage a decoder must notice (bit flips in the entropy-coded data may decode, without
        # an error, to other pixels: nothing in DICOM can tell those apart).
        kind = draw(st.sampled_from(["no-soi", "random", "truncated"]))
        if kind == "no-soi":
            frame[0:2] = draw(st.binary(min_size=2, max_size=2).filter(lambda b: b != b"\xff\xd8"))
        elif kind == "random":
            frame = bytearray(draw(st.binary(min_size=2, max_size=2048)))
        else:
            frame = frame[: draw(st.integers(2, 600))]
        frame += b"\x00" * (len(frame) % 2)
    else:
        mg = dataset_of(bases(samples_dir)[MG_LITTLE])
        mg.compress(RLELossless)
        frame = bytearray(next(generate_frames(mg.PixelData, number_of_frames=1)))
        # The RLE header: segment count and offsets (64 bytes).
        frame[0:4] = struct.pack("<L", draw(st.sampled_from([0, 2, 3, 15, 16, 0xFFFFFFFF])))
        if draw(st.booleans()):
            frame[4:8] = struct.pack("<L", draw(st.integers(0, 2**32 - 1)))
    mg.PixelData = encapsulate([bytes(frame)])
    mg["PixelData"].VR = "OB"
    return mg


def suite_settings(max_examples: int) -> settings:
    """How the suite runs a fuzz test: the same examples every run (CI included), no example
    database, no deadline (a real node answers), large cases allowed."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
