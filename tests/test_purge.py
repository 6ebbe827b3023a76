"""Retention (a unit's spooled objects and results deleted a set time after delivery) and
``molsub purge STUDY`` (a study removed from spool, results and state), on studies stored by
dcmtk's storescu into a real NodeSCP on loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import NodeConfig, NodeSettings
from common.units import UnitState
from molsub.cli import main
from molsub.launch import write_config
from scp.retention import HOUR_S, sweep
from scp.server import NodeSCP
from tests.dicom_peers import storescu
from tests.factories import disk_mask, make_mg, make_seg


class Study:
    """Two MG images of one study and two SEGs: ``seg1`` over both, ``seg2`` over ``cc``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cc = make_mg(view="CC", seed=1)
        mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=2)
        mask = disk_mask((256, 200), (120, 90), 25)
        seg1 = make_seg([cc, mlo], [mask, mask])
        seg2 = make_seg([cc], [mask])
        self.uid = str(cc.StudyInstanceUID)
        self.cc, self.mlo = str(cc.SOPInstanceUID), str(mlo.SOPInstanceUID)
        self.seg1, self.seg2 = str(seg1.SOPInstanceUID), str(seg2.SOPInstanceUID)
        self.files = {}
        for name, ds in (("cc", cc), ("mlo", mlo), ("seg1", seg1), ("seg2", seg2)):
            self.files[name] = folder / f"{name}.dcm"
            ds.save_as(self.files[name], enforce_file_format=True)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[NodeSCP]:
    node = NodeSCP(
        NodeSettings(port=0, spool_dir=tmp_path / "spool"), lambda unit: None, poll_s=0.05
    )
    node.start()
    yield node
    node.stop()


def store(scp: NodeSCP, study: Study, *names: str) -> None:
    result = storescu(scp.port, [study.files[n] for n in names])
    assert result.returncode == 0, result.stderr


def record_results(spool: Path, unit_id: str) -> Path:
    """What the workers leave for a delivered unit: result objects and status/progress."""
    folder = spool / "results" / unit_id
    folder.mkdir(parents=True)
    for name in ("1.2.3.1.dcm", "1.2.3.2.dcm"):
        (folder / name).write_bytes(b"result")
    (folder / "status.json").write_text(json.dumps({"objects": [{"file": "1.2.3.1.dcm"}]}))
    (folder / "progress.json").write_text("{}")
    return folder


def spooled(spool: Path) -> set[str]:
    return {p.stem for p in (spool / "studies").rglob("*.dcm")}


