"""Spool and StateDB alone: durable placement, SEG references, unit states, restart."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydicom
import pytest

from common.errors import InputError
from common.progress import FailureKind, Progress
from common.seg_refs import referenced_image_uids
from common.units import Unit, UnitState
from scp import spool as spool_module
from scp.dispatcher import Dispatcher
from scp.spool import (
    SEGMENTATION,
    ObjectInfo,
    Spool,
    own_result_of,
    read_object_info,
)
from scp.state import StateDB, format_units, unit_status
from scp.validate import InvalidObject
from tests.factories import MG_FOR_PRESENTATION, disk_mask, make_mg, make_seg, roundtrip

STUDY = "1.2.3.4"


def mg_info(uid: str) -> ObjectInfo:
    return ObjectInfo(uid, MG_FOR_PRESENTATION, STUDY)


def seg_info(uid: str, refs: tuple[str, ...]) -> ObjectInfo:
    return ObjectInfo(uid, SEGMENTATION, STUDY, refs)


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    state = StateDB(tmp_path / "state.sqlite3")
    yield state
    state.close()


def test_seg_references_read_from_series_and_per_frame_sources() -> None:
    cc, mlo = make_mg(view="CC"), make_mg(view="MLO")
    mask = disk_mask((256, 200), (100, 100), 20)
    seg = roundtrip(make_seg([cc, mlo], [mask, mask]))
    assert referenced_image_uids(seg) == [cc.SOPInstanceUID, mlo.SOPInstanceUID]
    # Per-frame source images alone are enough (some toolkits omit ReferencedSeriesSequence).
    del seg.ReferencedSeriesSequence
    assert set(referenced_image_uids(seg)) == {cc.SOPInstanceUID, mlo.SOPInstanceUID}


def test_read_object_info_names_the_object_and_reason(tmp_path: Path) -> None:
    mg = make_mg()
    del mg.StudyInstanceUID
    path = tmp_path / "x.dcm"
    mg.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError) as err:
        read_object_info(path)
    assert err.value.uid == mg.SOPInstanceUID and "Study Instance UID" in err.value.reason

    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(InputError) as err:
        read_object_info(tmp_path / "junk.dcm", fallback_uid="9.8.7")
    assert err.value.uid == "9.8.7"


def test_image_checks_read_the_header_only(tmp_path: Path) -> None:
    """Rows/Columns and whether Pixel Data is there; a SEG's lesion verdict travels along."""
    mg = make_mg()
    path = tmp_path / "mg.dcm"
    mg.save_as(path, enforce_file_format=True)
    assert read_object_info(path, min_image_side=200).sop_instance_uid == mg.SOPInstanceUID
    with pytest.raises(
        InputError, match=re.escape("image 256x200 px (rows x columns) under min_image_side 201")
    ):
        read_object_info(path, min_image_side=201)
    mg.PixelData = b""
    mg.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidObject, match="pixel-data: Pixel Data is empty"):
        read_object_info(path)
    seg = make_seg([mg], [disk_mask((256, 200), (100, 100), 20)])
    seg.SegmentationType = "FRACTIONAL"
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    assert read_object_info(tmp_path / "seg.dcm").not_lesion.startswith("FRACTIONAL")


def test_own_result_of_an_unreadable_file_is_no_verdict(tmp_path: Path) -> None:
    """What cannot be read is not called an own result: the spool refuses it afterwards."""
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    assert own_result_of(tmp_path / "junk.dcm") == ""
    assert own_result_of(tmp_path / "missing.dcm") == ""


def test_spool_syncs_file_before_rename_and_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    monkeypatch.setattr(spool_module.os, "replace", replace)
    spool = Spool(tmp_path / "spool")
    mg = make_mg()
    src = tmp_path / "mg.dcm"
    mg.save_as(src, enforce_file_format=True)
    tmp, info = spool.receive(src)
    final = spool.commit(tmp, info)
    assert events[0] == "fsync-file"
    assert events.index("replace") > 0
    assert "fsync-dir" in events[events.index("replace") :]
    assert final == spool.studies_dir / mg.StudyInstanceUID / f"{mg.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(final) == mg
    assert src.exists()  # copied, not moved, without move=True
    assert list(spool.tmp_dir.iterdir()) == []


