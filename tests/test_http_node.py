"""The node's HTTP endpoints against a real `molsub serve` (tests/node_http.py): health probes,
readiness, and the Prometheus metrics after a study that ended done, one that ended failed
and an object the SCP refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from model.bundle_info import parse_bundle_json
from molsub.launch import MOLSUB
from tests.node_http import HttpNode

pytestmark = pytest.mark.slow

PROMTOOL = "/usr/bin/promtool"
REQUIRE_PROMETHEUS_ENV = "MOLSUB_REQUIRE_PROMETHEUS"
STAGES = ("receive_to_ready", "prepare", "infer", "deliver", "end_to_end")


@pytest.fixture(scope="module")
def scraped(http_node: HttpNode) -> str:
    status, text, headers = http_node.get("/metrics")
    assert status == 200, text
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    return text


@pytest.fixture(scope="module")
def samples(scraped: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(scraped) for s in family.samples]


def value(samples: list[Sample], name: str, /, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


def test_healthz_answers_ok(http_node: HttpNode) -> None:
    status, body, headers = http_node.get("/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    assert headers["cache-control"] == "no-store"  # the app's security headers apply


def test_readyz_is_ready_with_every_check_ok(http_node: HttpNode) -> None:
    status, body, _ = http_node.get("/readyz")
    doc = json.loads(body)
    assert status == 200, doc
    assert doc["ready"] is True
    assert set(doc["checks"]) == {"scp", "spool", "broker", "model", "workers"}
    assert all(check["ok"] for check in doc["checks"].values()), doc
    assert f":{http_node.dicom_port}" in doc["checks"]["scp"]["detail"]
    assert "weights verified" in doc["checks"]["model"]["detail"]


def test_the_counters_moved_from_zero(samples: list[Sample], http_node: HttpNode) -> None:
    """Before the studies: no unit, nothing received; after: the two units and the objects."""
    before = [
        s
        for family in text_string_to_metric_families(http_node.metrics_before)
        for s in family.samples
    ]
    assert all(value(before, "molsub_units", state=state) == 0 for state in ("done", "failed"))
    assert value(before, "molsub_bytes_received_total") == 0
    assert not [s for s in before if s.name == "molsub_objects_received_total"]
    assert not [s for s in before if s.name == "molsub_stage_seconds_count"]
    assert value(samples, "molsub_bytes_received_total") > 0
    assert sum(s.value for s in samples if s.name == "molsub_objects_received_total") == 6


def test_units_per_state_end_at_one_done_and_one_failed(samples: list[Sample]) -> None:
    assert value(samples, "molsub_units", state="done") == 1
    assert value(samples, "molsub_units", state="failed") == 1
    for state in ("waiting", "ready", "enqueued", "prepared", "inferred", "timed_out"):
        assert value(samples, "molsub_units", state=state) == 0


def test_objects_received_count_success_and_the_refusal(
    samples: list[Sample], http_node: HttpNode
) -> None:
    mg = "DigitalMammographyXRayImageStorageForPresentation"
    # 2 synthetic MG + 1 MG of the failed unit stored; the one without Pixel Data refused.
    assert value(samples, "molsub_objects_received_total", sop_class=mg, status="0x0000") == 3
    seg = "SegmentationStorage"
    assert value(samples, "molsub_objects_received_total", sop_class=seg, status="0x0000") == 2
    refused = value(
        samples, "molsub_objects_received_total", sop_class=mg, status=http_node.refused_status
    )
    assert refused == 1
    assert value(samples, "molsub_bytes_received_total") > 1_000_000  # 2 MG of 1280x1024


def test_stage_seconds_observed_once_per_stage(samples: list[Sample]) -> None:
    for stage in STAGES:
        assert value(samples, "molsub_stage_seconds_count", stage=stage) >= 1, stage
    end_to_end = value(samples, "molsub_stage_seconds_sum", stage="end_to_end")
    parts = sum(
        value(samples, "molsub_stage_seconds_sum", stage=s) for s in STAGES if s != "end_to_end"
    )
    assert end_to_end >= parts * 0.99 > 0


def test_failure_counted_in_prepare_as_permanent(samples: list[Sample]) -> None:
    assert value(samples, "molsub_unit_failures_total", stage="prepare", kind="permanent") == 1


def test_deliveries_and_model_info(samples: list[Sample], http_node: HttpNode) -> None:
    assert value(samples, "molsub_deliveries_total", destination="copy", outcome="sent") >= 1
    info = parse_bundle_json(http_node.bundle)
    labels = {
        "name": info.name,
        "version": info.version,
        "digest": info.digest,
        "untrained": "true",
    }
    assert value(samples, "molsub_model_info", **labels) == 1


def test_queue_spool_associations_and_ready(samples: list[Sample]) -> None:
    for queue in ("prepare", "infer", "deliver"):
        assert value(samples, "molsub_queue_depth", queue=queue) == 0  # all processed
    free = value(samples, "molsub_spool_free_bytes")
    assert 0 < free <= value(samples, "molsub_spool_size_bytes")
    assert value(samples, "molsub_spool_min_free_bytes") == 1024 * 1024 * 1024
    assert value(samples, "molsub_associations_active") == 0
    assert value(samples, "molsub_ready") == 1


def test_promtool_check_metrics_passes(scraped: str, tmp_path: Path) -> None:
    promtool = PROMTOOL if Path(PROMTOOL).exists() else shutil.which("promtool")
    if promtool is None:
        if os.environ.get(REQUIRE_PROMETHEUS_ENV):
            pytest.fail(f"promtool not found and {REQUIRE_PROMETHEUS_ENV} is set")
        pytest.skip("promtool not installed (Debian package prometheus)")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=scraped,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_second_node_on_the_same_http_port_exits_naming_it(
    http_node: HttpNode, tmp_path: Path
) -> None:
    port = int(http_node.base_url.rpartition(":")[2])
    argv = [*MOLSUB, "serve", "--config", str(http_node.config), "--no-workers"]
    check = subprocess.run(
        [*argv, "--check", "--http-port", "0"], capture_output=True, text=True, timeout=120
    )
    assert "status page and metrics: off ([http] port = 0)" in check.stdout, check.stdout
    env = {**os.environ, "MOLSUB_NODE_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.run(
        [*argv, "--port", "0", "--http-port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"[http] port {port}: address in use" in proc.stderr
    assert "listening" not in proc.stdout  # never announced as up
