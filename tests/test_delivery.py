"""Result store and delivery: real dcmtk storescp peer, a refusing pynetdicom SCP, folders."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from common.settings import Destination, NodeConfig, NodeSettings
from molsub.launch import free_port, stop_process
from tests import worker_standins as standins
from tests.dicom_peers import received_uids, start_storescp
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from worker.delivery.send import deliver_recorded, resend
from worker.delivery.store import DestinationState, ResultNotFound, ResultStore
from worker.delivery.targets import DeliveryError, store_scu, write_to_folder


def _objects(seed: int = 0, digest_name: str = "standin") -> list[Dataset]:
    cc = make_mg(seed=seed)
    seg = roundtrip(make_seg([cc], [disk_mask((256, 200), (90, 90), 15)]))
    unit = standins.prepare_unit(seg, {str(cc.SOPInstanceUID): cc}, standins.bundle_info())
    predictions = standins.StandinPredictor().predict(unit.rois)
    return standins.build_objects(unit, predictions, standins.bundle_info()).all()


def test_store_records_and_keeps_sent_state(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    objects = _objects()
    paths = store.record("u1", objects, ["pacs", "archive"])
    assert sorted(p.name for p in paths) == sorted(f"{o.SOPInstanceUID}.dcm" for o in objects)
    assert pydicom.dcmread(paths[0]).SOPInstanceUID == objects[0].SOPInstanceUID
    status = store.status("u1")
    assert {d["state"] for d in status["destinations"].values()} == {DestinationState.PENDING}
    store.update_destination("u1", "pacs", DestinationState.SENT)
    store.record("u1", objects, ["pacs", "archive"])  # same objects again (a re-enqueue)
    assert store.status("u1")["destinations"]["pacs"]["state"] == DestinationState.SENT
    other = _objects(seed=5)
    store.record("u1", other, ["pacs", "archive"])  # other objects replace the old ones
    assert store.status("u1")["destinations"]["pacs"]["state"] == DestinationState.PENDING
    assert {p.name for p in store.object_paths("u1")} == {f"{o.SOPInstanceUID}.dcm" for o in other}
    assert len(list((tmp_path / "results" / "u1").glob("*.dcm"))) == len(other)
    store.mark_failed("u1", ["pacs"])
    assert store.status("u1")["destinations"]["pacs"]["state"] == DestinationState.FAILED
    assert store.status("u1")["unit_id"] == "u1"
    assert not list((tmp_path / "results" / "u1").glob(".tmp-*"))


def test_store_refuses_bad_unit_ids_and_unknown_units(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="unit id"):
            store.unit_dir(bad)
    with pytest.raises(ResultNotFound, match="unit 1.2.3"):
        store.status("1.2.3")
    store.record_input_error("1.2.4", "object 1.2.4: segment 1 (Lesion 1) is empty")
    assert store.status("1.2.4")["state"] == "input_error"
    assert "segment 1" in store.status("1.2.4")["error"]


def test_cstore_to_storescp_and_folder(tmp_path: Path) -> None:
    port = free_port()
    proc = start_storescp(tmp_path / "received", port)
    try:
        store = ResultStore(tmp_path / "results")
        objects = _objects()
        store.record("u1", objects, ["pacs", "folder"])
        destinations = [
            Destination("pacs", ae_title="DEST", host="127.0.0.1", port=port),
            Destination("folder", folder=tmp_path / "out"),
        ]
        outcome = deliver_recorded(store, "u1", destinations, calling_ae="MOLSUB")
        assert outcome == {"pacs": DestinationState.SENT, "folder": DestinationState.SENT}
        want = {str(o.SOPInstanceUID) for o in objects}
        assert received_uids(tmp_path / "received") == want
        assert {str(pydicom.dcmread(p).SOPClassUID) for p in (tmp_path / "received").iterdir()} == {
            standins.SR_CLASS,
            standins.SC_CLASS,
            standins.SEG_CLASS,
        }
        assert received_uids(tmp_path / "out" / "u1") == want
        # Sent destinations are not sent again.
        assert deliver_recorded(store, "u1", destinations, calling_ae="MOLSUB") == {}
    finally:
        stop_process(proc)


def test_down_destination_stays_pending_then_resend(tmp_path: Path) -> None:
    port = free_port()
    config = NodeConfig(
        node=NodeSettings(spool_dir=tmp_path / "spool"),
        destinations=(Destination("pacs", ae_title="DEST", host="127.0.0.1", port=port),),
    )
    store = ResultStore(tmp_path / "spool" / "results")
    objects = _objects()
    store.record("u1", objects, ["pacs"])
    outcome = deliver_recorded(store, "u1", config.destinations, calling_ae="MOLSUB")
    assert outcome == {"pacs": DestinationState.PENDING}
    entry = store.status("u1")["destinations"]["pacs"]
    assert entry["state"] == DestinationState.PENDING and entry["attempts"] == 1
    assert entry["error"].startswith(f"association with DEST@127.0.0.1:{port} not opened: ")
    assert "no TCP connection" in entry["error"]
    assert resend("u1", config) == {"pacs": DestinationState.FAILED}
    assert store.status("u1")["destinations"]["pacs"]["state"] == DestinationState.FAILED
    proc = start_storescp(tmp_path / "received", port)
    try:
        assert resend("u1", config) == {"pacs": DestinationState.SENT}
        assert received_uids(tmp_path / "received") == {str(o.SOPInstanceUID) for o in objects}
        assert store.status("u1")["destinations"]["pacs"]["state"] == DestinationState.SENT
    finally:
        stop_process(proc)
    with pytest.raises(ResultNotFound):
        resend("never-seen", config)


def test_refused_store_is_an_error_naming_the_destination(tmp_path: Path) -> None:
    ae = AE(ae_title="REFUSER")
    for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage):
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA700)]
    )
    try:
        store = ResultStore(tmp_path)
        store.record("u1", _objects(), ["refuser"])
        dest = Destination("refuser", ae_title="REFUSER", host="127.0.0.1", port=port)
        with pytest.raises(
            DeliveryError, match=r"refuser.*status 0xA700 \(Failure: Refused: Out of Resources\)"
        ):
            store_scu(dest, store.object_paths("u1"), calling_ae="MOLSUB")
        assert deliver_recorded(store, "u1", [dest], calling_ae="MOLSUB") == {
            "refuser": DestinationState.PENDING
        }
        assert "0xA700" in store.status("u1")["destinations"]["refuser"]["error"]
    finally:
        server.shutdown()


def test_unwritable_folder_is_a_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    src = tmp_path / "x.dcm"
    src.write_bytes(b"x")
    with pytest.raises(DeliveryError, match="destination f: cannot write"):
        write_to_folder(Destination("f", folder=blocker), [src], unit_id="u")
