"""The worker's own metrics (worker/queue/metrics.py): counts, times and busy per stage task,
and `molsub worker --metrics-port` serving them.

The tasks run in this process (Celery's ``apply``: retries run at once) with stand-in model
stages (tests/worker_standins.py) and a registry of their own; the served metrics come from a
real `molsub worker` process, parsed with prometheus_client's parser.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from common.logs import LOG_FORMAT_ENV
from common.progress import ProgressFiles
from common.settings import (
    Destination,
    LogFormat,
    LogSettings,
    ModelSettings,
    NodeConfig,
    NodeSettings,
    QueueSettings,
)
from common.units import UnitState
from molsub import launch
from molsub.launch import MOLSUB, free_port, stop_process, wait_for
from tests import worker_standins as standins
from tests.factories import disk_mask, make_mg, make_seg
from worker.queue.app import RETRY_EXCEPTIONS, Stage, make_celery_app
from worker.queue.metrics import METRICS_PORT_ENV, STAGES, WorkerMetrics

START_TIMEOUT_S = 90


def write_unit(spool: Path) -> tuple[str, str, list[str]]:
    """An MG CC + MLO pair and their lesion SEG in the spool, as the SCP leaves them."""
    cc = make_mg(view="CC", seed=4)
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=5)
    seg = make_seg([cc, mlo], [disk_mask((256, 200), (90, 90), 15)] * 2)
    folder = spool / "studies" / str(cc.StudyInstanceUID)
    folder.mkdir(parents=True)
    paths = []
    for ds in (seg, cc, mlo):
        paths.append(str(folder / f"{ds.SOPInstanceUID}.dcm"))
        ds.save_as(paths[-1], enforce_file_format=True)
    return str(seg.SOPInstanceUID), paths[0], paths[1:]


def app_for(
    tmp: Path,
    metrics: WorkerMetrics,
    *,
    destination: Destination | None = None,
    queue: QueueSettings | None = None,
    prepare_error: BaseException | None = None,
) -> tuple[Celery, NodeConfig]:
    """The node's Celery app with stand-in stages, recording into ``metrics``; prepare raises
    ``prepare_error`` when given."""
    config = NodeConfig(
        node=NodeSettings(spool_dir=tmp / "spool"),
        model=ModelSettings(bundle=tmp / "no-bundle-with-standins"),
        queue=queue or QueueSettings(),
        destinations=(destination or Destination("copy", folder=tmp / "out"),),
    )
    pipeline = standins.pipeline(standins.KINDS, config)
    if prepare_error is not None:

        def failing(*_: Any) -> Any:  # noqa: ANN401 - the stage's signature
            raise prepare_error

        pipeline = replace(pipeline, prepare_stage=failing)
    return make_celery_app(config, pipeline=pipeline, metrics=metrics), config


def new_metrics() -> WorkerMetrics:
    return WorkerMetrics(CollectorRegistry(), retry_exceptions=RETRY_EXCEPTIONS)


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def counts(metrics: WorkerMetrics, stage: str) -> dict[str, float]:
    return {
        outcome: value(metrics, "molsub_worker_tasks_total", stage=stage, outcome=outcome)
        for outcome in ("success", "retry", "failure")
    }


def run_chain(app: Celery, unit_id: str, seg: str, images: list[str]) -> dict[str, Any]:
    """prepare -> infer -> deliver in this process, each task by ``apply``."""
    prepared = app.tasks[Stage.PREPARE.task_name].apply(args=(unit_id, seg, images)).get()
    inferred = app.tasks[Stage.INFER.task_name].apply(args=(prepared,)).get()
    return app.tasks[Stage.DELIVER.task_name].apply(args=(inferred,)).get()


def test_every_series_is_there_at_zero() -> None:
    metrics = new_metrics()
    for stage in STAGES:
        assert counts(metrics, stage) == {"success": 0, "retry": 0, "failure": 0}
        assert metrics.registry.get_sample_value("molsub_worker_busy", {"stage": stage}) == 0
        count = metrics.registry.get_sample_value(
            "molsub_worker_task_seconds_count", {"stage": stage}
        )
        assert count == 0


def test_a_unit_through_the_stages_counts_one_success_each(tmp_path: Path) -> None:
    metrics = new_metrics()
    app, config = app_for(tmp_path, metrics)
    unit_id, seg, images = write_unit(config.node.spool_dir)
    result = run_chain(app, unit_id, seg, images)
    assert result["state"] == UnitState.DONE
    for stage in STAGES:
        assert counts(metrics, stage) == {"success": 1, "retry": 0, "failure": 0}, stage
        assert value(metrics, "molsub_worker_task_seconds_count", stage=stage) == 1
        assert value(metrics, "molsub_worker_task_seconds_sum", stage=stage) > 0
        assert value(metrics, "molsub_worker_busy", stage=stage) == 0
    # A message delivered again after the unit ended is skipped: not a failure.
    app.tasks[Stage.PREPARE.task_name].apply(args=(unit_id, seg, images))
    assert counts(metrics, "prepare") == {"success": 2, "retry": 0, "failure": 0}


def test_a_permanent_failure_counts_one_failure(tmp_path: Path) -> None:
    metrics = new_metrics()
    app, config = app_for(tmp_path, metrics)
    unit_id, seg, images = write_unit(config.node.spool_dir)
    Path(seg).write_bytes(b"not DICOM")
    app.tasks[Stage.PREPARE.task_name].apply(args=(unit_id, seg, images))
    assert counts(metrics, "prepare") == {"success": 0, "retry": 0, "failure": 1}
    progress = ProgressFiles(config.node.spool_dir).read(unit_id)
    assert progress is not None and progress.state == UnitState.FAILED


def test_transient_failures_count_retries_then_the_failure(tmp_path: Path) -> None:
    """A transient error (the disk, memory) is retried stage_max_retries times, then ends the
    unit: each retry counted as retry, the last attempt as failure, each attempt timed."""
    metrics = new_metrics()
    queue = QueueSettings(stage_max_retries=2, delivery_retry_base_s=1, delivery_retry_max_s=1)
    app, config = app_for(tmp_path, metrics, queue=queue, prepare_error=OSError("disk hiccup"))
    unit_id, seg, images = write_unit(config.node.spool_dir)
    app.tasks[Stage.PREPARE.task_name].apply(args=(unit_id, seg, images))
    assert counts(metrics, "prepare") == {"success": 0, "retry": 2, "failure": 1}
    assert value(metrics, "molsub_worker_task_seconds_count", stage="prepare") == 3
    assert value(metrics, "molsub_worker_busy", stage="prepare") == 0


def test_a_destination_down_counts_delivery_retries_then_the_failure(tmp_path: Path) -> None:
    """Deliver to a DICOM peer that is not there: one retry, then the unit fails (results kept
    for `molsub resend`) and the last attempt counts as failure although the task returned."""
    metrics = new_metrics()
    down = Destination("pacs", ae_title="PACS", host="127.0.0.1", port=free_port(),
                       acse_timeout_s=2)  # fmt: skip
    queue = QueueSettings(delivery_max_retries=1, delivery_retry_base_s=1, delivery_retry_max_s=1)
    app, config = app_for(tmp_path, metrics, destination=down, queue=queue)
    unit_id, seg, images = write_unit(config.node.spool_dir)
    result = run_chain(app, unit_id, seg, images)
    assert result["state"] == UnitState.FAILED
    assert counts(metrics, "deliver") == {"success": 0, "retry": 1, "failure": 1}
    assert counts(metrics, "infer")["success"] == 1


def test_gpu_memory_only_where_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torch in the process, or torch without CUDA initialised: no series. With CUDA in use
    (a torch stand-in here; the machine has no GPU), one series per device."""
    metrics = new_metrics()
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    metrics.read_gpu_memory()
    cuda = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: False,
        device_count=lambda: 2,
        memory_allocated=lambda index: 1000 * (index + 1),
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    metrics.read_gpu_memory()
    exposed = {s.name for f in metrics.registry.collect() for s in f.samples}
    assert "molsub_worker_gpu_memory_bytes" not in exposed
    cuda.is_initialized = lambda: True
    with metrics.task("infer"):
        pass
    assert value(metrics, "molsub_worker_gpu_memory_bytes", device="cuda:0") == 1000
    assert value(metrics, "molsub_worker_gpu_memory_bytes", device="cuda:1") == 2000


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return None


