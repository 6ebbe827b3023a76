"""The chain prepare -> infer -> deliver through real brokers and a real worker process.

Stand-ins replace the model stages (tests/worker_standins.py) so that these tests measure the
node's plumbing: Redis and the embedded filesystem broker, JSON messages, the worker process,
C-STORE to a dcmtk storescp that is down at first, retries, the folder destination, resend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from common.progress import FailureKind, ProgressFiles
from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from common.units import UnitState
from molsub.launch import free_port, redis_server, stop_process, wait_for, write_config
from tests.dicom_peers import received_uids, start_storescp
from tests.factories import disk_mask, make_mg, make_seg
from worker.delivery.send import resend
from worker.delivery.store import DestinationState, ResultNotFound, ResultStore
from worker.queue.app import enqueue_unit, make_celery_app, task_ids

REPO = Path(__file__).resolve().parents[1]
STANDINS = "prepare,infer,results"
OBJECTS_PER_UNIT = 4  # stand-in results: SR + one SC per image (2) + SEG


def write_unit(spool: Path, seed: int = 0) -> tuple[str, Path, list[Path]]:
    """An MG CC + MLO pair and their lesion SEG in the spool, as the SCP leaves them."""
    cc = make_mg(view="CC", seed=seed)
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=seed + 1)
    masks = [disk_mask((256, 200), (90, 90), 15), disk_mask((256, 200), (110, 80), 15)]
    seg = make_seg([cc, mlo], masks)
    folder = spool / "studies" / str(cc.StudyInstanceUID)
    folder.mkdir(parents=True)
    paths = []
    for ds in (seg, cc, mlo):
        paths.append(folder / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return str(seg.SOPInstanceUID), paths[0], paths[1:]


def write_toml(path: Path, config: NodeConfig) -> None:
    """The worker's node.toml; the model bundle is never read with every stage a stand-in."""
    model = ModelSettings(bundle=path.parent / "no-bundle-needed-with-standins")
    write_config(replace(config, model=model), path)


class Worker:
    """`python -m celery -A tests.worker_standins:app worker` as a real process."""

    def __init__(self, tmp: Path, config: NodeConfig, **env: str) -> None:
        toml = tmp / "node.toml"
        write_toml(toml, config)
        self.log = tmp / "worker.log"
        environ = {
            **os.environ,
            "MOLSUB_CONFIG": str(toml),
            "MOLSUB_TEST_STANDINS": STANDINS,
            "MOLSUB_QUEUE_DELIVERY_RETRY_BASE_S": "0.5",
            "MOLSUB_QUEUE_DELIVERY_RETRY_MAX_S": "1",
            **env,
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tests.worker_standins:app",
                    "worker",
                    "-Q",
                    "prepare,infer,deliver",
                    "--concurrency",
                    "1",
                    "--pool",
                    "solo",
                    "--loglevel",
                    "INFO",
                    "--without-heartbeat",
                    "--without-mingle",
                    "--without-gossip",
                    "-n",
                    f"test-{os.getpid()}@%h",
                ],
                cwd=REPO,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: b"ready." in self.log.read_bytes() or self.proc.poll() is not None,
            60,
            "the celery worker to start",
        )
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=15)


def status_of(store: ResultStore, unit_id: str) -> dict:
    try:
        return store.status(unit_id)
    except ResultNotFound:
        return {}


def dest_state(store: ResultStore, unit_id: str, name: str) -> str | None:
    return status_of(store, unit_id).get("destinations", {}).get(name, {}).get("state")


def test_task_ids_are_derived_from_the_unit() -> None:
    assert task_ids("1.2.3") == task_ids("1.2.3")
    assert task_ids("1.2.3")["infer"] != task_ids("1.2.4")["infer"]


def test_app_settings_suit_long_gpu_tasks(tmp_path: Path) -> None:
    app = make_celery_app(NodeConfig(node=NodeSettings(spool_dir=tmp_path)))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] >= 7200
    assert app.conf.broker_url == "filesystem://"
    assert Path(conf.broker_transport_options["data_folder_in"]).is_dir()
    assert conf.task_routes["molsub.infer"] == {"queue": "infer"}
    redis_app = make_celery_app(
        NodeConfig(node=NodeSettings(spool_dir=tmp_path), queue=QueueSettings("redis://h:1/0"))
    )
    assert redis_app.conf.broker_url == "redis://h:1/0"
    assert {"molsub.prepare", "molsub.infer", "molsub.deliver"} <= set(redis_app.tasks)


