"""NodeMetrics, the readiness checks and the HTTP server, without a node process: a StateDB and
a spool in tmp_path, the real dispatcher moving units from progress.json files, the real app.

The real node is in tests/test_http_node.py.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.testclient import TestClient

from common.progress import FailureKind, ProgressFiles
from common.settings import ModelSettings, NodeConfig, NodeSettings, QueueSettings
from common.spool_layout import SpoolLayout
from common.units import UnitState
from molsub.health import NodeHealth
from molsub.launch import free_port
from molsub.metrics import NodeMetrics, sop_class_label
from molsub.queues import messages_dir
from molsub.web.app import create_app
from molsub.web.server import HttpServer, HttpServerError
from molsub.web.view import NodeView
from scp.dispatcher import Dispatcher, Stall
from scp.spool import SEGMENTATION, ObjectInfo
from scp.state import StateDB
from scp.watermark import DiskUsage, Watermark
from tests.factories import MG_FOR_PRESENTATION
from worker.delivery.store import DestinationState, ResultStore

STUDY = "1.2.3.4"


def scrape(metrics: NodeMetrics) -> list[Sample]:
    text = generate_latest(metrics.registry).decode("utf-8")
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, /, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


def make_config(tmp_path: Path, **queue: object) -> NodeConfig:
    return NodeConfig(
        node=NodeSettings(spool_dir=tmp_path / "spool", min_free_mb=10),
        model=ModelSettings(bundle=None),
        queue=QueueSettings(**queue),  # type: ignore[arg-type]
    )


@pytest.fixture
def config(tmp_path: Path) -> NodeConfig:
    return make_config(tmp_path)


@pytest.fixture
def db(config: NodeConfig) -> StateDB:
    layout = SpoolLayout.at(config.node.spool_dir)
    layout.root.mkdir(parents=True)
    state = StateDB(layout.state_db, layout.root)
    yield state
    state.close()


def add_unit(db: StateDB, root: Path, n: int, *, images: int = 1) -> str:
    """A SEG and ``images`` MG images recorded (ready when all arrived); returns its id."""
    refs = tuple(f"1.2.3.{n}.{i}" for i in range(images))
    seg_uid = f"1.2.3.{n}.99"
    db.record_instance(ObjectInfo(seg_uid, SEGMENTATION, STUDY, refs), root / f"{n}.dcm")
    for uid in refs[:-1] if images > 1 else refs:
        db.record_instance(ObjectInfo(uid, MG_FOR_PRESENTATION, STUDY), root / f"{uid}.dcm")
    return seg_uid


def test_store_observer_counts_by_class_keyword_and_hex_status(
    config: NodeConfig, db: StateDB
) -> None:
    metrics = NodeMetrics(config, db)
    metrics.observe_store(MG_FOR_PRESENTATION, 0x0000, 1000)
    metrics.observe_store(MG_FOR_PRESENTATION, 0xC002, 500)
    metrics.observe_store("1.2.3.999", 0xA700, 0)
    samples = scrape(metrics)
    mg = "DigitalMammographyXRayImageStorageForPresentation"
    assert sop_class_label(MG_FOR_PRESENTATION) == mg
    assert value(samples, "molsub_objects_received_total", sop_class=mg, status="0x0000") == 1
    assert value(samples, "molsub_objects_received_total", sop_class=mg, status="0xC002") == 1
    unknown = value(
        samples, "molsub_objects_received_total", sop_class="1.2.3.999", status="0xA700"
    )
    assert unknown == 1
    assert value(samples, "molsub_bytes_received_total") == 1500


def test_dispatcher_hook_times_done_units_and_classifies_failures(
    config: NodeConfig, db: StateDB
) -> None:
    root = db.root
    metrics = NodeMetrics(config, db)
    progress = ProgressFiles(root)
    dispatcher = Dispatcher(
        db,
        lambda unit: None,
        study_timeout_s=600,
        progress=progress,
        stall=Stall(timeout_s=60, max_offers=0),
        on_unit_end=metrics.unit_ended,
    )
    done, failed, stalled = (add_unit(db, root, n) for n in (1, 2, 3))
    waiting = add_unit(db, root, 4, images=2)  # one image never comes
    dispatcher.run_once()
    assert {u.unit_id for u in db.list_units(UnitState.ENQUEUED)} == {done, failed, stalled}
    t0 = db.get_unit(done).times[UnitState.ENQUEUED]
    for state, dt in ((UnitState.PREPARED, 2.0), (UnitState.INFERRED, 5.0), (UnitState.DONE, 6.0)):
        progress.advance(done, state, at=t0 + dt)
    store = ResultStore(SpoolLayout.at(root).results)
    store.record(done, [], ["pacs", "copy"])
    store.update_destination(done, "copy", DestinationState.SENT)
    store.mark_failed(done, ["pacs"])
    progress.advance(
        failed,
        UnitState.FAILED,
        reason="prepare: segment 1 is empty",
        failure=FailureKind.PERMANENT,
    )
    dispatcher.follow_progress()
    # The stall sweep (no offers allowed) fails the third; the study timeout closes the fourth.
    later = db.get_unit(stalled).updated_at + 120
    dispatcher.sweep_stalled(now=later)
    db_timeout = Dispatcher(db, lambda unit: None, 600, on_unit_end=metrics.unit_ended)
    db_timeout.run_once(now=db.get_unit(waiting).last_received_at + 601)
    samples = scrape(metrics)
    assert value(samples, "molsub_stage_seconds_count", stage="prepare") == 1
    assert value(samples, "molsub_stage_seconds_sum", stage="prepare") == pytest.approx(2.0)
    assert value(samples, "molsub_stage_seconds_sum", stage="infer") == pytest.approx(3.0)
    assert value(samples, "molsub_stage_seconds_sum", stage="deliver") == pytest.approx(1.0)
    assert value(samples, "molsub_stage_seconds_count", stage="end_to_end") == 1
    assert value(samples, "molsub_stage_seconds_count", stage="receive_to_ready") == 1
    assert value(samples, "molsub_deliveries_total", destination="copy", outcome="sent") == 1
    assert value(samples, "molsub_deliveries_total", destination="pacs", outcome="failed") == 1
    failures = "molsub_unit_failures_total"
    assert value(samples, failures, stage="prepare", kind="permanent") == 1
    assert value(samples, failures, stage="prepare", kind="stalled") == 1
    assert value(samples, failures, stage="waiting", kind="timeout") == 1
    for state, count in {"done": 1, "failed": 2, "timed_out": 1, "waiting": 0}.items():
        assert value(samples, "molsub_units", state=state) == count, state
    # A resend from the status page counts its outcomes too.
    metrics.delivered(done, {"pacs": "sent", "copy": "pending"})
    samples = scrape(metrics)
    assert value(samples, "molsub_deliveries_total", destination="pacs", outcome="sent") == 1
    assert value(samples, "molsub_deliveries_total", destination="copy", outcome="sent") == 1


def test_queue_depth_counts_embedded_message_files(config: NodeConfig, db: StateDB) -> None:
    folder = messages_dir(config)  # made by the broker's settings, as Celery's app does
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("1_a.prepare.msg", "2_b.prepare.msg", "3_c.deliver.msg"):
        (folder / name).write_text("{}")
    (folder / ".tmp-4_d.infer.msg").write_text("")  # still being written: not a message yet
    samples = scrape(NodeMetrics(config, db))
    assert value(samples, "molsub_queue_depth", queue="prepare") == 2
    assert value(samples, "molsub_queue_depth", queue="infer") == 0
    assert value(samples, "molsub_queue_depth", queue="deliver") == 1
    assert value(samples, "molsub_spool_min_free_bytes") == 10 * 1024 * 1024
    assert value(samples, "molsub_spool_free_bytes") > 0


def test_dead_redis_leaves_queue_depth_out_of_a_scrape_that_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    layout = SpoolLayout.at(config.node.spool_dir)
    layout.root.mkdir(parents=True)
    db = StateDB(layout.state_db, layout.root)
    try:
        with caplog.at_level(logging.WARNING, logger="molsub.metrics"):
            samples = scrape(NodeMetrics(config, db))
    finally:
        db.close()
    assert not [s for s in samples if s.name == "molsub_queue_depth"]
    assert value(samples, "molsub_units", state="done") == 0  # the rest is there
    assert "queue depths not collected: Redis broker did not answer" in caplog.text


def view_of(config: NodeConfig, db: StateDB, health: NodeHealth) -> NodeView:
    return NodeView(config, db, NodeMetrics(config, db).registry, health)


def test_readyz_503_names_an_unwritable_spool_and_a_dead_broker(tmp_path: Path) -> None:
    config = make_config(tmp_path, broker_url=f"redis://:secret@127.0.0.1:{free_port()}/0")
    layout = SpoolLayout.at(config.node.spool_dir)
    layout.root.mkdir(parents=True)
    layout.tmp.write_text("not a folder")  # root ignores modes; a file in its place stops it
    db = StateDB(layout.state_db, layout.root)
    try:
        health = NodeHealth(config, scp_listening=lambda: 11112)
        with TestClient(create_app(view_of(config, db, health))) as client:
            response = client.get("/readyz")
            metrics = client.get("/metrics")
    finally:
        db.close()
    assert response.status_code == 503
    doc = response.json()
    assert doc["ready"] is False
    checks = doc["checks"]
    assert checks["scp"]["ok"] is True
    assert checks["spool"]["ok"] is False and "is not writable" in checks["spool"]["detail"]
    assert str(layout.tmp) in checks["spool"]["detail"]
    assert checks["broker"]["ok"] is False
    assert "did not answer PING" in checks["broker"]["detail"]
    assert "secret" not in checks["broker"]["detail"]  # the password is not shown
    assert (
        checks["model"]["ok"] is False and "[model] bundle is not set" in checks["model"]["detail"]
    )
    assert metrics.status_code == 200


def test_readyz_200_and_healthz_when_every_check_passes(
    config: NodeConfig, db: StateDB, tmp_path: Path
) -> None:
    from model.bundle import init_untrained

    bundle = tmp_path / "bundle"
    init_untrained(bundle)
    config = NodeConfig(node=config.node, model=ModelSettings(bundle=bundle))
    health = NodeHealth(config, scp_listening=lambda: 11112, workers=lambda: [])
    with TestClient(create_app(view_of(config, db, health))) as client:
        ready = client.get("/readyz")
        assert client.get("/healthz").json() == {"status": "ok"}
    assert ready.status_code == 200, ready.json()
    assert set(ready.json()["checks"]) == {"scp", "spool", "broker", "model", "workers"}
    # A changed weights file is noticed (its mtime and size changed) and reported.
    weights = next(p for p in bundle.rglob("*") if p.is_file() and p.name != "bundle.json")
    with weights.open("ab") as out:
        out.write(b"tampered")
    model = health().checks["model"]
    assert model.ok is False and "sha256" in model.detail.lower()
    # A dead local worker makes the node not ready, with the worker named.
    health.workers = lambda: ["local worker (infer) exited with 1; being restarted"]
    workers = health().checks["workers"]
    assert workers.ok is False
    assert workers.detail == "local worker (infer) exited with 1; being restarted"


def test_watermark_is_cached_and_off_at_zero(tmp_path: Path) -> None:
    now = [0.0]
    free = [100]
    calls = []

    def usage(path: object) -> DiskUsage:
        calls.append(path)
        return DiskUsage(free=free[0], size=1000)

    mark = Watermark(tmp_path, 50, clock=lambda: now[0], usage=usage)
    assert mark.below() is False
    free[0] = 10
    assert mark.below() is False  # within the cache second: statvfs not read again
    now[0] = 1.5
    assert mark.below() is True
    assert len(calls) == 2
    assert Watermark(tmp_path, 0, usage=usage).below() is False
    assert len(calls) == 2


def test_scp_answers_a700_below_the_watermark(tmp_path: Path, running_scps: object) -> None:
    from pynetdicom import AE

    from tests.factories import make_mg

    seen: list[tuple[str, int, int]] = []
    settings = NodeSettings(port=0, spool_dir=tmp_path / "spool", min_free_mb=10**12)
    scp = running_scps(settings, store_observer=lambda *args: seen.append(args))  # type: ignore[operator]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MG_FOR_PRESENTATION)
    mg = make_mg(seed=1)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MOLSUB")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(mg)
    finally:
        assoc.release()
    assert status.Status == 0xA700
    assert status.ErrorComment == "spool filesystem below its free-space watermark"
    assert scp.db.count_instances() == 0
    assert not list((tmp_path / "spool" / "studies").rglob("*.dcm"))
    assert seen and seen[0][0] == MG_FOR_PRESENTATION and seen[0][1] == 0xA700 and seen[0][2] > 0


def test_http_server_serves_and_refuses_a_port_in_use(config: NodeConfig, db: StateDB) -> None:
    import urllib.request

    health = NodeHealth(config, scp_listening=lambda: None)
    server = HttpServer(create_app(view_of(config, db, health)), "127.0.0.1", 0)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            other = HttpServer(create_app(view_of(config, db, health)), "127.0.0.1", port)
            with pytest.raises(HttpServerError, match=rf"^\[http\] port {port}: address in use$"):
                other.start()
    finally:
        server.stop()


def test_min_free_mb_is_read_and_validated() -> None:
    from molsub.config import ConfigError, load_config

    assert load_config(None, env={}).node.min_free_mb == 1024
    assert load_config(None, env={"MOLSUB_NODE_MIN_FREE_MB": "0"}).node.min_free_mb == 0
    with pytest.raises(ConfigError, match=r"\[node\] min_free_mb.*>= 0 MB"):
        load_config(None, env={"MOLSUB_NODE_MIN_FREE_MB": "-1"})