def test_spool_rejects_path_like_uids(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Spool(tmp_path).object_path("../../etc", "1.2.3")


def test_unit_ready_in_the_transaction_of_its_last_object(db: StateDB, tmp_path: Path) -> None:
    assert db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=1.0) == []
    assert db.record_instance(seg_info("9.9", ("1.1", "1.2")), tmp_path / "s.dcm", now=2.0) == []
    unit = db.get_unit("9.9")
    assert unit is not None and unit.state == UnitState.WAITING and unit.missing_uids == ("1.2",)
    assert db.record_instance(mg_info("1.2"), tmp_path / "b.dcm", now=3.0) == ["9.9"]
    unit = db.get_unit("9.9")
    assert unit is not None and unit.state == UnitState.READY and unit.missing_uids == ()
    assert unit.image_paths == (tmp_path / "a.dcm", tmp_path / "b.dcm")
    assert unit.last_received_at == 3.0


def test_timeout_counts_from_last_received_object(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(seg_info("9.9", ("1.1", "1.2")), tmp_path / "s.dcm", now=0.0)
    db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=50.0)
    assert db.expire_waiting(60.0, now=100.0) == []  # 50 s since the last object
    [expired] = db.expire_waiting(60.0, now=111.0)
    assert expired.state == UnitState.TIMED_OUT and expired.missing_uids == ("1.2",)
    assert expired.detail == "incomplete after 60 s: image(s) 1.2 never arrived"
    assert "timed_out" in expired.times


def test_missing_images_policy_fail_ends_the_unit_for_good(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(seg_info("9.9", ("1.1", "1.2")), tmp_path / "s.dcm", now=0.0)
    [expired] = db.expire_waiting(60.0, now=61.0, fail=True)
    assert expired.state == UnitState.FAILED
    assert expired.detail == "incomplete after 60 s: image(s) 1.1, 1.2 never arrived"
    assert db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=70.0) == []
    assert db.record_instance(mg_info("1.2"), tmp_path / "b.dcm", now=71.0) == []
    assert db.get_unit("9.9").state == UnitState.FAILED  # a late image does not reopen it


def test_progress_moves_only_units_in_flight_and_retry_reopens_failed(
    db: StateDB, tmp_path: Path
) -> None:
    db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm", now=0.0)
    failed = Progress(
        UnitState.FAILED,
        at={"prepared": 5.0, "failed": 6.0},
        reason="prepare: object 9.9: segment 1 is empty",
        failure=FailureKind.PERMANENT,
    )
    assert not db.record_progress("9.9", failed)  # still waiting: not the workers' yet
    db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=1.0)
    assert db.mark_enqueued("9.9", now=2.0)
    assert db.record_progress("9.9", failed)
    unit = db.get_unit("9.9")
    assert unit.state == UnitState.FAILED
    assert unit.detail == "permanent: prepare: object 9.9: segment 1 is empty"
    assert unit.times == {"ready": 1.0, "enqueued": 2.0, "prepared": 5.0, "failed": 6.0}
    assert not db.record_progress("9.9", Progress(UnitState.DONE))  # final: stays failed
    assert db.retry("9.9", now=10.0)
    unit = db.get_unit("9.9")
    assert (unit.state, unit.detail, unit.times) == (UnitState.READY, "", {"ready": 10.0})
    assert not db.retry("9.9")  # ready is not retried
    assert [u.unit_id for u in db.ready_units()] == ["9.9"]


def test_late_image_reopens_timed_out_unit(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(seg_info("9.9", ("1.1", "1.2", "1.3")), tmp_path / "s.dcm", now=0.0)
    assert [u.unit_id for u in db.expire_waiting(60.0, now=61.0)] == ["9.9"]
    # One of two missing images arrives late: waiting again, the timeout counting from now.
    assert db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=200.0) == []
    unit = db.get_unit("9.9")
    assert unit is not None and unit.state == UnitState.WAITING and unit.detail == ""
    assert unit.missing_uids == ("1.2", "1.3")
    assert db.expire_waiting(60.0, now=259.0) == []
    assert [u.unit_id for u in db.expire_waiting(60.0, now=261.0)] == ["9.9"]
    # The last ones arrive: ready at once, in the transaction of the last image.
    assert db.record_instance(mg_info("1.2"), tmp_path / "b.dcm", now=300.0) == []
    assert db.record_instance(mg_info("1.3"), tmp_path / "c.dcm", now=301.0) == ["9.9"]
    unit = db.get_unit("9.9")
    assert unit is not None and unit.state == UnitState.READY


