"""Association limits against hostile and broken peers: the real NodeSCP on loopback, raw
sockets, pynetdicom and dcmtk's storescu as peers. Timeouts are small so that it runs quickly."""

from __future__ import annotations

import logging
import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.transport import AddressInformation

from common.settings import NodeSettings
from molsub.config import ConfigError, load_config
from scp.server import NodeSCP
from tests.dicom_peers import SCU_AET, free_port, storescu
from tests.factories import MG_FOR_PRESENTATION, make_mg

ACSE_S = 1.5  # the test node's ACSE timeout: a half request is closed after it
GRACE_S = 4.0  # "within the ACSE timeout plus a few seconds"

StartFn = Callable[..., NodeSCP]


@pytest.fixture
def start_scp(tmp_path: Path, running_scps: StartFn) -> StartFn:
    """Short timeouts and small limits, so that the probes end quickly."""

    def start(**node: object) -> NodeSCP:
        settings = {
            "port": free_port(),
            "spool_dir": tmp_path / "spool",
            "acse_timeout_s": ACSE_S,
            "network_timeout_s": 5.0,
            "dimse_timeout_s": 5.0,
            "max_associations": 4,
            "max_associations_per_aet": 2,
            **node,
        }
        return running_scps(NodeSettings(**settings))

    return start


