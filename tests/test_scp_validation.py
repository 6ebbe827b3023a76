"""Validate before success: malformed objects built from the real public samples, sent to the
real NodeSCP on loopback, each answered with its check's 0xC0xx status and an Error Comment that
names the check; nothing spooled, no unit, and no header value in any log line."""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from common.settings import InputSettings, NodeSettings
from common.units import Unit
from molsub.launch import start_node
from scp.server import NodeSCP
from scp.spool import Spool
from scp.validate import Check
from tests.dicom_peers import SCU_AET, free_port, storescu

SENTINEL = "SENTINEL^LEAKCHECK"  # a PatientName that must never appear in a log line
MG_LITTLE = "mg/MG_Explicit_Little.dcm"  # 512x512, 8 bit, Explicit VR LE
GE = "mg/MG-Im-GE_Seno_1_ForPresentation.dcm"  # real GE header, 16 bit, 1x2 px
SIEMENS = "mg/OutOfBoundsOverlay.dcm"  # real Siemens, JPEG Lossless SV1

StartFn = Callable[..., NodeSCP]


class Units:
    def __init__(self) -> None:
        self.units: list[Unit] = []

    def __call__(self, unit: Unit) -> None:
        self.units.append(unit)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[NodeSCP, Units]]:
    units = Units()
    settings = NodeSettings(port=free_port(), spool_dir=tmp_path / "spool", acse_timeout_s=5)
    # min_image_side 1: the real GE header (1x2 px) must reach the structural checks.
    scp = NodeSCP(settings, units, inputs=InputSettings(min_image_side=1), poll_s=0.05)
    scp.start()
    yield scp, units
    scp.stop()


def nothing_kept(scp: NodeSCP, spool: Path, units: Units) -> bool:
    assert scp.db is not None
    return (
        list((spool / "studies").rglob("*.dcm")) == []
        and list((spool / "tmp").iterdir()) == []
        and scp.db.count_instances() == 0
        and scp.db.list_units() == []
        and units.units == []
    )


def with_sentinel(ds: pydicom.Dataset) -> pydicom.Dataset:
    ds.PatientName = SENTINEL
    ds.PatientID = "SENTINEL-ID-77"
    return ds


def save(ds: pydicom.Dataset, folder: Path, name: str) -> Path:
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(autouse=True)
def raw_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom as the sender sends a file's bytes after its meta as they are, undecoded:
    without this it decodes and re-encodes them, repairing what the tests break."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def send(port: int, path: Path, sop_class: str, syntax: str) -> pydicom.Dataset:
    """C-STORE the file's bytes as they are (see raw_sender)."""
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="MOLSUB")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert "Status" in status, "no C-STORE response"
    return status


def sample_bytes(samples_dir: Path, name: str, folder: Path) -> bytes:
    """The sample with the sentinel PatientName, as bytes."""
    ds = with_sentinel(pydicom.dcmread(samples_dir / name))
    return save(ds, folder, "sentinel.dcm").read_bytes()


def pixel_data_offset(path: Path) -> int:
    """Where the Pixel Data element's value starts in the file."""
    ds = pydicom.dcmread(path, defer_size=1024)
    return int(ds.get_item("PixelData", keep_deferred=True).value_tell)


# -- the cases ---------------------------------------------------------------------------------


def truncated(samples_dir: Path, folder: Path, fraction: float) -> Path:
    data = sample_bytes(samples_dir, MG_LITTLE, folder)
    start = pixel_data_offset(folder / "sentinel.dcm") - 12  # the Pixel Data header and on
    cut = start + int((len(data) - start) * fraction)
    path = folder / f"truncated-{fraction}.dcm"
    path.write_bytes(data[:cut])
    return path


def cut_at(samples_dir: Path, folder: Path, into_header: int) -> Path:
    data = sample_bytes(samples_dir, MG_LITTLE, folder)
    start = pixel_data_offset(folder / "sentinel.dcm") - 12
    path = folder / f"cut-{into_header}.dcm"
    path.write_bytes(data[: start + into_header])
    return path


def changed(samples_dir: Path, folder: Path, name: str, **values: object) -> Path:
    ds = with_sentinel(pydicom.dcmread(samples_dir / name))
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return save(ds, folder, "changed.dcm")


def bad_fragment(samples_dir: Path, folder: Path, how: str) -> Path:
    """The Siemens JPEG Lossless sample with its encapsulated items damaged."""
    data = bytearray(sample_bytes(samples_dir, SIEMENS, folder))
    value = pixel_data_offset(folder / "sentinel.dcm")
    bot_length = struct.unpack("<L", data[value + 4 : value + 8])[0]
    fragment = value + 8 + bot_length  # the first fragment's item header
    if how == "tag":
        data[fragment : fragment + 4] = b"\x10\x00\x10\x00"  # not an item
    elif how == "length":
        data[fragment + 4 : fragment + 8] = struct.pack("<L", len(data))  # past the end
    elif how == "odd":
        length = struct.unpack("<L", data[fragment + 4 : fragment + 8])[0]
        data[fragment + 4 : fragment + 8] = struct.pack("<L", length - 1)
    path = folder / f"fragment-{how}.dcm"
    path.write_bytes(bytes(data))
    return path


