"""The whole node as real processes: `molsub serve` (+ workers), dcmtk peers, Redis.

storescu sends a SYNTHETIC study (SEG first, images in a second association); dcmtk's storescp
is the PACS that receives SR, SCs and heatmap SEGs. Embedded broker and Redis modes run the same
tasks; in Redis mode the workers are separate `molsub worker` processes and the destination is
down at first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from model.bundle import init_untrained
from molsub.synth import write_synthetic_studies
from tests.dicom_peers import echoscu, free_port, storescu
from tests.redis_server import redis_server, stop_process, wait_for
from tests.validators import dciodvfy_errors

pytestmark = pytest.mark.slow

SR, SC, SEG = (
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.66.4",
)
MOLSUB = [sys.executable, "-m", "molsub.cli"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("node-bundle") / "bundle"
    init_untrained(out)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - SynthStudy
    return write_synthetic_studies(tmp_path_factory.mktemp("node-study"), patients=1, seed=7)[0]


def write_config(tmp: Path, bundle: Path, dest_port: int, **queue: object) -> Path:
    lines = [
        "[node]",
        'ae_title = "MOLSUB"',
        'allowed_calling_aets = ["TESTSCU"]',
        f'spool_dir = "{tmp / "spool"}"',
        "study_timeout_s = 600",
        "[model]",
        f'bundle = "{bundle}"',
        'device = "cpu"',
        "[queue]",
        *(f"{key} = {value!r}" for key, value in queue.items()),
        "[[destinations]]",
        'name = "pacs"',
        'ae_title = "PACS"',
        'host = "127.0.0.1"',
        f"port = {dest_port}",
    ]
    path = tmp / "node.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


@contextmanager
def storescp(port: int, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """dcmtk's storescp as the PACS; one file per received object."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(folder), "-uf", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def process(argv: list[str], log: Path, env: dict[str, str] | None = None):  # noqa: ANN201
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=60)


@contextmanager
def node(config: Path, log: Path, *args: str, env: dict[str, str] | None = None):  # noqa: ANN201
    """`molsub serve` on a free port; yields (process, port)."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [*MOLSUB, "serve", "--config", str(config), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), f"node did not start: {line!r}\n{log.read_text()}"
        yield proc, int(line.split()[1].rsplit(":", 1)[1])
    finally:
        stop_process(proc, timeout_s=90)


def received(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in folder.glob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - a file storescp is still writing
            continue
        ds.filename = str(path)
        found.setdefault(str(ds.SOPClassUID), []).append(ds)
    return found


def complete(folder: Path) -> dict[str, list[pydicom.Dataset]] | None:
    objs = received(folder)
    counts = (len(objs.get(SR, [])), len(objs.get(SC, [])), len(objs.get(SEG, [])))
    return objs if counts == (1, 2, 2) else None


def send_seg_first(port: int, study) -> None:  # noqa: ANN001
    for files in ([study.seg_path], list(study.image_paths.values())):
        proc = storescu(port, files)
        assert proc.returncode == 0, proc.stderr


def test_embedded_node_end_to_end_then_resend(tmp_path: Path, bundle: Path, study) -> None:  # noqa: ANN001
    dest_port = free_port()
    config = write_config(tmp_path, bundle, dest_port, broker_url="")
    pacs = tmp_path / "pacs"
    log = tmp_path / "node.log"
    with storescp(dest_port, pacs), node(config, log) as (proc, port):
        assert echoscu(port).returncode == 0
        send_seg_first(port, study)
        objs = wait_for(lambda: complete(pacs), 300, "SR, 2 SC and 2 heatmap SEG at the PACS")
        sr = objs[SR][0]
        assert sr.StudyInstanceUID == study.study_uid
        assert dciodvfy_errors(Path(sr.filename)) == []
        units = subprocess.run(
            [*MOLSUB, "units", "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert study.seg_uid in units.stdout and "enqueued" in units.stdout
        first = {ds.SOPInstanceUID for v in objs.values() for ds in v}
        for path in pacs.glob("*"):
            path.unlink()
        resend = subprocess.run(
            [*MOLSUB, "resend", study.seg_uid, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resend.returncode == 0, resend.stderr
        again = wait_for(lambda: complete(pacs), 60, "resent objects")
        assert {ds.SOPInstanceUID for v in again.values() for ds in v} == first
        proc.terminate()
        assert proc.wait(timeout=90) == 0


def test_redis_mode_separate_workers_destination_down_at_first(
    tmp_path: Path,
    bundle: Path,
    study,  # noqa: ANN001
) -> None:
    dest_port = free_port()
    config = write_config(
        tmp_path,
        bundle,
        dest_port,
        delivery_retry_base_s=1.0,
        delivery_retry_max_s=4.0,
        delivery_max_retries=30,
    )
    pacs = tmp_path / "pacs"
    with redis_server(tmp_path / "redis") as url:
        env = {"MOLSUB_QUEUE_BROKER_URL": url}  # the broker comes from the environment
        worker = [*MOLSUB, "worker", "--config", str(config), "--queues"]
        with (
            node(config, tmp_path / "node.log", "--no-workers", env=env) as (_, port),
            process([*worker, "prepare,deliver"], tmp_path / "w1.log", env),
            process([*worker, "infer"], tmp_path / "w2.log", env),
        ):
            send_seg_first(port, study)
            log = tmp_path / "w1.log"
            # The PACS is down: deliver fails and is retried with backoff (Celery logs it).
            wait_for(lambda: " retry: " in log.read_text(), 300, "a failed delivery retried")
            assert not pacs.exists()
            with storescp(dest_port, pacs):
                objs = wait_for(lambda: complete(pacs), 300, "results once the PACS is up")
            assert objs[SR][0].StudyInstanceUID == study.study_uid


def test_serve_check_and_bad_config(tmp_path: Path, bundle: Path) -> None:
    config = write_config(tmp_path, bundle, 11113, broker_url="")
    ok = subprocess.run(
        [*MOLSUB, "serve", "--check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "destination 'pacs'" in ok.stdout
    bad = subprocess.run(
        [*MOLSUB, "serve", "--check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MOLSUB_NODE_PORT": "70000"},
    )
    assert bad.returncode == 2 and "port" in bad.stderr