@pytest.mark.slow
def test_redis_chain_delivers_once_destination_comes_up(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    with redis_server(tmp_path / "redis") as url:
        config = NodeConfig(
            node=NodeSettings(spool_dir=spool),
            queue=QueueSettings(broker_url=url),
            destinations=(
                Destination("pacs", ae_title="DEST", host="127.0.0.1", port=port),
                Destination("folder", folder=tmp_path / "out"),
            ),
        )
        unit_id, seg_path, image_paths = write_unit(spool)
        worker = Worker(tmp_path, config)
        storescp = None
        try:
            app = make_celery_app(config)
            assert enqueue_unit(app, unit_id, seg_path, image_paths) == task_ids(unit_id)["prepare"]
            store = ResultStore(spool / "results")
            wait_for(
                lambda: dest_state(store, unit_id, "folder") == DestinationState.SENT,
                30,
                "folder delivery",
            )
            assert (
                dest_state(store, unit_id, "pacs") != DestinationState.SENT
            )  # nobody listening yet
            time.sleep(1.5)
            storescp = start_storescp(tmp_path / "received", port)
            wait_for(
                lambda: dest_state(store, unit_id, "pacs") == DestinationState.SENT,
                30,
                "delivery to storescp after it came up",
            )
            recorded = {o["sop_instance_uid"] for o in store.status(unit_id)["objects"]}
            assert len(recorded) == OBJECTS_PER_UNIT
            assert received_uids(tmp_path / "received") == recorded
            assert received_uids(tmp_path / "out" / unit_id) == recorded
            assert store.status(unit_id)["destinations"]["pacs"]["attempts"] >= 2
            log = worker.log.read_text()
            assert "retrying delivery to pacs" in log
            for stage, task_id in task_ids(unit_id).items():
                assert f"molsub.{stage}[{task_id}] received" in log
            assert "SYNTHETIC" not in log and "SYNTH-0001" not in log  # UIDs only in logs
        finally:
            worker.stop()
            if storescp:
                stop_process(storescp)


@pytest.mark.slow
def test_embedded_broker_chain_retries_fail_then_resend(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool),
        destinations=(
            Destination("folder", folder=tmp_path / "out"),
            Destination("pacs", ae_title="DEST", host="127.0.0.1", port=port),
        ),
    )
    unit_id, seg_path, image_paths = write_unit(spool)
    bad_id, bad_seg, bad_images = write_unit(spool, seed=10)
    worker = Worker(tmp_path, config, MOLSUB_QUEUE_DELIVERY_MAX_RETRIES="1")
    storescp = None
    try:
        app = make_celery_app(config)
        enqueue_unit(app, unit_id, seg_path, image_paths)
        enqueue_unit(app, bad_id, bad_seg, bad_images[:1])  # one MG never arrived
        store = ResultStore(spool / "results")
        wait_for(
            lambda: dest_state(store, unit_id, "pacs") == DestinationState.FAILED,
            30,
            "retries to be exhausted",
        )
        assert dest_state(store, unit_id, "folder") == DestinationState.SENT
        assert store.status(unit_id)["destinations"]["pacs"]["attempts"] == 2  # first + 1 retry
        wait_for(
            lambda: status_of(store, bad_id).get("state") == "input_error",
            30,
            "the unusable unit to be recorded",
        )
        assert bad_id in store.status(bad_id)["error"]
        assert "not received" in store.status(bad_id)["error"]

        # Re-enqueueing the same unit rebuilds identical objects and sends nothing twice.
        # Its progress is cleared first, as `molsub retry` does: the workers skip a unit that
        # already ended (a message redelivered after a worker died).
        first = store.status(unit_id)["recorded"]
        time.sleep(1.1)
        ProgressFiles(spool).clear(unit_id)
        enqueue_unit(app, unit_id, seg_path, image_paths)
        wait_for(lambda: store.status(unit_id)["recorded"] != first, 30, "the re-run")
        time.sleep(1.0)
        assert store.status(unit_id)["destinations"]["folder"]["attempts"] == 1
        assert len(list((tmp_path / "out" / unit_id).iterdir())) == OBJECTS_PER_UNIT

        wait_for(
            lambda: dest_state(store, unit_id, "pacs") == DestinationState.FAILED,
            30,
            "retries again",
        )
        storescp = start_storescp(tmp_path / "received", port)
        assert resend(unit_id, config) == {
            "folder": DestinationState.SENT,
            "pacs": DestinationState.SENT,
        }
        recorded = {o["sop_instance_uid"] for o in store.status(unit_id)["objects"]}
        assert received_uids(tmp_path / "received") == recorded
    finally:
        worker.stop()
        if storescp:
            stop_process(storescp)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["permanent", "transient"])
def test_infer_failure_is_reported_through_the_spool_and_ends_the_unit(
    tmp_path: Path, kind: str
) -> None:
    """infer may run where the spool is not: its failure travels as a report task to a deliver
    worker, which records it for the node. Permanent at once, transient after its retries."""
    spool = tmp_path / "spool"
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool), destinations=(Destination("f", folder=tmp_path / "o"),)
    )
    unit_id, seg_path, image_paths = write_unit(spool)
    worker = Worker(
        tmp_path,
        config,
        MOLSUB_TEST_INFER_FAILS=kind,
        MOLSUB_QUEUE_STAGE_MAX_RETRIES="1",
        MOLSUB_QUEUE_DELIVERY_RETRY_BASE_S="1",
    )
    try:
        enqueue_unit(make_celery_app(config), unit_id, seg_path, image_paths)
        progress = ProgressFiles(spool)
        final = wait_for(
            lambda: (p := progress.read(unit_id)) is not None and p.final and p,
            60,
            f"the {kind} infer failure to be recorded",
        )
        assert final.state == UnitState.FAILED
        assert final.failure == FailureKind(kind)
        assert final.reason.startswith("infer: ")
        assert "prepared" in final.at and "inferred" not in final.at
        assert not ResultStore(spool / "results").has_objects(unit_id)  # the chain stopped
        log = worker.log.read_text()
        assert ("retry 1 of 1" in log) == (kind == "transient")
        if kind == "transient":
            assert "(after 1 retries)" in final.reason
    finally:
        worker.stop()
