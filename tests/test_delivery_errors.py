"""Delivery failures say what the peer did, end within the destination's timeouts, and the
deliver task's result says what status.json and progress.json say.

Real peers on loopback: dcmtk's storescp, pynetdicom SCPs written here that reject, abort,
refuse a SOP class, answer a failure status, go silent or stop reading, a port where nothing
listens, and sockets that never answer the association request or close it unanswered. Each
case runs the Celery deliver task in-process with no retries, so that its result, status.json
and the unit's failure reason are the final ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from common.progress import ProgressFiles
from common.settings import Destination, NodeConfig, NodeSettings, QueueSettings
from common.units import UnitState
from molsub.config import ConfigError, load_config
from molsub.launch import free_port, stop_process, wait_for
from tests import worker_standins as standins
from tests.dicom_peers import received_uids, start_storescp
from tests.factories import disk_mask, make_mg, make_seg
from worker.delivery.store import DestinationState, ResultStore
from worker.delivery.targets import DeliveryError, store_scu
from worker.queue.app import Stage, make_celery_app
from worker.queue.handlers import StageHandlers

PEER_AET = "PEER"
NODE_AET = "MOLSUB"
RESULT_CLASSES = (standins.SR_CLASS, standins.SC_CLASS, standins.SEG_CLASS)
# Timeouts of the cases that must not wait for one: they end well before (a few seconds), and a
# case that did wait would take at least this long. Generous, so a loaded machine passes too.
QUICK_S = 20.0
HELD_S = 30.0  # the most a peer written here holds a thread before the test lets it go


@pytest.fixture(scope="module")
def inferred(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A deliver message (stand-in stages); it carries no paths, so every case reuses it."""
    spool = tmp_path_factory.mktemp("spool")
    cc = make_mg(view="CC", seed=0)
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=1)
    masks = [disk_mask((256, 200), (90, 90), 15), disk_mask((256, 200), (110, 80), 15)]
    seg = make_seg([cc, mlo], masks)
    paths = []
    for ds in (seg, cc, mlo):
        paths.append(spool / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    config = NodeConfig(node=NodeSettings(spool_dir=spool))
    handlers = StageHandlers.for_config(config, standins.pipeline(standins.KINDS, config))
    unit_id = str(seg.SOPInstanceUID)
    prepared = json.loads(json.dumps(handlers.prepare(unit_id, paths[0], paths[1:])))
    return json.loads(json.dumps(handlers.infer(prepared)))


@dataclass
class Delivery:
    """One run of the deliver task, and what the spool says afterwards."""

    result: dict[str, Any]
    task_state: str
    elapsed_s: float
    status: dict[str, Any]
    entry: dict[str, Any]  # status.json's entry of the destination
    unit_state: UnitState  # progress.json, which the node moves the unit by
    reason: str
    log: str


def deliver(
    tmp_path: Path,
    message: dict[str, Any],
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    *,
    retries: int = 0,
) -> Delivery:
    """The Celery deliver task, run in this process (``apply``: retries run at once)."""
    spool = tmp_path / "spool"
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool, ae_title=NODE_AET),
        queue=QueueSettings(delivery_max_retries=retries),
        destinations=(destination,),
    )
    app = make_celery_app(config, pipeline=standins.pipeline(standins.KINDS, config))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="worker"):
        outcome = app.tasks[Stage.DELIVER.task_name].apply(args=(message,))
    elapsed = time.monotonic() - started
    unit_id = str(message["unit_id"])
    progress = ProgressFiles(spool).read(unit_id)
    assert progress is not None
    status = ResultStore(spool / "results").status(unit_id)
    return Delivery(
        result=outcome.result,
        task_state=outcome.state,
        elapsed_s=elapsed,
        status=status,
        entry=status["destinations"][destination.name],
        unit_state=progress.state,
        reason=progress.reason,
        log=caplog.text,
    )


def assert_failed_alike(run: Delivery, name: str) -> str:
    """The task's result, status.json and progress.json say failed, with the same words."""
    assert run.task_state == "SUCCESS"
    assert run.result["state"] == run.unit_state == UnitState.FAILED
    entry = run.entry
    assert entry["state"] == DestinationState.FAILED
    assert run.result["destinations"][name] == {
        "state": DestinationState.FAILED,
        "error": entry["error"],
        "attempts": entry["attempts"],
    }
    assert run.result["reason"] == run.reason
    assert f"{name}: {entry['error']}" in run.reason
    assert entry["error"] in run.log  # the log line says it too
    return str(entry["error"])


def peer(port: int, **timeouts: float) -> Destination:
    options = {"acse_timeout_s": QUICK_S, "dimse_timeout_s": QUICK_S, "network_timeout_s": QUICK_S}
    return Destination(
        "pacs", ae_title=PEER_AET, host="127.0.0.1", port=port, **{**options, **timeouts}
    )