def test_molsub_worker_serves_its_metrics_and_logs_json(tmp_path: Path) -> None:
    """`molsub worker --metrics-port P` on the embedded broker, [logging] format = json in its
    node.toml (no flag, no environment): /metrics parses, with molsub_worker_info; every line
    it writes, Celery's included, is JSON."""
    config = NodeConfig(
        node=NodeSettings(spool_dir=tmp_path / "spool"),
        model=ModelSettings(device="cpu"),
        logging=LogSettings(format=LogFormat.JSON),
    )
    toml = launch.write_config(config, tmp_path / "node.toml")
    port = free_port()
    log_path = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if k != LOG_FORMAT_ENV}
    argv = [*MOLSUB, "worker", "--config", str(toml), "--queues", "deliver"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--metrics-port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        text = wait_for(lambda: scrape(port), START_TIMEOUT_S, "the worker's /metrics")
        wait_for(lambda: b"ready." in log_path.read_bytes(), START_TIMEOUT_S, "worker ready")
        assert proc.poll() is None, log_path.read_text()
    finally:
        stop_process(proc, timeout_s=20)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["molsub_worker_info"].samples
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels["queues"] == "deliver" and info[0].labels["device"] == "cpu"
    assert info[0].labels["hostname"]
    tasks = {
        (s.labels["stage"], s.labels["outcome"]): s.value
        for s in families["molsub_worker_tasks"].samples
        if s.name == "molsub_worker_tasks_total"
    }
    assert tasks[("deliver", "success")] == 0 and len(tasks) == 9
    assert {"molsub_worker_task_seconds", "molsub_worker_busy"} <= set(families)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert any(line["logger"].startswith("celery") for line in parsed), lines
    assert any(line["message"].endswith("ready.") for line in parsed), lines


def test_metrics_port_from_flag_else_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from molsub.cli import _metrics_port, build_parser
    from molsub.config import ConfigError

    parser = build_parser()
    monkeypatch.setenv(METRICS_PORT_ENV, "9101")
    assert _metrics_port(parser.parse_args(["worker"])) == 9101
    assert _metrics_port(parser.parse_args(["worker", "--metrics-port", "9200"])) == 9200
    monkeypatch.delenv(METRICS_PORT_ENV)
    assert _metrics_port(parser.parse_args(["worker"])) == 0
    monkeypatch.setenv(METRICS_PORT_ENV, "ninety")
    with pytest.raises(ConfigError, match=METRICS_PORT_ENV):
        _metrics_port(parser.parse_args(["worker"]))
