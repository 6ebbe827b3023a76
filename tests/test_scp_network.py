"""The SCP against real dcmtk peers (storescu / echoscu subprocesses), in this test process."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pynetdicom import AE

from common.settings import InputPolicy, InputSettings, NodeSettings
from common.sop_classes import BREAST_PROJECTION_FOR_PRESENTATION
from common.units import Unit, UnitState
from molsub.launch import start_node
from scp.server import NodeSCP
from scp.spool import Spool
from scp.state import unit_status
from tests.dicom_peers import SCU_AET, echoscu, free_port, storescu
from tests.factories import (
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    disk_mask,
    make_htj2k_mg,
    make_mg,
    make_seg,
)

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
# What a mammography unit may send (REFERENCE.md section 3: uncompressed, JPEG Lossless, JPEG-LS,
# JPEG 2000, HTJ2K, RLE), written out here so that the tests do not just echo scp.server's list.
ACCEPTED_SYNTAXES = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
)


class Recorder:
    """The enqueue callback: records what it was given; can be told to fail (broker down)."""

    def __init__(self, fail: bool = False) -> None:
        self.units: list[Unit] = []
        self.fail = fail
        self.attempts = 0
        self.called = threading.Event()

    def __call__(self, unit: Unit) -> None:
        self.attempts += 1
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.units.append(unit)
        self.called.set()

    @property
    def ids(self) -> list[str]:
        return [u.unit_id for u in self.units]


StartFn = Callable[..., NodeSCP]


@pytest.fixture
def start_scp(tmp_path: Path, running_scps: StartFn) -> StartFn:
    """Start a NodeSCP on a free port over tmp_path/spool; all are stopped at teardown."""

    def start(
        enqueue: Callable[[Unit], None], inputs: InputSettings | None = None, **node: object
    ) -> NodeSCP:
        settings = {"port": free_port(), "spool_dir": tmp_path / "spool", **node}
        return running_scps(NodeSettings(**settings), enqueue, inputs=inputs)

    return start


def write(ds: pydicom.Dataset, folder: Path, name: str) -> Path:
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path | str]:
    """Two MG images (CC, MLO) of one synthetic study and one SEG over both, as files."""
    out = tmp_path / "send"
    out.mkdir()
    cc = make_mg(view="CC", seed=1)
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=2)
    mask = disk_mask((256, 200), (120, 90), 25)
    seg = make_seg([cc, mlo], [mask, mask])
    return {
        "cc": write(cc, out, "cc.dcm"),
        "mlo": write(mlo, out, "mlo.dcm"),
        "seg": write(seg, out, "seg.dcm"),
        "seg_uid": seg.SOPInstanceUID,
        "study_uid": cc.StudyInstanceUID,
        "cc_uid": cc.SOPInstanceUID,
        "mlo_uid": mlo.SOPInstanceUID,
    }


def send_ok(port: int, *files: Path) -> None:
    result = storescu(port, list(files))
    assert result.returncode == 0, result.stderr
    assert "Failed" not in result.stderr, result.stderr


def unit_state(scp: NodeSCP, unit_id: str) -> str | None:
    assert scp.db is not None
    unit = scp.db.get_unit(unit_id)
    return unit.state if unit else None


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def spooled_files(spool: Path) -> list[Path]:
    return sorted((spool / "studies").rglob("*.dcm"))


def test_echo(start_scp: StartFn) -> None:
    scp = start_scp(Recorder())
    result = echoscu(scp.port)
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


def test_every_required_transfer_syntax_offered(start_scp: StartFn) -> None:
    scp = start_scp(Recorder())
    for sop_class in (MG_FOR_PRESENTATION, MG_FOR_PROCESSING, uid.SegmentationStorage):
        contexts = [c for c in scp.ae.supported_contexts if c.abstract_syntax == sop_class]
        assert len(contexts) == 1
        assert set(contexts[0].transfer_syntax) == set(ACCEPTED_SYNTAXES)


def test_mg_and_seg_stored_durably_and_unit_enqueued(
    start_scp: StartFn, study: dict, tmp_path: Path
) -> None:
    enqueue = Recorder()
    scp = start_scp(enqueue)
    send_ok(scp.port, study["cc"], study["mlo"], study["seg"])

    spool = tmp_path / "spool"
    study_dir = spool / "studies" / study["study_uid"]
    for key in ("cc", "mlo", "seg"):
        sent = pydicom.dcmread(study[key])
        stored = pydicom.dcmread(study_dir / f"{sent.SOPInstanceUID}.dcm")
        assert stored == sent  # every data element, pixel data included
        assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert len(spooled_files(spool)) == 3
    assert list((spool / "tmp").iterdir()) == []

    assert wait_for(lambda: unit_state(scp, study["seg_uid"]) == UnitState.ENQUEUED)
    assert enqueue.ids == [study["seg_uid"]]
    unit = enqueue.units[0]
    assert unit.referenced_uids == (study["cc_uid"], study["mlo_uid"])
    assert [p.name for p in unit.image_paths] == [
        f"{study['cc_uid']}.dcm",
        f"{study['mlo_uid']}.dcm",
    ]
    assert unit.seg_path == study_dir / f"{study['seg_uid']}.dcm"


def test_jpeg_lossless_sample_kept_in_its_transfer_syntax(
    start_scp: StartFn, samples_dir: Path, tmp_path: Path
) -> None:
    scp = start_scp(Recorder())
    sample = samples_dir / "mg" / "OutOfBoundsOverlay.dcm"
    result = storescu(scp.port, [sample], options=("-R", "-xs"))
    assert result.returncode == 0, result.stderr
    sent = pydicom.dcmread(sample)
    [stored_path] = spooled_files(tmp_path / "spool")
    stored = pydicom.dcmread(stored_path)
    assert stored.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    assert stored.PixelData == sent.PixelData
    assert stored_path.name == f"{sent.SOPInstanceUID}.dcm"


def encoded_mg(syntax: str, folder: Path) -> Path:
    """A SYNTHETIC MG file in ``syntax``, encoded by dcmtk where it can, else by pydicom."""
    plain = write(make_mg(bits_stored=12, seed=5), folder, "plain.dcm")
    out = folder / "encoded.dcm"
    dcmtk = {
        uid.ImplicitVRLittleEndian: ["dcmconv", "+ti"],
        uid.DeflatedExplicitVRLittleEndian: ["dcmconv", "+td"],
        uid.JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
        uid.JPEGLossless: ["dcmcjpeg", "+el"],
        uid.JPEGLSLossless: ["dcmcjpls", "+el"],
        uid.JPEGLSNearLossless: ["dcmcjpls", "+en"],
        uid.RLELossless: ["dcmcrle"],
    }
    if syntax == uid.ExplicitVRLittleEndian:
        return plain
    if syntax in dcmtk:
        subprocess.run([*dcmtk[syntax], str(plain), str(out)], check=True, capture_output=True)
        return out
    if syntax in (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K):
        return write(make_htj2k_mg(syntax), folder, "encoded.dcm")
    ds = pydicom.dcmread(plain)
    ds.compress(syntax, j2k_cr=[10] if syntax == uid.JPEG2000 else None)
    return write(ds, folder, "encoded.dcm")


# storescu's option that proposes each syntax; dcmtk has none for the others, which
# pynetdicom's SCU sends.
STORESCU_PROPOSES = {
    uid.ImplicitVRLittleEndian: "-xi",
    uid.ExplicitVRLittleEndian: "-xe",
    uid.DeflatedExplicitVRLittleEndian: "-xd",
    uid.JPEGLosslessSV1: "-xs",
    uid.JPEGLSLossless: "-xt",
    uid.JPEGLSNearLossless: "-xu",
    uid.JPEG2000Lossless: "-xv",
    uid.JPEG2000: "-xw",
    uid.RLELossless: "-xr",
}


def send_in_syntax(port: int, path: Path, syntax: str) -> None:
    """C-STORE ``path`` over a presentation context of ``syntax`` only; asserts success."""
    if syntax in STORESCU_PROPOSES:
        result = storescu(port, [path], options=("-R", STORESCU_PROPOSES[syntax], "-v"))
        assert result.returncode == 0, result.stderr
        assert "Received Store Response (Success)" in result.stderr, result.stderr
        return
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(MG_FOR_PRESENTATION, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="MOLSUB")
    assert assoc.is_established
    try:
        [context] = assoc.accepted_contexts
        assert context.transfer_syntax == [syntax]
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status.Status == 0x0000


@pytest.mark.parametrize("syntax", ACCEPTED_SYNTAXES, ids=lambda s: s.keyword)
def test_every_transfer_syntax_received_over_the_network_as_sent(
    start_scp: StartFn, tmp_path: Path, syntax: str
) -> None:
    """Each offered syntax is negotiated alone, received and spooled unchanged."""
    # The HTJ2K codestream (factories.HTJ2K_CODESTREAM) is 24x20 px: under the 64 px default.
    scp = start_scp(Recorder(), inputs=InputSettings(min_image_side=16))
    sent_path = encoded_mg(syntax, tmp_path)
    sent = pydicom.dcmread(sent_path)
    assert sent.file_meta.TransferSyntaxUID == syntax
    send_in_syntax(scp.port, sent_path, syntax)
    [stored_path] = spooled_files(tmp_path / "spool")
    stored = pydicom.dcmread(stored_path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.PixelData == sent.PixelData


@pytest.mark.parametrize(
    ("sample", "own_results"),
    [
        ("mg/jpeg2k_3d.dcm", InputPolicy.IGNORE),
        ("sr_seg/dcmqi_sr.dcm", InputPolicy.IGNORE),  # Comprehensive SR: the node writes 3D SR
        ("sr_seg/sr_document.dcm", InputPolicy.FAIL),  # 3D SR: negotiated while own are ignored
    ],
)
def test_unsupported_sop_class_refused_at_negotiation(
    start_scp: StartFn, samples_dir: Path, tmp_path: Path, sample: str, own_results: InputPolicy
) -> None:
    scp = start_scp(Recorder(), inputs=InputSettings(own_results=own_results))
    result = storescu(scp.port, [samples_dir / sample])
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stderr
    assert spooled_files(tmp_path / "spool") == []


@pytest.mark.parametrize("sample", ["sr_seg/sr_document.dcm", "mg/MG-Im-Hologic-PropProj.dcm"])
def test_other_sr_and_sc_refused_by_status_while_own_results_are_ignored(
    start_scp: StartFn,
    samples_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    sample: str,
) -> None:
    """3D SR and SC are negotiated (defaults) so that the node's own come back quietly; a
    third party's then gets 0xC000, the C-STORE form of "refuse"."""
    scp = start_scp(Recorder())
    path = samples_dir / sample
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with caplog.at_level(logging.WARNING, logger="scp.server"):
        status = store_status(scp.port, path, ds)
    assert not isinstance(status, str), status
    assert status.Status == 0xC000
    assert status.ErrorComment.endswith("not accepted here")
    assert spooled_files(tmp_path / "spool") == []
    assert f"C-STORE of {ds.SOPInstanceUID} from {SCU_AET} refused" in caplog.text


