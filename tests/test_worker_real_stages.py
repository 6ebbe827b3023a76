"""The task bodies with the real stages: untrained bundle, model.preprocess, worker.results.

Runs in-process (the plumbing is covered with stand-ins in test_worker_chain.py); it checks that
the messages carry what the real stages produce and need, across JSON, with no spool access
after prepare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings
from tests.factories import disk_mask, make_mg, make_seg
from worker.delivery.store import DestinationState, ResultStore

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.mark.slow
def test_real_stages_through_json_messages(tmp_path: Path) -> None:
    from model.bundle import init_untrained
    from worker.queue.handlers import StageHandlers

    bundle = tmp_path / "bundle"
    init_untrained(bundle)
    spool = tmp_path / "spool"
    spool.mkdir()
    cc = make_mg(laterality="L", view="CC", seed=3)
    mlo = make_mg(laterality="L", view="MLO", study_uid=cc.StudyInstanceUID, seed=4)
    masks = [disk_mask((256, 200), (100, 90), 18), disk_mask((256, 200), (120, 100), 16)]
    seg = make_seg([cc, mlo], masks)
    paths = []
    for ds in (seg, cc, mlo):
        paths.append(spool / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool),
        model=ModelSettings(bundle=bundle),
        destinations=(Destination("folder", folder=tmp_path / "out"),),
    )
    unit_id = str(seg.SOPInstanceUID)
    handlers = StageHandlers.for_config(config)
    prepared = json.loads(json.dumps(handlers.prepare(unit_id, paths[0], paths[1:])))
    for path in paths:  # infer and deliver must not need the spool
        path.unlink()
    inferred = json.loads(json.dumps(handlers.infer(prepared)))
    assert len(inferred["predictions"]) == 2
    assert handlers.deliver(inferred) == {"folder": DestinationState.SENT}
    store = ResultStore(spool / "results")
    classes = sorted(o["sop_class_uid"] for o in store.status(unit_id)["objects"])
    assert classes.count(SR_CLASS) == 1 and SC_CLASS in classes and SEG_CLASS in classes
    sent = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (tmp_path / "out" / unit_id).iterdir()}
    assert sent == {o["sop_instance_uid"] for o in store.status(unit_id)["objects"]}
    # The same messages again give the same objects (deterministic UIDs): nothing new to send.
    assert handlers.deliver(inferred) == {}
    assert {p.name for p in (tmp_path / "out" / unit_id).iterdir()} == {
        f"{uid}.dcm" for uid in sent
    }