def seg_frames_changed(samples_dir: Path, folder: Path) -> Path:
    """The highdicom CR SEG claiming one frame more than its pixels and groups hold."""
    ds = with_sentinel(pydicom.dcmread(samples_dir / "sr_seg/seg_image_cr_binary.dcm"))
    ds.NumberOfFrames = int(ds.get("NumberOfFrames", 1)) + 1
    return save(ds, folder, "seg-frames.dcm")


def seg_groups_changed(samples_dir: Path, folder: Path) -> Path:
    """The same SEG with a per-frame item naming a segment it does not describe."""
    ds = with_sentinel(pydicom.dcmread(samples_dir / "sr_seg/seg_image_cr_binary.dcm"))
    ds.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[
        0
    ].ReferencedSegmentNumber = 99
    return save(ds, folder, "seg-groups.dcm")


CASES: dict[str, tuple[Callable[[Path, Path], Path], Check]] = {
    **{
        f"truncated {f:.0%} into Pixel Data": (
            lambda s, t, f=f: truncated(s, t, f),
            Check.TRUNCATED,
        )
        for f in (0.01, 0.5, 0.99)
    },
    "cut inside the Pixel Data header": (lambda s, t: cut_at(s, t, 6), Check.PARSE),
    "cut before Pixel Data": (lambda s, t: cut_at(s, t, 0), Check.PIXEL_DATA),
    "Rows one short": (lambda s, t: changed(s, t, MG_LITTLE, Rows=511), Check.PIXEL_LENGTH),
    "Columns doubled": (lambda s, t: changed(s, t, MG_LITTLE, Columns=1024), Check.PIXEL_LENGTH),
    "BitsAllocated 1 over 16-bit data (GE)": (
        lambda s, t: changed(s, t, GE, BitsAllocated=1, BitsStored=1, HighBit=0),
        Check.GEOMETRY,
    ),
    "BitsAllocated 16 over 8-bit data": (
        lambda s, t: changed(s, t, MG_LITTLE, BitsAllocated=16),
        Check.PIXEL_LENGTH,
    ),
    "no Pixel Data (GE)": (lambda s, t: changed(s, t, GE, PixelData=None), Check.PIXEL_DATA),
    "huge dimensions": (
        lambda s, t: changed(s, t, MG_LITTLE, Rows=65535, Columns=65535),
        Check.GEOMETRY,
    ),
    "three samples per pixel": (
        lambda s, t: changed(s, t, MG_LITTLE, SamplesPerPixel=3),
        Check.GEOMETRY,
    ),
    "multi-frame MG": (lambda s, t: changed(s, t, MG_LITTLE, NumberOfFrames=2), Check.GEOMETRY),
    "fragment item tag": (lambda s, t: bad_fragment(s, t, "tag"), Check.FRAGMENTS),
    "fragment past the end": (lambda s, t: bad_fragment(s, t, "length"), Check.TRUNCATED),
    "odd fragment length": (lambda s, t: bad_fragment(s, t, "odd"), Check.FRAGMENTS),
    "SEG NumberOfFrames beyond its pixels": (seg_frames_changed, Check.PIXEL_LENGTH),
    "SEG frame naming no segment": (seg_groups_changed, Check.SEG_GRID),
    # A real dcmqi SEG: three per-frame items, no NumberOfFrames, one frame of pixels.
    "dcmqi SEG with 3 frame items over 1 frame": (
        lambda s, t: save(with_sentinel(pydicom.dcmread(s / "sr_seg/liver_1frame.dcm")), t, "l"),
        Check.SEG_GRID,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_check_answers_its_status_names_itself_and_keeps_nothing(
    node: tuple[NodeSCP, Units],
    samples_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    scp, units = node
    build, check = CASES[case]
    path = build(samples_dir, tmp_path)
    meta = pydicom.filereader.read_file_meta_info(path)
    with caplog.at_level(logging.DEBUG):
        status = send(scp.port, path, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assert (int(status.Status), check) == (check.status, check)
    assert status.ErrorComment.startswith(f"{check}: "), status.ErrorComment
    assert nothing_kept(scp, tmp_path / "spool", units)
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and meta.MediaStorageSOPInstanceUID in refused[0]
    assert SENTINEL not in caplog.text and "SENTINEL-ID-77" not in caplog.text
    assert "LEAKCHECK" not in caplog.text


@pytest.mark.parametrize("sample", [MG_LITTLE, GE, SIEMENS, "sr_seg/seg_image_cr_binary.dcm"])
def test_real_samples_pass_every_check(
    node: tuple[NodeSCP, Units], samples_dir: Path, tmp_path: Path, sample: str
) -> None:
    """The checks take what real devices and toolkits write."""
    scp, _ = node
    path = samples_dir / sample
    meta = pydicom.filereader.read_file_meta_info(path)
    status = send(scp.port, path, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assert int(status.Status) == 0x0000, status
    assert len(list((tmp_path / "spool" / "studies").rglob("*.dcm"))) == 1


def test_malformed_header_gets_0xc000_never_a700_or_c211(
    node: tuple[NodeSCP, Units],
    samples_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An element length that runs the parser off the rails, right after the PatientName."""
    scp, units = node
    data = bytearray(sample_bytes(samples_dir, MG_LITTLE, tmp_path))
    at = data.find(SENTINEL.encode()) + len(SENTINEL)  # the next element's header
    data[at + 4 : at + 6] = b"\xff\xff"  # its VR: not one
    path = tmp_path / "garbled.dcm"
    path.write_bytes(bytes(data))
    meta = pydicom.filereader.read_file_meta_info(path)
    with caplog.at_level(logging.DEBUG):
        status = send(scp.port, path, meta.MediaStorageSOPClassUID, ExplicitVRLittleEndian)
    assert int(status.Status) in range(0xC000, 0xC100), hex(status.Status)
    assert status.ErrorComment.split(":")[0] in {str(c) for c in Check}
    assert nothing_kept(scp, tmp_path / "spool", units)
    assert SENTINEL not in caplog.text and "LEAKCHECK" not in caplog.text


def test_an_unexpected_error_in_the_handler_is_0xc000_with_a_reason(
    node: tuple[NodeSCP, Units],
    samples_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp, units = node

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RecursionError(SENTINEL)  # a parser bug, its message a header value

    monkeypatch.setattr(Spool, "receive", boom)
    path = samples_dir / MG_LITTLE
    meta = pydicom.filereader.read_file_meta_info(path)
    with caplog.at_level(logging.DEBUG):
        status = send(scp.port, path, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assert (int(status.Status), status.ErrorComment) == (0xC000, "parse: object could not be read")
    assert f"C-STORE of {meta.MediaStorageSOPInstanceUID}: unexpected RecursionError" in (
        caplog.text
    )
    assert SENTINEL not in caplog.text
    assert nothing_kept(scp, tmp_path / "spool", units)


def test_an_object_with_an_unreadable_uid_is_named_by_association_and_message(
    node: tuple[NodeSCP, Units], samples_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The request's SOP Instance UID is itself garbage: logs name the association instead."""
    scp, units = node
    ds = with_sentinel(pydicom.dcmread(samples_dir / MG_LITTLE))
    ds.SOPInstanceUID = "LEAKCHECK.not.a.uid"
    ds.Rows = 7  # and the object is refused
    path = tmp_path / "bad-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    with caplog.at_level(logging.DEBUG):
        status = send(scp.port, path, ds.SOPClassUID, ExplicitVRLittleEndian)
    assert int(status.Status) in range(0xC000, 0xC100)
    node_lines = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("scp"))
    assert "(association 127.0.0.1:" in node_lines and "message 1)" in node_lines
    assert "LEAKCHECK" not in node_lines and SENTINEL not in caplog.text
    assert nothing_kept(scp, tmp_path / "spool", units)


def test_a_valid_study_still_makes_its_unit(node: tuple[NodeSCP, Units], tmp_path: Path) -> None:
    """The checks let the synthetic MG + SEG of the other tests through (no false refusals)."""
    from tests.factories import disk_mask, make_mg, make_seg

    scp, units = node
    cc = make_mg(view="CC", seed=1)
    seg = make_seg([cc], [disk_mask((256, 200), (120, 90), 25)])
    files = [save(cc, tmp_path, "cc.dcm"), save(seg, tmp_path, "seg.dcm")]
    result = storescu(scp.port, files, options=("-R", "-v"))
    assert result.stderr.count("Received Store Response (Success)") == 2, result.stderr
    assert scp.db is not None and scp.db.count_instances() == 2


def test_the_receiving_process_has_no_torch_and_a_small_footprint(tmp_path: Path) -> None:
    """`molsub serve --no-workers` idle: torch never loaded (no libtorch mapped), RSS <= 150 MB.
    Measured at 90 MB on the 2-core dev machine; torch alone would add ~600 MB."""
    env = {**os.environ, "MOLSUB_NODE_SPOOL_DIR": str(tmp_path / "spool")}
    proc, _ = start_node(None, tmp_path / "node.log", "--no-workers", env=env, timeout_s=60)
    try:
        time.sleep(1.0)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        rss_kib = int(next(line for line in status if line.startswith("VmRSS:")).split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "libtorch" not in maps and "highdicom" not in maps
    assert rss_kib <= 150 * 1024, f"idle RSS {rss_kib / 1024:.0f} MiB"