@pytest.fixture
def mg_file(tmp_path: Path) -> Path:
    path = tmp_path / "mg.dcm"
    make_mg(seed=3).save_as(path, enforce_file_format=True)
    return path


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def associate_rq_bytes(called: str = "MOLSUB", calling: str = SCU_AET) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU proposing MG For Presentation (Explicit VR LE)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MG_FOR_PRESENTATION)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    primitive.presentation_context_definition_list = ae.requested_contexts
    for i, cx in enumerate(primitive.presentation_context_definition_list):
        cx.context_id = 2 * i + 1
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def closed_within(sock: socket.socket, timeout_s: float) -> tuple[bool, bytes]:
    """Read until the peer closes; (closed in time, what was received)."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def store_ok(port: int, path: Path, *, calling: str = SCU_AET) -> bool:
    result = storescu(port, [path], calling_aet=calling, options=("-R", "-v"), timeout_s=30)
    return "Received Store Response (Success)" in result.stderr


def test_storm_of_half_requests_and_idle_sockets_does_not_keep_a_study_out(
    start_scp: StartFn, mg_file: Path, tmp_path: Path
) -> None:
    scp = start_scp()
    rq = associate_rq_bytes()
    half = [connect(scp.port) for _ in range(12)]
    for sock in half:
        sock.sendall(rq[: len(rq) // 2])  # the header promises the rest, which never comes
    idle = [connect(scp.port) for _ in range(10)]
    try:
        t0 = time.monotonic()
        assert store_ok(scp.port, mg_file)  # negotiating connections do not count
        stored_s = time.monotonic() - t0
        assert stored_s < ACSE_S + GRACE_S, stored_s
        # ... and every one of them is closed by the node after the ACSE timeout.
        for sock in half + idle:
            closed, _ = closed_within(sock, ACSE_S + GRACE_S)
            assert closed
    finally:
        for sock in half + idle:
            sock.close()
    assert len(list((tmp_path / "spool" / "studies").rglob("*.dcm"))) == 1


def test_with_the_default_limits_a_storm_does_not_delay_a_study(
    tmp_path: Path, mg_file: Path
) -> None:
    """The shipped defaults (16 associations, 10 s ACSE timeout): 12 half requests and 10 idle
    sockets held open, and a study still gets in at once."""
    settings = NodeSettings(port=free_port(), spool_dir=tmp_path / "spool")
    scp = NodeSCP(settings, lambda _unit: None, poll_s=0.05)
    scp.start()
    rq = associate_rq_bytes()
    socks = [connect(scp.port) for _ in range(22)]
    try:
        for sock in socks[:12]:
            sock.sendall(rq[: len(rq) // 2])
        t0 = time.monotonic()
        assert store_ok(scp.port, mg_file)
        assert time.monotonic() - t0 < GRACE_S
    finally:
        for sock in socks:
            sock.close()
        scp.stop()


def test_a_trickled_request_is_closed_at_the_acse_deadline(start_scp: StartFn) -> None:
    """One byte a second keeps every read alive: the deadline is for the whole request."""
    scp = start_scp()
    rq = associate_rq_bytes()
    sock = connect(scp.port)
    t0 = time.monotonic()
    closed = False
    try:
        for byte in rq[:20]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the node closed it: what is tested
                closed = True
                break
            time.sleep(0.3)
        closed = closed or closed_within(sock, GRACE_S)[0]
    finally:
        sock.close()
    assert closed and time.monotonic() - t0 < ACSE_S + GRACE_S + 1


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage: unknown PDU type 0x47
        struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF),  # an A-ASSOCIATE-RQ of 4 GB
        struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"\0" * 64,  # a P-DATA of 4 GB
    ],
    ids=["garbage", "4GB-associate", "4GB-pdata"],
)
def test_garbage_and_oversized_pdus_get_an_abort_and_the_socket_closes(
    start_scp: StartFn, mg_file: Path, caplog: pytest.LogCaptureFixture, payload: bytes
) -> None:
    scp = start_scp()
    sock = connect(scp.port)
    with caplog.at_level(logging.WARNING, logger="scp.association"):
        t0 = time.monotonic()
        try:
            sock.sendall(payload)
            closed, got = closed_within(sock, 3)
        finally:
            sock.close()
    assert closed and time.monotonic() - t0 < 3
    assert got[:1] == b"\x07" and len(got) == 10, got  # A-ABORT-RQ, source 2 (provider)
    assert got[8] == 0x02
    assert "A-ABORT sent" in caplog.text
    assert store_ok(scp.port, mg_file)


def test_oversized_pdata_inside_an_association_is_aborted(start_scp: StartFn) -> None:
    """An established association whose peer announces a P-DATA above max_pdu_bytes."""
    scp = start_scp(max_pdu_bytes=16384)
    sock = connect(scp.port)
    try:
        sock.sendall(associate_rq_bytes())
        sock.settimeout(3)
        accept = sock.recv(4096)
        assert accept[:1] == b"\x02"  # A-ASSOCIATE-AC
        sock.sendall(struct.pack(">BBL", 0x04, 0, 1 << 20))
        closed, got = closed_within(sock, 3)
    finally:
        sock.close()
    assert closed and got[:1] == b"\x07"


def test_max_associations_total_and_per_calling_ae(
    start_scp: StartFn, mg_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_scp(max_associations=3, max_associations_per_aet=2)
    held = []

    def hold(calling: str) -> bool:
        ae = AE(ae_title=calling)
        ae.add_requested_context(MG_FOR_PRESENTATION)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="MOLSUB")
        if assoc.is_established:
            held.append(assoc)
        return bool(assoc.is_established)

    with caplog.at_level(logging.WARNING, logger="scp.association"):
        try:
            assert hold("A") and hold("A")
            assert not hold("A")  # a third from one AE title
            assert hold("B")
            assert not hold("C")  # the fourth in total
            assert "'A' at 127.0.0.1 rejected: maximum for this AE title reached" in caplog.text
            assert "'C' at 127.0.0.1 rejected: maximum associations reached" in caplog.text
        finally:
            for assoc in held:
                assoc.release()
    assert store_ok(scp.port, mg_file, calling="C")  # released ones no longer count


def test_called_ae_title_is_checked(
    start_scp: StartFn, mg_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_scp()
    with caplog.at_level(logging.WARNING, logger="scp.association"):
        result = storescu(scp.port, [mg_file], called_aet="SOMEONE_ELSE")
    assert "Association Rejected" in result.stderr
    assert "Called AE Title Not Recognized" in result.stderr
    assert f"'{SCU_AET}' at 127.0.0.1 rejected: called AE title not this node's" in caplog.text
    lax = start_scp(check_called_aet=False, port=free_port())
    assert storescu(lax.port, [mg_file], called_aet="SOMEONE_ELSE").returncode == 0


def test_calling_ae_bound_to_another_address_is_rejected_and_logged(
    start_scp: StartFn, mg_file: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    scp = start_scp(allowed_peers=(f"{SCU_AET}@10.9.8.7", "LOOP@127.0.0.0/8"))
    with caplog.at_level(logging.WARNING, logger="scp.association"):
        result = storescu(scp.port, [mg_file])
    assert "Calling AE Title Not Recognized" in result.stderr
    line = f"association from '{SCU_AET}' at 127.0.0.1 rejected: calling AE title not bound"
    assert line in caplog.text
    assert store_ok(scp.port, mg_file, calling="LOOP")  # bound to loopback: accepted
    assert store_ok(scp.port, mg_file, calling="ANYONE")  # unbound titles: allowed_calling_aets


def test_storm_leaves_no_threads_behind(start_scp: StartFn) -> None:
    """Connections the node closed end their threads: nothing accumulates over storms."""
    import threading

    scp = start_scp()
    before = threading.active_count()
    socks = [connect(scp.port) for _ in range(8)]
    for sock in socks:
        sock.sendall(b"\x01\x00\x00\x00\x10\x00abc")  # an A-ASSOCIATE-RQ header, then silence
    for sock in socks:
        assert closed_within(sock, ACSE_S + GRACE_S)[0]
        sock.close()
    deadline = time.monotonic() + ACSE_S + GRACE_S
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= before + 1


def test_received_object_is_the_one_sent(start_scp: StartFn, mg_file: Path, tmp_path: Path) -> None:
    """The guarded socket changes no byte: the stored object equals the sent one."""
    scp = start_scp(max_pdu_bytes=4096)
    assert store_ok(scp.port, mg_file)
    [stored] = (tmp_path / "spool" / "studies").rglob("*.dcm")
    assert pydicom.dcmread(stored) == pydicom.dcmread(mg_file)


# -- the settings --------------------------------------------------------------------------------


def test_association_settings_from_toml_and_environment(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(
        "[node]\nmax_associations = 5\nmax_associations_per_aet = 2\nacse_timeout_s = 3\n"
        'max_pdu_bytes = 65536\ncheck_called_aet = false\nallowed_peers = ["PACS1@10.1.2.3"]\n'
    )
    node = load_config(toml, env={}).node
    assert (node.max_associations, node.max_associations_per_aet) == (5, 2)
    assert (node.acse_timeout_s, node.max_pdu_bytes, node.check_called_aet) == (3.0, 65536, False)
    assert node.allowed_peers == ("PACS1@10.1.2.3",)
    env = {"MOLSUB_NODE_ALLOWED_PEERS": "A@10.0.0.0/8, B@::1", "MOLSUB_NODE_ACSE_TIMEOUT_S": "2"}
    node = load_config(toml, env=env).node
    assert node.allowed_peers == ("A@10.0.0.0/8", "B@::1") and node.acse_timeout_s == 2.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('allowed_peers = ["PACS1"]', "'PACS1' is not AET@address"),
        ('allowed_peers = ["PACS1@pacs.example"]', "is not an IP address or network"),
        ('allowed_peers = ["WAY_TOO_LONG_AE_TITLE@10.0.0.1"]', "must have 1 to 16 characters"),
        ("max_associations = 0", "max_associations: must be >= 1"),
        ("max_associations_per_aet = 99", "max_associations_per_aet: must be 1..max_associations"),
        ("acse_timeout_s = 0", "acse_timeout_s: must be > 0"),
        ("network_timeout_s = 99999", "network_timeout_s: must be > 0 and at most 3600"),
        ("max_pdu_bytes = 100", "max_pdu_bytes: must be 4096..16777216 bytes"),
    ],
)
def test_bad_association_settings_stop_the_node_with_the_key(
    tmp_path: Path, line: str, message: str
) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(f"[node]\n{line}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(toml, env={})