def _relabelled(samples_dir: Path, folder: Path, sop_class: str) -> Path:
    """A real 512x512 MG sample relabelled as ``sop_class``."""
    ds = pydicom.dcmread(samples_dir / "mg" / "MG_Explicit_Little.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    return write(ds, folder, "relabelled.dcm")


def _breast_projection(samples_dir: Path, folder: Path) -> Path:
    """A real MG sample relabelled Breast Projection X-Ray (no public sample exists)."""
    return _relabelled(samples_dir, folder, BREAST_PROJECTION_FOR_PRESENTATION)


POLICY_SAMPLES = {
    "mg_for_processing": "mg/MG-Im-GE_Seno_1_ForProcessing.dcm",
    "breast_tomosynthesis": "mg/jpeg2k_3d.dcm",
    "secondary_capture": "mg/MG-Im-Hologic-PropProj.dcm",  # Modality MG, no pixel data
    "breast_projection": None,  # made by _breast_projection
}


@pytest.mark.parametrize(
    ("kind", "policy"),
    [
        (kind, policy)
        for kind in sorted(POLICY_SAMPLES)
        for policy in ("refuse", "ignore", "fail", "process")
        if policy != "process" or kind == "mg_for_processing"  # the others cannot be processed
    ],
)
def test_input_policies_for_objects_the_node_does_not_process(
    start_scp: StartFn,
    samples_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    policy: str,
) -> None:
    sample = POLICY_SAMPLES[kind]
    path = samples_dir / sample if sample else _breast_projection(samples_dir, tmp_path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uid = str(ds.SOPInstanceUID)
    if kind == "mg_for_processing" and policy == "process":
        path = _relabelled(samples_dir, tmp_path, MG_FOR_PROCESSING)  # GE's is 1x2 pixels
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
    # own_results "fail": the node's output classes are negotiated by their own policies only.
    inputs = InputSettings(**{kind: InputPolicy(policy)}, own_results=InputPolicy.FAIL)
    scp = start_scp(Recorder(), inputs=inputs)
    with caplog.at_level("INFO", logger="scp.server"):
        # pynetdicom as the sender: dcmtk cannot read the Hologic sample's header at all.
        outcome = store_as_sent(scp.port, path, ds)
    stored = spooled_files(tmp_path / "spool")
    if policy == "refuse":
        assert outcome == "no accepted presentation context"
        assert stored == []
    elif policy == "ignore":
        assert outcome == 0x0000
        assert stored == []
        assert f"C-STORE of {uid} from {SCU_AET} ignored ([inputs] {kind})" in caplog.text
    elif policy == "fail":
        assert outcome == 0xC000
        assert stored == []
        assert f"C-STORE of {uid} from {SCU_AET} not processed ([inputs] {kind})" in caplog.text
    else:
        assert outcome == 0x0000
        assert [p.name for p in stored] == [f"{uid}.dcm"]


def store_as_sent(port: int, path: Path, ds: pydicom.Dataset) -> int | str:
    """C-STORE ``path`` in its own SOP class and transfer syntax; the status, or why not."""
    status = store_status(port, path, ds)
    return status if isinstance(status, str) else int(status.Status)


def store_status(port: int, path: Path, ds: pydicom.Dataset) -> pydicom.Dataset | str:
    """C-STORE ``path`` in its own SOP class and transfer syntax; the status dataset (with its
    ErrorComment), or why it could not be sent."""
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MOLSUB")
    if assoc.is_rejected:
        return "association rejected"
    if not assoc.is_established or not assoc.accepted_contexts:
        return "no accepted presentation context"  # pynetdicom aborts when none is accepted
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return status


def test_calling_ae_not_allowed_is_rejected(
    start_scp: StartFn, study: dict, tmp_path: Path
) -> None:
    scp = start_scp(Recorder(), allowed_calling_aets=("PACS1", SCU_AET))
    refused = storescu(scp.port, [study["cc"]], calling_aet="INTRUDER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert spooled_files(tmp_path / "spool") == []
    send_ok(scp.port, study["cc"])  # an allowed title gets in
    assert len(spooled_files(tmp_path / "spool")) == 1


def test_unparseable_object_gets_failure_status_and_nothing_stored(
    start_scp: StartFn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_scp(Recorder())
    mg = make_mg()
    del mg.StudyInstanceUID
    path = write(mg, tmp_path, "no_study.dcm")
    with caplog.at_level(logging.WARNING, logger="scp.server"):
        result = storescu(scp.port, [path], options=("-R", "-v"))
    assert "Received Store Response (Error: CannotUnderstand" in result.stderr, result.stderr
    assert spooled_files(tmp_path / "spool") == []
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert mg.SOPInstanceUID in line and "Study Instance UID" in line
    assert mg.PatientID not in line and str(mg.PatientName) not in line


def test_spool_failure_gives_out_of_resources_and_leaves_nothing(
    start_scp: StartFn, study: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scp = start_scp(Recorder())

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Spool, "commit", disk_full)
    result = storescu(scp.port, [study["cc"]], options=("-R", "-v"))
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr, result.stderr
    assert spooled_files(tmp_path / "spool") == []
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_seg_before_images_and_split_over_associations(start_scp: StartFn, study: dict) -> None:
    enqueue = Recorder()
    scp = start_scp(enqueue)
    send_ok(scp.port, study["seg"])
    assert unit_state(scp, study["seg_uid"]) == UnitState.WAITING
    send_ok(scp.port, study["mlo"])
    time.sleep(0.2)
    assert unit_state(scp, study["seg_uid"]) == UnitState.WAITING
    assert enqueue.ids == []
    send_ok(scp.port, study["cc"])
    assert wait_for(lambda: enqueue.ids == [study["seg_uid"]])
    assert unit_state(scp, study["seg_uid"]) == UnitState.ENQUEUED


def test_images_before_seg_ready_at_once(start_scp: StartFn, study: dict) -> None:
    enqueue = Recorder()
    scp = start_scp(enqueue, study_timeout_s=3600.0)
    send_ok(scp.port, study["cc"], study["mlo"])
    t0 = time.monotonic()
    send_ok(scp.port, study["seg"])
    assert wait_for(lambda: enqueue.ids == [study["seg_uid"]], timeout_s=5)
    assert time.monotonic() - t0 < 5  # no study-timeout wait when complete


def test_incomplete_unit_times_out_with_warning_and_late_image_reopens_it(
    start_scp: StartFn, study: dict, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue = Recorder()
    with caplog.at_level(logging.WARNING, logger="scp.dispatcher"):
        scp = start_scp(enqueue, study_timeout_s=0.5)
        send_ok(scp.port, study["cc"], study["seg"])
        assert wait_for(
            lambda: unit_state(scp, study["seg_uid"]) == UnitState.TIMED_OUT, timeout_s=5
        )
        # The warning follows the state change in the dispatcher thread.
        assert wait_for(lambda: any("timed out" in r.getMessage() for r in caplog.records))
    assert enqueue.ids == []
    [line] = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert study["seg_uid"] in line and study["mlo_uid"] in line
    assert study["cc_uid"] not in line  # only the missing image is named
    # The PACS routes the missing image after all: the unit reopens and is enqueued at once.
    send_ok(scp.port, study["mlo"])
    assert enqueue.called.wait(5)
    assert enqueue.ids == [study["seg_uid"]]


def test_restart_ready_unit_enqueued_exactly_once(
    start_scp: StartFn, study: dict, tmp_path: Path
) -> None:
    broker_down = Recorder(fail=True)
    first = start_scp(broker_down)
    send_ok(first.port, study["cc"], study["mlo"], study["seg"])
    assert wait_for(lambda: broker_down.attempts >= 2)  # tried, failed, tried again
    assert unit_state(first, study["seg_uid"]) == UnitState.READY
    first.stop()

    enqueue = Recorder()
    second = start_scp(enqueue)
    assert wait_for(lambda: unit_state(second, study["seg_uid"]) == UnitState.ENQUEUED)
    time.sleep(0.2)
    assert enqueue.ids == [study["seg_uid"]]
    second.stop()

    again = Recorder()
    third = start_scp(again)
    time.sleep(0.3)
    assert again.ids == []  # enqueued units are never offered again
    assert unit_state(third, study["seg_uid"]) == UnitState.ENQUEUED
    assert [u.state for u in unit_status(tmp_path / "spool")] == [UnitState.ENQUEUED]


def test_restart_half_received_unit_completes_after(start_scp: StartFn, study: dict) -> None:
    first_enqueue = Recorder()
    first = start_scp(first_enqueue)
    send_ok(first.port, study["seg"], study["cc"])
    assert unit_state(first, study["seg_uid"]) == UnitState.WAITING
    first.stop()

    enqueue = Recorder()
    second = start_scp(enqueue)
    send_ok(second.port, study["mlo"])
    assert wait_for(lambda: enqueue.ids == [study["seg_uid"]])
    assert first_enqueue.ids == []
    assert len(enqueue.units[0].image_paths) == 2
    assert second.db is not None and second.db.set_state(study["seg_uid"], UnitState.DONE)


def test_scp_as_separate_process(study: dict, tmp_path: Path) -> None:
    spool = tmp_path / "proc-spool"
    env = {**os.environ, "MOLSUB_NODE_SPOOL_DIR": str(spool), "MOLSUB_NODE_AE_TITLE": "NODE2"}
    proc, listening = start_node(None, tmp_path / "node.log", "--no-workers", env=env, timeout_s=60)
    try:
        assert listening.ae_title == "NODE2"
        result = storescu(
            listening.port, [study["cc"], study["mlo"], study["seg"]], called_aet="NODE2"
        )
        assert result.returncode == 0, result.stderr
        assert wait_for(lambda: [u.state for u in unit_status(spool)] == [UnitState.ENQUEUED])
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    stored = pydicom.dcmread(spool / "studies" / study["study_uid"] / f"{study['seg_uid']}.dcm")
    assert np.array_equal(stored.pixel_array, pydicom.dcmread(study["seg"]).pixel_array)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_large_mg_streams_to_disk_not_memory(tmp_path: Path) -> None:
    """A Hologic-sized image (27 MB) is received without the SCP's memory growing by its size."""
    pixels = np.random.default_rng(0).integers(0, 4096, size=(4096, 3328), dtype=np.uint16)
    big = write(make_mg(pixels), tmp_path, "big.dcm")
    spool = tmp_path / "big-spool"
    env = {**os.environ, "MOLSUB_NODE_SPOOL_DIR": str(spool)}
    proc, listening = start_node(None, tmp_path / "node.log", "--no-workers", env=env, timeout_s=60)
    try:
        port = listening.port
        before = _peak_rss_kib(proc.pid)
        send_ok(port, big)
        growth_mib = (_peak_rss_kib(proc.pid) - before) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    [stored] = spooled_files(spool)
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(big).PixelData
    assert stored.stat().st_mode & 0o077 == 0  # patient data: not readable by others
    assert growth_mib < 10, f"peak memory grew by {growth_mib:.1f} MiB for a 27 MB object"


# -- what is not an input: images too small or without pixels, own results, non-lesion SEGs --


def nothing_kept(scp: NodeSCP, spool: Path) -> bool:
    """No object in the spool (nor a temporary one), none recorded, no unit."""
    assert scp.db is not None
    return (
        spooled_files(spool) == []
        and list((spool / "tmp").iterdir()) == []
        and scp.db.count_instances() == 0
        and scp.db.list_units() == []
    )


def _ge_without_pixels(samples_dir: Path, folder: Path) -> Path:
    ds = pydicom.dcmread(samples_dir / "mg" / "MG-Im-GE_Seno_1_ForPresentation.dcm")
    del ds.PixelData
    return write(ds, folder, "ge-no-pixels.dcm")


@pytest.mark.parametrize(
    ("variant", "response", "reason"),
    [
        (
            "1x2 pixels",
            "Error: CannotUnderstand",
            "image 1x2 px (rows x columns) under min_image_side 64 px",
        ),
        ("no PixelData", "Error: CannotUnderstand", "pixel-data: no integer Pixel Data"),
    ],
)
def test_real_ge_header_without_a_usable_image_refused(
    start_scp: StartFn,
    samples_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    variant: str,
    response: str,
    reason: str,
) -> None:
    """The real GE Senographe header whose pixels were cut to 1x2 (and with none at all)."""
    path = samples_dir / "mg" / "MG-Im-GE_Seno_1_ForPresentation.dcm"
    if variant == "no PixelData":
        path = _ge_without_pixels(samples_dir, tmp_path)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    enqueue = Recorder()
    scp = start_scp(enqueue)
    with caplog.at_level(logging.WARNING, logger="scp.server"):
        result = storescu(scp.port, [path], options=("-R", "-v"))
    assert f"Received Store Response ({response})" in result.stderr, result.stderr
    assert nothing_kept(scp, tmp_path / "spool")
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert uid in line and reason in line
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    status = store_status(scp.port, path, ds)  # the same again, for the ErrorComment
    assert not isinstance(status, str) and status.ErrorComment == reason
    assert nothing_kept(scp, tmp_path / "spool") and enqueue.units == []


def test_min_image_side_is_configurable(start_scp: StartFn, tmp_path: Path) -> None:
    """A 256x200 image: refused with a 201 px minimum, taken with 200."""
    path = write(make_mg(), tmp_path, "mg.dcm")
    strict = start_scp(Recorder(), inputs=InputSettings(min_image_side=201))
    result = storescu(strict.port, [path], options=("-R", "-v"))
    assert "Received Store Response (Error: CannotUnderstand" in result.stderr, result.stderr
    assert nothing_kept(strict, tmp_path / "spool")
    strict.stop()
    lenient = start_scp(Recorder(), inputs=InputSettings(min_image_side=200))
    send_ok(lenient.port, path)
    assert len(spooled_files(tmp_path / "spool")) == 1


@pytest.fixture(scope="module")
def own_results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The node's SR, 2 SCs and 2 heatmap SEGs (real worker.results), as files."""
    from tests.node_results import node_results

    out = tmp_path_factory.mktemp("own-results")
    results, _, _ = node_results()
    return [write(ds, out, f"{ds.SOPInstanceUID}.dcm") for ds in results]


def test_own_results_sent_back_are_ignored_and_logged(
    start_scp: StartFn, own_results: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue = Recorder()
    scp = start_scp(enqueue)
    with caplog.at_level(logging.INFO, logger="scp.server"):
        result = storescu(scp.port, own_results, options=("-R", "-v"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 5, result.stderr
    assert nothing_kept(scp, tmp_path / "spool")
    time.sleep(0.2)
    assert enqueue.attempts == 0
    for path in own_results:
        sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        said = f"C-STORE of {sop_uid} from {SCU_AET} ignored ([inputs] own_results)"
        assert f"{said}: a result of this node" in caplog.text


def test_own_results_answered_with_failure_when_configured(
    start_scp: StartFn, own_results: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """own_results = "fail": the heatmap SEGs get 0xC000; SR and SC are not negotiated."""
    scp = start_scp(Recorder(), inputs=InputSettings(own_results=InputPolicy.FAIL))
    outcomes = {}
    with caplog.at_level(logging.WARNING, logger="scp.server"):
        for path in own_results:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            outcomes[str(ds.SOPClassUID)] = store_status(scp.port, path, ds)
            if ds.SOPClassUID == uid.SegmentationStorage:
                assert f"C-STORE of {ds.SOPInstanceUID} from {SCU_AET} not processed" in (
                    caplog.text
                )
    seg_status = outcomes[uid.SegmentationStorage]
    assert not isinstance(seg_status, str) and seg_status.Status == 0xC000
    assert seg_status.ErrorComment.startswith("a result of this node")
    assert outcomes[uid.Comprehensive3DSRStorage] == "no accepted presentation context"
    assert outcomes[uid.SecondaryCaptureImageStorage] == "no accepted presentation context"
    assert nothing_kept(scp, tmp_path / "spool")


def _breast_outline_seg(study: dict, folder: Path) -> Path:
    """The study's SEG with its segment recoded as the breast (an anatomical structure)."""
    seg = pydicom.dcmread(study["seg"])
    item = seg.SegmentSequence[0]
    item.SegmentedPropertyCategoryCodeSequence[0].CodeValue = "91723000"
    item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning = "Anatomical structure"
    item.SegmentedPropertyTypeCodeSequence[0].CodeValue = "76752008"
    item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning = "Breast"
    return write(seg, folder, "breast-seg.dcm")


@pytest.mark.parametrize("policy", ["fail", "ignore", "process"])
def test_seg_that_is_not_a_lesion_follows_its_policy(
    start_scp: StartFn,
    study: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    policy: str,
) -> None:
    path = _breast_outline_seg(study, tmp_path)
    enqueue = Recorder()
    scp = start_scp(enqueue, inputs=InputSettings(non_lesion_seg=InputPolicy(policy)))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    reason = "segment 1 is not a lesion (SCT 91723000 / SCT 76752008)"
    with caplog.at_level(logging.INFO, logger="scp.server"):
        status = store_status(scp.port, path, ds)
    assert not isinstance(status, str), status
    said = f"C-STORE of {study['seg_uid']} from {SCU_AET}"
    if policy == "fail":
        assert (status.Status, status.ErrorComment) == (0xC000, reason)
        assert f"{said} not processed ([inputs] non_lesion_seg): {reason}" in caplog.text
        assert nothing_kept(scp, tmp_path / "spool")
    elif policy == "ignore":
        assert status.Status == 0x0000
        assert f"{said} ignored ([inputs] non_lesion_seg): {reason}" in caplog.text
        assert nothing_kept(scp, tmp_path / "spool")
    else:
        assert status.Status == 0x0000
        assert unit_state(scp, study["seg_uid"]) == UnitState.WAITING
    send_ok(scp.port, study["cc"], study["mlo"])
    time.sleep(0.3)
    assert enqueue.ids == ([study["seg_uid"]] if policy == "process" else [])


@pytest.mark.parametrize(
    ("key", "policy"),
    [("own_results", "refuse"), ("own_results", "process"), ("non_lesion_seg", "refuse")],
)
def test_content_policy_that_cannot_apply_stops_the_scp_at_once(
    tmp_path: Path, key: str, policy: str
) -> None:
    """Negotiation cannot refuse by content, and own results are never processed."""
    inputs = InputSettings(**{key: InputPolicy(policy)})
    settings = NodeSettings(port=free_port(), spool_dir=tmp_path / "spool")
    with pytest.raises(ValueError, match=f"\\[inputs\\] {key} must be one of"):
        NodeSCP(settings, Recorder(), inputs=inputs)
    assert not (tmp_path / "spool").exists()
