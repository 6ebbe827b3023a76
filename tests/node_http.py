"""A real node with its HTTP server on, after a study that ended done and one that ended failed.

``http_node`` (module-scoped; registered in tests/conftest.py) starts `molsub serve` (embedded
broker, its own Celery workers, an UNTRAINED bundle, a folder destination, [http] on a free
loopback port with the token ``TOKEN``) and sends with dcmtk's storescu:
- one MG the SCP refuses (no Pixel Data: 0xC002), so that a failure status is counted;
- a SYNTHETIC study (CC + MLO + lesion SEG, molsub.synth) that ends ``done``;
- an MG and a SEG whose only segment is empty: accepted by the SCP, ``failed`` in prepare
  (permanent, with the reason).
It waits (bounded) until both units are final and the node's metrics have counted them, then
yields an ``HttpNode``. The node is stopped (SIGTERM) after the module's tests.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.units import UnitState
from molsub.launch import free_port, running_node, wait_for

TOKEN = "test-token-0123456789abcdef"
START_TIMEOUT_S = 180  # torch import and the bundle's hashing on a loaded 2-core machine
UNITS_TIMEOUT_S = 600  # the untrained model on CPU, with other tests running beside
FINAL = (UnitState.DONE, UnitState.FAILED)
REFUSED_STATUS = "0xC002"  # scp/validate.py Check.PIXEL_DATA


@dataclass(frozen=True)
class HttpNode:
    """What the tests need of the running node."""

    base_url: str  # http://127.0.0.1:PORT (no trailing slash)
    token: str
    spool: Path
    done_unit: str  # the unit id (its SEG's SOP Instance UID) that ended done
    failed_unit: str  # the one that ended failed (empty segment, in prepare)
    log: Path  # the node's and its workers' stderr
    config: Path  # its node.toml
    dicom_port: int
    folder: Path  # the folder destination
    bundle: Path
    refused_status: str = REFUSED_STATUS  # the status the refused MG got
    metrics_before: str = ""  # /metrics as scraped before anything was sent

    def get(self, path: str, timeout_s: float = 10) -> tuple[int, str, dict[str, str]]:
        """GET ``path``: (status, body, headers), also for 4xx/5xx answers."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout_s) as resp:
                return resp.status, resp.read().decode("utf-8"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8"), dict(exc.headers)


def _metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _write_inputs(folder: Path) -> tuple[list[Path], list[Path], list[Path], str, str]:
    """(refused, done study, failed study) files, and the done and failed units' SEG UIDs."""
    from molsub.synth import write_synthetic_studies
    from tests.factories import disk_mask, make_mg, make_seg

    study = write_synthetic_studies(folder / "synth", patients=1, seed=11)[0]
    refused = make_mg(seed=3)
    del refused.PixelData
    refused_path = folder / "refused-MG.dcm"
    refused.save_as(refused_path, enforce_file_format=True)
    mg = make_mg(seed=5)
    seg = make_seg([mg], [disk_mask((256, 200), (90, 90), 15)])
    seg.PixelData = bytes(len(seg.PixelData))  # the one segment is empty: prepare fails
    failed = [folder / "empty-MG.dcm", folder / "empty-SEG.dcm"]
    mg.save_as(failed[0], enforce_file_format=True)
    seg.save_as(failed[1], enforce_file_format=True)
    return [refused_path], study.paths, failed, study.seg_uid, str(seg.SOPInstanceUID)


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def http_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpNode]:
    from common.settings import (
        Destination,
        HttpSettings,
        ModelSettings,
        NodeConfig,
        NodeSettings,
    )
    from model.bundle import init_untrained
    from molsub import launch
    from scp.state import unit_status
    from tests.dicom_peers import storescu

    tmp = tmp_path_factory.mktemp("http-node")
    bundle = tmp / "bundle"
    init_untrained(bundle)
    refused, done_files, failed_files, done_unit, failed_unit = _write_inputs(tmp / "inputs")
    http_port = free_port()
    spool, folder = tmp / "spool", tmp / "folder"
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool, study_timeout_s=600),
        model=ModelSettings(bundle=bundle, device="cpu"),
        http=HttpSettings(host="127.0.0.1", port=http_port, token=TOKEN),
        destinations=(Destination("copy", folder=folder),),
    )
    path = launch.write_config(config, tmp / "node.toml")
    log = tmp / "node.log"
    env = dict(os.environ)
    with running_node(
        path, log, "--http-port", str(http_port), env=env, timeout_s=START_TIMEOUT_S
    ) as (_, listening):
        base_url = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
            before = resp.read().decode("utf-8")
        node = HttpNode(
            base_url=base_url,
            token=TOKEN,
            spool=spool,
            done_unit=done_unit,
            failed_unit=failed_unit,
            log=log,
            config=path,
            dicom_port=listening.port,
            folder=folder,
            bundle=bundle,
            metrics_before=before,
        )
        try:
            storescu(listening.port, refused)  # answered 0xC002 (the metrics count it)
            for files in (done_files, failed_files):
                sent = storescu(listening.port, files)
                assert sent.returncode == 0, sent.stdout + sent.stderr

            def final() -> bool:
                states = {u.unit_id: u.state for u in unit_status(spool)}
                return all(states.get(u) in FINAL for u in (done_unit, failed_unit))

            wait_for(final, UNITS_TIMEOUT_S, "both units done or failed", every_s=1.0)
            states = {u.unit_id: u.state for u in unit_status(spool)}
            assert states[done_unit] == UnitState.DONE, states
            assert states[failed_unit] == UnitState.FAILED, states

            def counted() -> bool:
                status, text, _ = node.get("/metrics")
                if status != 200:
                    return False
                ended = _metric_value(text, "molsub_stage_seconds_count", {"stage": "end_to_end"})
                failures = _metric_value(text, "molsub_unit_failures_total", {})
                return bool(ended) and bool(failures)

            wait_for(counted, 30, "the node's metrics to count both units", every_s=0.5)
        except BaseException:
            print(f"===== node log (last lines) =====\n{_tail(log)}")
            raise
        yield node
