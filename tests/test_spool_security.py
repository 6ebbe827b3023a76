"""The spool is private (folders 0700, files 0600) and received objects never leave it: the file
pynetdicom streams an object into is made in SPOOL/tmp, removed when its transfer aborts, and
cleared at start. Real node process and real associations on loopback.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from common.settings import NodeConfig, NodeSettings
from common.sop_classes import MG_FOR_PRESENTATION
from molsub.launch import running_node, write_config
from scp.server import NodeSCP
from tests.dicom_peers import SCU_AET, storescu
from tests.factories import disk_mask, make_mg, make_seg


def modes(root: Path) -> dict[str, int]:
    """Every folder and file under ``root`` (``root`` too), relative name -> permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_real_node_spool_is_private_after_a_store(tmp_path: Path) -> None:
    """``molsub serve`` (umask 0o077), a study stored by storescu: everything it wrote is the
    node user's alone, the state database and the queue's message included."""
    spool = tmp_path / "spool"
    config = NodeConfig(node=NodeSettings(spool_dir=spool, study_timeout_s=60))
    path = write_config(config, tmp_path / "node.toml")
    cc = make_mg(seed=1)
    seg = make_seg([cc], [disk_mask((256, 200), (120, 90), 25)])
    files = []
    for name, ds in (("cc.dcm", cc), ("seg.dcm", seg)):
        files.append(tmp_path / name)
        ds.save_as(files[-1], enforce_file_format=True)
    old_umask = os.umask(0o022)  # what a login shell has: the node must not rely on it
    try:
        with running_node(path, tmp_path / "node.log", "--no-workers", timeout_s=120) as (_, at):
            result = storescu(at.port, files)
            assert result.returncode == 0, result.stderr
            queued = spool / "queue"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(queued.rglob("*.msg")):
                time.sleep(0.2)
    finally:
        os.umask(old_umask)
    found = modes(spool)
    assert f"studies/{cc.StudyInstanceUID}/{cc.SOPInstanceUID}.dcm" in found
    assert "state.sqlite3" in found
    assert any(name.startswith("queue/") for name in found), sorted(found)
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (spool / name).is_dir() else 0o600)
    }
    assert wrong == {}


def test_start_makes_an_older_spool_private(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    study = spool / "studies" / "1.2.3"
    study.mkdir(parents=True, mode=0o755)
    (study / "4.5.6.dcm").write_bytes(b"x")
    os.chmod(study / "4.5.6.dcm", 0o644)
    for folder in (spool, spool / "studies", study):
        os.chmod(folder, 0o755)
    scp = NodeSCP(NodeSettings(port=0, spool_dir=spool), lambda unit: None, poll_s=0.05)
    scp.start()
    try:
        found = modes(spool)
    finally:
        scp.stop()
    assert found["studies/1.2.3/4.5.6.dcm"] == 0o600
    assert found["state.sqlite3"] == 0o600
    assert {found[n] for n in (".", "studies", "studies/1.2.3", "tmp")} == {0o700}


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temporary folder, made a private one so that the test sees what lands
    there (without the node's routing, pynetdicom's partial file would)."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def scp(tmp_path: Path, system_tmp: Path) -> Iterator[NodeSCP]:
    node = NodeSCP(
        NodeSettings(port=0, spool_dir=tmp_path / "spool"), lambda unit: None, poll_s=0.05
    )
    node.start()
    yield node
    node.stop()


def test_aborted_transfer_leaves_no_partial_file(
    scp: NodeSCP, tmp_path: Path, system_tmp: Path
) -> None:
    """Half of a 6.5 MB mammogram, then A-ABORT: the partial file was in SPOOL/tmp (never in
    the system temporary folder) and is gone once the association is."""
    spool_tmp = tmp_path / "spool" / "tmp"
    ds = make_mg(rows=2048, cols=1600, seed=5)
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    ae.add_requested_context(MG_FOR_PRESENTATION, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MOLSUB")
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = MG_FOR_PRESENTATION
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, True, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    fragments = list(message.encode_msg(context_id, assoc.acceptor.maximum_length))
    assert len(fragments) > 10
    for fragment in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(fragment)
    partial: list[Path] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not partial:
        partial = [p for p in spool_tmp.iterdir() if p.stat().st_size > 1_000_000]
        time.sleep(0.05)
    assert partial, "no partial file in SPOOL/tmp while the object was arriving"
    assert partial[0].name.startswith("recv-")
    assert stat.S_IMODE(partial[0].stat().st_mode) == 0o600
    assoc.abort()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(spool_tmp.iterdir()):
        time.sleep(0.05)
    assert list(spool_tmp.iterdir()) == []
    assert list(system_tmp.iterdir()) == []
    assert not any((tmp_path / "spool" / "studies").rglob("*.dcm"))
    # The routing is the node's while it runs only.
    scp.stop()
    from pynetdicom import dimse_messages

    assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile


def test_a_stored_object_is_moved_not_copied_and_tmp_stays_empty(
    scp: NodeSCP, tmp_path: Path, system_tmp: Path
) -> None:
    path = tmp_path / "mg.dcm"
    make_mg(seed=6).save_as(path, enforce_file_format=True)
    result = storescu(scp.port, [path])
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "spool" / "studies").rglob("*.dcm"))) == 1
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert list(system_tmp.iterdir()) == []


def test_start_clears_partial_files_left_by_a_crash(tmp_path: Path) -> None:
    spool_tmp = tmp_path / "spool" / "tmp"
    spool_tmp.mkdir(parents=True)
    (spool_tmp / "recv-abc123.dcm").write_bytes(b"\0" * 4096)  # a node killed mid-transfer
    scp = NodeSCP(NodeSettings(port=0, spool_dir=tmp_path / "spool"), lambda unit: None)
    scp.start()
    try:
        assert list(spool_tmp.iterdir()) == []
    finally:
        scp.stop()