def test_resent_seg_reopens_timed_out_unit(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm", now=0.0)
    db.expire_waiting(60.0, now=61.0)
    assert db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm", now=100.0) == []
    unit = db.get_unit("9.9")
    assert unit is not None and unit.state == UnitState.WAITING
    assert db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=101.0) == ["9.9"]


def test_late_image_leaves_finished_units_alone(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm", now=0.0)
    assert db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=1.0) == ["9.9"]
    assert db.mark_enqueued("9.9")
    assert db.record_instance(mg_info("1.1"), tmp_path / "a.dcm", now=2.0) == []  # resent image
    unit = db.get_unit("9.9")
    assert unit is not None and unit.state == UnitState.ENQUEUED


def test_state_survives_reopen_and_ready_is_enqueued_once(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = StateDB(path)
    first.record_instance(mg_info("1.1"), tmp_path / "a.dcm")
    first.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm")
    first.close()  # "crash" after ready, before enqueue

    second = StateDB(path)
    got: list[Unit] = []
    dispatcher = Dispatcher(second, got.append, study_timeout_s=600)
    assert dispatcher.run_once() == ["9.9"]
    assert dispatcher.run_once() == []
    assert [u.unit_id for u in got] == ["9.9"]
    assert second.get_unit("9.9").state == UnitState.ENQUEUED
    assert second.mark_enqueued("9.9") is False
    assert second.set_state("9.9", UnitState.DONE)
    with pytest.raises(ValueError, match="unknown unit state"):
        second.set_state("9.9", "bogus")
    second.close()

    [unit] = unit_status(tmp_path)
    assert unit.state == UnitState.DONE
    table = format_units([unit])
    assert "9.9" in table and "done" in table and "1/1" in table


def test_failed_enqueue_keeps_unit_ready(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(mg_info("1.1"), tmp_path / "a.dcm")
    db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm")

    def broken(_unit: Unit) -> None:
        raise ConnectionError("broker down")

    assert Dispatcher(db, broken, study_timeout_s=600).run_once() == []
    assert db.get_unit("9.9").state == UnitState.READY


def test_resent_seg_of_an_enqueued_unit_changes_nothing(db: StateDB, tmp_path: Path) -> None:
    db.record_instance(mg_info("1.1"), tmp_path / "a.dcm")
    db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm")
    assert db.mark_enqueued("9.9")
    assert db.record_instance(seg_info("9.9", ("1.1",)), tmp_path / "s.dcm") == []
    assert db.get_unit("9.9").state == UnitState.ENQUEUED
    assert db.count_instances() == 2


def test_the_status_page_window_newest_first_with_counts(db: StateDB, tmp_path: Path) -> None:
    for i, at in enumerate((10.0, 20.0, 30.0, 40.0)):
        db.record_instance(mg_info(f"1.{i}"), tmp_path / f"{i}.dcm", now=at)
        db.record_instance(seg_info(f"9.{i}", (f"1.{i}",)), tmp_path / f"s{i}.dcm", now=at)
    db.mark_enqueued("9.2", now=31.0)
    db.set_state("9.2", UnitState.FAILED, "permanent: prepare: segment 1 is empty", now=32.0)
    # units received at or after 20: newest first, all or one state, bounded
    assert [u.unit_id for u in db.recent_units(20.0)] == ["9.3", "9.2", "9.1"]
    assert [u.unit_id for u in db.recent_units(20.0, UnitState.FAILED)] == ["9.2"]
    assert [u.unit_id for u in db.recent_units(0.0, limit=2)] == ["9.3", "9.2"]
    assert db.recent_unit_ids(20.0) == ["9.3", "9.2", "9.1"]
    assert db.recent_unit_ids(0.0, limit=1) == ["9.3"]
    counts = db.state_counts(20.0)
    assert counts[UnitState.READY] == 2 and counts[UnitState.FAILED] == 1
    assert counts[UnitState.DONE] == 0 and set(counts) == set(UnitState)