def wait_until(predicate, timeout_s: float = 15.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_retention_deletes_a_delivered_unit_after_the_set_time(
    scp: NodeSCP, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    study = Study(tmp_path / "send")
    store(scp, study, "cc", "mlo", "seg1", "seg2")
    db = scp.db
    assert db is not None
    assert wait_until(lambda: db.get_unit(study.seg1).state == UnitState.ENQUEUED)
    assert wait_until(lambda: db.get_unit(study.seg2).state == UnitState.ENQUEUED)
    delivered_at = time.time() + 1  # the clock sweeps are given from here on
    db.set_state(study.seg1, UnitState.DONE, now=delivered_at)
    results = record_results(spool, study.seg1)
    retention_s = 2 * HOUR_S

    # Not yet due: nothing goes.
    early = sweep(db, spool, retention_s, now=delivered_at + retention_s - 1)
    assert early.units == [] and spooled(spool) == {study.cc, study.mlo, study.seg1, study.seg2}

    due = sweep(db, spool, retention_s, now=delivered_at + retention_s + 1)
    assert due.units == [study.seg1]
    # seg1 and mlo are gone; cc stays, seg2 (not delivered yet) still needs it.
    assert spooled(spool) == {study.cc, study.seg2}
    assert (due.objects, due.kept_shared, due.result_objects) == (2, 1, 2)
    assert sorted(p.name for p in results.iterdir()) == ["progress.json", "status.json"]
    unit = db.get_unit(study.seg1)
    assert unit is not None and unit.state == UnitState.DONE  # the record stays (UIDs only)
    assert unit.image_paths == (spool / "studies" / study.uid / f"{study.cc}.dcm",)
    assert db.count_instances() == 2

    # An object sent again within the retention time stays (a new SEG may be on its way).
    store(scp, study, "mlo")
    resent = sweep(db, spool, retention_s, now=time.time() + retention_s - 10)
    assert resent.units == [] and study.mlo in spooled(spool)
    assert db.forget_instances([study.mlo]) == 1
    (spool / "studies" / study.uid / f"{study.mlo}.dcm").unlink()

    # Done and swept: a second sweep finds nothing; seg2 delivered later takes the rest.
    assert sweep(db, spool, retention_s, now=delivered_at + 3 * retention_s).units == []
    db.set_state(study.seg2, UnitState.DONE, now=delivered_at + retention_s)
    last = sweep(db, spool, retention_s, now=delivered_at + 3 * retention_s)
    assert last.units == [study.seg1, study.seg2]  # seg1's image cc, seg2 itself
    assert last.objects == 2
    assert spooled(spool) == set() and db.count_instances() == 0
    assert not (spool / "studies" / study.uid).exists()


def test_failed_and_waiting_units_are_kept(scp: NodeSCP, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    study = Study(tmp_path / "send")
    store(scp, study, "cc", "mlo", "seg1", "seg2")
    assert scp.db is not None
    scp.db.set_state(study.seg1, UnitState.FAILED, now=1.0)
    assert sweep(scp.db, spool, 1.0, now=1e9).units == []
    assert len(spooled(spool)) == 4
    assert sweep(scp.db, spool, 0, now=1e9).units == []  # 0: keep everything


def test_running_node_sweeps_with_its_retention_setting(tmp_path: Path) -> None:
    """retention_hours as small as a test can wait: 0.36 s after delivery, a sweep a second."""
    spool = tmp_path / "spool"
    settings = NodeSettings(port=0, spool_dir=spool, retention_hours=0.0001)
    node = NodeSCP(settings, lambda unit: None, poll_s=0.05)
    node.start()
    try:
        study = Study(tmp_path / "send")
        store(node, study, "cc", "mlo", "seg1")
        db = node.db
        assert db is not None
        assert wait_until(lambda: db.get_unit(study.seg1).state == UnitState.ENQUEUED)
        assert len(spooled(spool)) == 3
        db.set_state(study.seg1, UnitState.DONE)
        assert wait_until(lambda: spooled(spool) == set(), timeout_s=20)
    finally:
        node.stop()


def write_node_config(tmp_path: Path) -> Path:
    config = NodeConfig(node=NodeSettings(spool_dir=tmp_path / "spool"))
    return write_config(config, tmp_path / "node.toml")


def test_purge_removes_a_study_everywhere_and_says_what(
    scp: NodeSCP, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    study = Study(tmp_path / "send")
    other = Study(tmp_path / "other")
    store(scp, study, "cc", "mlo", "seg1")
    store(scp, other, "cc")
    db = scp.db
    assert db is not None
    assert wait_until(lambda: db.get_unit(study.seg1).state == UnitState.ENQUEUED)
    db.set_state(study.seg1, UnitState.DONE)
    results = record_results(spool, study.seg1)
    config = write_node_config(tmp_path)

    assert main(["purge", study.uid, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"study {study.uid}: purged" in out
    assert "received objects deleted: 3" in out
    assert f"units: 1 ({study.seg1})" in out
    assert "result folders deleted: 1 (2 result object(s)" in out
    assert "state rows deleted: 3 object(s), 1 unit(s)" in out

    assert not (spool / "studies" / study.uid).exists()
    assert not results.exists()
    assert db.get_unit(study.seg1) is None and db.study_paths(study.uid) == []
    assert spooled(spool) == {other.cc}  # another study is untouched
    # Nothing left: a second purge says so.
    assert main(["purge", study.uid, "--config", str(config)]) == 1
    assert "nothing of it" in capsys.readouterr().err


def test_purge_refuses_a_study_in_flight_unless_forced(
    scp: NodeSCP, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    study = Study(tmp_path / "send")
    store(scp, study, "cc", "mlo", "seg1")
    db = scp.db
    assert db is not None
    assert wait_until(lambda: db.get_unit(study.seg1).state == UnitState.ENQUEUED)
    config = write_node_config(tmp_path)
    assert main(["purge", study.uid, "--config", str(config)]) == 1
    assert "still being processed" in capsys.readouterr().err
    assert len(spooled(spool)) == 3
    assert main(["purge", study.uid, "--force", "--config", str(config)]) == 0
    assert spooled(spool) == set()


def test_purge_rejects_what_is_not_a_uid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_node_config(tmp_path)
    (tmp_path / "spool").mkdir()
    assert main(["purge", "../..", "--config", str(config)]) == 1
    assert "not a valid Study Instance UID" in capsys.readouterr().err


def test_purge_expired_runs_one_sweep(
    scp: NodeSCP, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = Study(tmp_path / "send")
    store(scp, study, "cc", "mlo", "seg1")
    db = scp.db
    assert db is not None
    assert wait_until(lambda: db.get_unit(study.seg1).state == UnitState.ENQUEUED)
    db.set_state(study.seg1, UnitState.DONE)
    time.sleep(0.5)  # retention_hours 0.0001: 0.36 s after delivery (and after receipt)
    spool = tmp_path / "spool"
    config = NodeConfig(node=NodeSettings(spool_dir=spool, retention_hours=0.0001))
    path = write_config(config, tmp_path / "node.toml")
    assert main(["purge", "--expired", "--config", str(path)]) == 0
    assert "1 unit(s), 3 received object(s)" in capsys.readouterr().out
    assert spooled(tmp_path / "spool") == set()


def test_resend_after_retention_says_the_objects_are_gone(tmp_path: Path) -> None:
    from common.spool_layout import SpoolLayout
    from scp.retention import remove_result_objects
    from worker.delivery.send import resend, result_store
    from worker.delivery.store import ResultNotFound

    config = NodeConfig(node=NodeSettings(spool_dir=tmp_path / "spool"))
    store_ = result_store(config)
    store_.record("1.2.3", [make_mg(seed=9)], ["pacs"])
    assert remove_result_objects(SpoolLayout.at(tmp_path / "spool"), "1.2.3") == 1
    with pytest.raises(ResultNotFound, match="result objects deleted"):
        resend("1.2.3", config)