@contextlib.contextmanager
def scp(
    *,
    classes: tuple[str, ...] = RESULT_CLASSES,
    handlers: tuple[tuple[evt.EventType, Callable[..., Any]], ...] = (),
    **ae_options: object,
) -> Iterator[int]:
    """A pynetdicom SCP on a free loopback port, shut down after the block."""
    ae = AE(ae_title=PEER_AET)
    for name, value in ae_options.items():
        setattr(ae, name, value)
    for sop_class in classes:
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=list(handlers))
    try:
        yield port
    finally:
        server.shutdown()


def _answer_request(event: evt.Event, *, reject: tuple[int, int, int] | None) -> None:
    """Reject (result, source, reason) or abort (None) an association request, then wait, as
    pynetdicom does for its own rejections, until the answer is out before the socket closes."""
    if reject is None:
        event.assoc.acse.send_abort(0)
    else:
        event.assoc.acse.send_reject(*reject)
    event.assoc.kill()


# Association rejected: result, source and reason as PS3.8 Table 9-21 words them.
REJECTIONS = {
    "calling-aet": (
        {"require_calling_aet": ["PACS1"]},
        (),
        "result: rejected-permanent, source: service user, reason: calling AE title not recognised",
    ),
    "called-aet": (
        {"require_called_aet": True},
        (),
        "result: rejected-permanent, source: service user, reason: called AE title not recognised",
    ),
    "congestion": (
        {},
        ((evt.EVT_REQUESTED, lambda event: _answer_request(event, reject=(2, 3, 1))),),
        "result: rejected-transient, source: service provider (presentation), "
        "reason: temporary congestion",
    ),
    "protocol-version": (
        {},
        ((evt.EVT_REQUESTED, lambda event: _answer_request(event, reject=(1, 2, 2))),),
        "result: rejected-permanent, source: service provider (ACSE), "
        "reason: protocol version not supported",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejection_names_result_source_and_reason(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture, case: str
) -> None:
    options, handlers, words = REJECTIONS[case]
    called = "SOMEONE" if case == "called-aet" else PEER_AET
    with scp(handlers=handlers, **options) as port:
        dest = Destination("pacs", ae_title=called, host="127.0.0.1", port=port)
        run = deliver(tmp_path, inferred, dest, caplog)
    error = assert_failed_alike(run, "pacs")
    assert error == f"association with {called}@127.0.0.1:{port} rejected ({words})"
    assert run.elapsed_s < QUICK_S  # no timeout waited: the rejection ends it


def test_dcmtk_storescp_refusing_every_association(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proc = _start_process(["storescp", "-aet", PEER_AET, "--refuse", str(port)], port)
    try:
        run = deliver(tmp_path, inferred, peer(port), caplog)
    finally:
        stop_process(proc)
    error = assert_failed_alike(run, "pacs")
    # storescp --refuse closes its socket right after the A-ASSOCIATE-RJ; on a loaded machine
    # the reset can reach the node before it reads the RJ (seen once in a contended CI check),
    # and then the node can only say the peer closed the connection. Either way it fails at
    # once with a reason; the rejection's own wording is checked against a pynetdicom peer in
    # test_rejection_names_result_source_and_reason.
    assert error.endswith(
        "rejected (result: rejected-permanent, source: service user, reason: no reason given)"
    ) or error.endswith("request not answered: the peer closed the connection (A-P-ABORT)")
    assert run.elapsed_s < QUICK_S


def _abort_on_store(source: int) -> Callable[[evt.Event], int]:
    def handler(event: evt.Event) -> int:
        if source == 0:
            event.assoc.acse.send_abort(0)
        else:
            event.assoc.acse.send_ap_abort(2)  # unexpected PDU
        return 0x0000

    return handler


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (0, "A-ABORT, source: service user"),
        (2, "A-ABORT, source: service provider (A-P-ABORT), reason: unexpected PDU"),
    ],
)
def test_abort_mid_association_names_its_source(
    tmp_path: Path,
    inferred: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    source: int,
    words: str,
) -> None:
    with scp(handlers=((evt.EVT_C_STORE, _abort_on_store(source)),)) as port:
        run = deliver(tmp_path, inferred, peer(port), caplog)
    error = assert_failed_alike(run, "pacs")
    assert error.startswith(f"{PEER_AET}@127.0.0.1:{port} aborted the association at object ")
    assert error.endswith(f"({words})")
    assert "no C-STORE response" not in error
    assert run.elapsed_s < QUICK_S


def test_abort_instead_of_an_answer_to_the_association_request(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    abort = ((evt.EVT_REQUESTED, lambda event: _answer_request(event, reject=None)),)
    with scp(handlers=abort) as port:
        run = deliver(tmp_path, inferred, peer(port), caplog)
    error = assert_failed_alike(run, "pacs")
    assert error.endswith("aborted by the peer before it answered (A-ABORT, source: service user)")
    assert run.elapsed_s < QUICK_S


@pytest.mark.parametrize(
    ("code", "comment", "words"),
    [
        (0xA700, "Disk quota exceeded", "status 0xA700 (Failure: Refused: Out of Resources)"),
        (0xA900, None, "status 0xA900 (Failure: Data Set Does Not Match SOP Class)"),
        (0xC000, "cannot parse", "status 0xC000 (Failure: Cannot Understand)"),
        (0x0122, None, "status 0x0122 (Failure: Refused: SOP Class Not Supported)"),
    ],
)
def test_failure_status_names_code_meaning_and_comment(
    tmp_path: Path,
    inferred: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    code: int,
    comment: str | None,
    words: str,
) -> None:
    def refuse(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = code
        if comment:
            status.ErrorComment = comment
        return status

    with scp(handlers=((evt.EVT_C_STORE, refuse),)) as port:
        run = deliver(tmp_path, inferred, peer(port), caplog)
    error = assert_failed_alike(run, "pacs")
    assert error.startswith(f"{PEER_AET}@127.0.0.1:{port} refused object ")
    assert words in error
    assert (f"error comment: {comment!r}" in error) == bool(comment)
    assert run.elapsed_s < QUICK_S


def test_sop_class_the_peer_does_not_accept_is_named(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    no_seg = (standins.SR_CLASS, standins.SC_CLASS)
    with scp(classes=no_seg) as port:
        run = deliver(tmp_path, inferred, peer(port), caplog)
    error = assert_failed_alike(run, "pacs")
    assert error == (
        f"{PEER_AET}@127.0.0.1:{port} accepted no presentation context for Segmentation "
        f"Storage ({standins.SEG_CLASS}): abstract syntax not supported (provider rejection)"
    )
    assert run.elapsed_s < QUICK_S


def test_no_presentation_context_at_all_is_named(tmp_path: Path) -> None:
    paths = [_write(tmp_path / "sc.dcm", _secondary_capture(16))]
    with scp(classes=(standins.SR_CLASS,)) as port, pytest.raises(DeliveryError) as info:
        store_scu(peer(port), paths, calling_ae=NODE_AET)
    assert info.value.reason == (
        f"association with {PEER_AET}@127.0.0.1:{port} accepted with no presentation context "
        f"the node proposed (Secondary Capture Image Storage ({standins.SC_CLASS}): abstract "
        "syntax not supported (provider rejection))"
    )


def test_nothing_listening(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    run = deliver(tmp_path, inferred, peer(port), caplog)
    error = assert_failed_alike(run, "pacs")
    assert error.startswith(f"association with {PEER_AET}@127.0.0.1:{port} not opened: ")
    assert "no TCP connection" in error and "refused" in error.lower()
    assert run.elapsed_s < QUICK_S


def test_association_request_never_answered_ends_at_the_acse_timeout(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A listening socket nobody accepts on: TCP connects, the A-ASSOCIATE-RQ goes unread."""
    acse = 1.5
    with socket.create_server(("127.0.0.1", 0)) as mute:
        port = mute.getsockname()[1]
        run = deliver(tmp_path, inferred, peer(port, acse_timeout_s=acse), caplog)
    error = assert_failed_alike(run, "pacs")
    assert error.endswith("request not answered within acse_timeout_s = 1.5 s; aborted by the node")
    assert acse <= run.elapsed_s < acse + 3


def test_connection_closed_before_an_answer(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(HELD_S)
        port = server.getsockname()[1]

        def close_one() -> None:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.recv(1)  # the A-ASSOCIATE-RQ has come
                conn.close()

        closer = threading.Thread(target=close_one, daemon=True)
        closer.start()
        run = deliver(tmp_path, inferred, peer(port), caplog)
        closer.join(HELD_S)
    error = assert_failed_alike(run, "pacs")
    assert error.endswith("request not answered: the peer closed the connection (A-P-ABORT)")
    assert run.elapsed_s < QUICK_S


def test_peer_that_accepts_and_never_answers_ends_at_the_dimse_timeout(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    dimse = 1.5
    release = threading.Event()

    def silent(event: evt.Event) -> int:
        release.wait(HELD_S)
        return 0x0000

    try:
        with scp(handlers=((evt.EVT_C_STORE, silent),)) as port:
            run = deliver(tmp_path, inferred, peer(port, dimse_timeout_s=dimse), caplog)
            release.set()
    finally:
        release.set()
    error = assert_failed_alike(run, "pacs")
    assert error.startswith(f"no C-STORE response from {PEER_AET}@127.0.0.1:{port} for object ")
    assert error.endswith("within dimse_timeout_s = 1.5 s; association aborted by the node")
    assert dimse <= run.elapsed_s < dimse + 3


def test_peer_that_stops_reading_ends_within_dimse_plus_network_timeout(tmp_path: Path) -> None:
    """The SCP's DUL thread stalls on the first P-DATA: TCP buffers fill and the node's send
    blocks. Without a send timeout pynetdicom would wait for that send for ever."""
    dimse, network = 1.5, 1.5
    stall = threading.Event()

    def stop_reading(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            stall.wait(HELD_S)

    big = _write(tmp_path / "big.dcm", _secondary_capture(8192))  # 64 MiB: more than buffers
    try:
        with scp(handlers=((evt.EVT_PDU_RECV, stop_reading),)) as port:
            dest = peer(port, dimse_timeout_s=dimse, network_timeout_s=network)
            started = time.monotonic()
            with pytest.raises(DeliveryError) as info:
                store_scu(dest, [big], calling_ae=NODE_AET)
            elapsed = time.monotonic() - started
            stall.set()
    finally:
        stall.set()
    assert "no C-STORE response" in info.value.reason or "read none of object" in info.value.reason
    assert elapsed < dimse + network + 5  # reading and encoding 64 MiB included; HELD_S is 30


def test_success_result_agrees_with_status_json(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proc = start_storescp(tmp_path / "received", port, aet=PEER_AET)
    try:
        run = deliver(tmp_path, inferred, peer(port), caplog)
    finally:
        stop_process(proc)
    assert run.task_state == "SUCCESS" and run.unit_state == UnitState.DONE
    assert run.result == {
        "unit_id": inferred["unit_id"],
        "state": UnitState.DONE,
        "reason": None,
        "destinations": {"pacs": {"state": DestinationState.SENT, "error": None, "attempts": 1}},
    }
    assert run.entry["state"] == DestinationState.SENT
    recorded = {o["sop_instance_uid"] for o in run.status["objects"]}
    assert received_uids(tmp_path / "received") == recorded


def test_retries_keep_the_cause_and_end_failed_in_both(
    tmp_path: Path, inferred: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The reported case: a peer that does not know the node, with retries. Every attempt says
    why, and the final result says failed, as status.json does (never a stale pending)."""
    with scp(require_calling_aet=["ORTHANC"]) as port:
        run = deliver(tmp_path, inferred, peer(port), caplog, retries=2)
    error = assert_failed_alike(run, "pacs")
    assert "calling AE title not recognised" in error
    assert run.entry["attempts"] == 3
    assert run.reason.startswith("delivery failed after 2 retries (pacs: association with ")
    assert run.log.count("calling AE title not recognised") >= 3  # each attempt's warning
    assert "no C-STORE response" not in run.log
    assert run.elapsed_s < QUICK_S


def test_destination_timeouts_from_node_toml(tmp_path: Path) -> None:
    base = '[[destinations]]\nname = "pacs"\nae_title = "P"\nhost = "h"\nport = 104\n'
    path = tmp_path / "node.toml"
    path.write_text(base)
    (dest,) = load_config(path, env={}).destinations
    assert (dest.acse_timeout_s, dest.dimse_timeout_s, dest.network_timeout_s) == (30, 60, 60)
    path.write_text(base + "acse_timeout_s = 5\ndimse_timeout_s = 120.5\nnetwork_timeout_s = 90\n")
    (dest,) = load_config(path, env={}).destinations
    assert (dest.acse_timeout_s, dest.dimse_timeout_s, dest.network_timeout_s) == (5, 120.5, 90)
    for bad, words in (("0", "must be > 0"), ("7200", "at most 3600"), ('"soon"', "a number")):
        path.write_text(base + f"dimse_timeout_s = {bad}\n")
        with pytest.raises(ConfigError, match=f"dimse_timeout_s.*{words}"):
            load_config(path, env={})
    # deploy/node.toml documents the three keys with the defaults.
    example = Path(__file__).resolve().parents[1] / "deploy" / "node.toml"
    pacs = next(d for d in load_config(example, env={}).destinations if d.name == "pacs")
    assert (pacs.acse_timeout_s, pacs.dimse_timeout_s, pacs.network_timeout_s) == (
        Destination("x").acse_timeout_s,
        Destination("x").dimse_timeout_s,
        Destination("x").network_timeout_s,
    )


def _start_process(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    """A dcmtk peer that refuses associations (so no C-ECHO either): up once its port accepts
    TCP."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        if proc.poll() is not None:
            return True
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    wait_for(listening, 30, f"storescp listening on port {port}", every_s=0.2)
    assert proc.poll() is None, f"storescp exited with {proc.returncode}"
    return proc


def _secondary_capture(rows: int) -> Dataset:
    """An 8-bit Secondary Capture of ``rows`` x 8192 pixels (a size, not an image)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, 8192
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((rows, 8192), dtype=np.uint8).tobytes()
    return ds


def _write(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
