"""The whole node as real processes, with the real (untrained) model and real results.

Peers are dcmtk: storescu/echoscu send, storescp is the PACS that receives the SR, the Grad-CAM
Secondary Captures and the heatmap SEGs. `molsub serve` runs as a subprocess; in embedded mode
it starts its own Celery workers on the filesystem broker, in Redis mode the workers are two
separate `molsub worker` processes on a private redis-server. The study is SYNTHETIC
(molsub.synth) and the bundle UNTRAINED (model.bundle.init_untrained): the tests check plumbing
and DICOM, not predictions. Bundle and study are module-scoped to keep the file within minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from model.bundle import init_untrained
from molsub import launch
from molsub.launch import MOLSUB, redis_server, stop_process, wait_for
from molsub.synth import SynthStudy, write_synthetic_studies
from tests.dicom_peers import SCU_AET, echoscu, free_port, start_storescp, storescu
from tests.validators import dciodvfy_errors

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
EXPECTED = {SR_CLASS: 1, SC_CLASS: 2, SEG_CLASS: 2}  # 1 ROI, CC + MLO: 1 SR, 2 SC, 2 SEG
PACS_AET = "PACS"
START_TIMEOUT_S = 120  # torch import on a loaded 2-core machine
RESULTS_TIMEOUT_S = 240
TERM_TIMEOUT_S = 60
CLI_TIMEOUT_S = 120


# ------------------------------------------------------------------------------------------
# Shared inputs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One UNTRAINED bundle for every test: building it costs seconds of CPU."""
    out = tmp_path_factory.mktemp("e2e-bundle") / "bundle"
    init_untrained(out)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SynthStudy:
    """One SYNTHETIC patient (MG CC + MLO and a lesion SEG)."""
    return write_synthetic_studies(tmp_path_factory.mktemp("e2e-study"), patients=1, seed=11)[0]


# ------------------------------------------------------------------------------------------
# Helpers: config, processes, peers


def write_config(
    tmp: Path,
    bundle: Path,
    *,
    dest_port: int,
    folder: Path | None = None,
    node_port: int = 11112,
    queue: QueueSettings | None = None,
) -> Path:
    """A node.toml: spool in tmp, the bundle, storescp as PACS (+ a folder destination)."""
    destinations = [Destination("pacs", ae_title=PACS_AET, host="127.0.0.1", port=dest_port)]
    if folder is not None:
        destinations.append(Destination("copy", folder=folder))
    config = NodeConfig(
        node=NodeSettings(
            ae_title="MOLSUB",
            port=node_port,
            allowed_calling_aets=(SCU_AET,),
            spool_dir=tmp / "spool",
            study_timeout_s=600,
        ),
        model=ModelSettings(bundle=bundle, device="cpu"),
        queue=queue or QueueSettings(),
        destinations=tuple(destinations),
    )
    return launch.write_config(config, tmp / "node.toml")


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@contextmanager
def logs_on_failure(*logs: Path) -> Iterator[None]:
    """Print the processes' logs when something fails: pytest shows them with the failure."""
    try:
        yield
    except BaseException:
        for log in logs:
            print(f"===== {log.name} (last lines) =====\n{tail(log)}")
        raise


@contextmanager
def storescp(port: int, folder: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """dcmtk's storescp as the PACS; files named by SOP Instance UID, so a resend overwrites."""
    try:
        proc = start_storescp(folder, port, aet=PACS_AET, log=log)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}: {tail(log)}") from None
    try:
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def background(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process with its output in ``log``, stopped (SIGTERM, then kill) on the way out."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=TERM_TIMEOUT_S)


@contextmanager
def node(
    config: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`molsub serve --port 0` with stderr in ``log``; yields (process, port it listens on)."""
    environ = {**os.environ, **(env or {})}
    with launch.running_node(config, log, *args, env=environ, timeout_s=START_TIMEOUT_S) as (
        proc,
        listening,
    ):
        assert listening.ae_title == "MOLSUB", listening
        yield proc, listening.port


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MOLSUB, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def send_seg_first(port: int, study: SynthStudy) -> None:
    """The SEG in one association, both images in a second: the unit completes across them."""
    for files in ([study.seg_path], list(study.image_paths.values())):
        proc = storescu(port, files)
        assert proc.returncode == 0, f"storescu failed:\n{proc.stdout}\n{proc.stderr}"


def received(folder: Path) -> dict[str, dict[str, Path]]:
    """SOP Class UID -> {SOP Instance UID: file} for every complete DICOM file in ``folder``."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        except Exception:  # a file the receiver is still writing
            continue
        found.setdefault(sop_class, {})[sop_uid] = path
    return found


def complete(folder: Path) -> dict[str, dict[str, Path]] | None:
    """The received objects once exactly the expected SR, SCs and heatmap SEGs are there."""
    objs = received(folder)
    counts = {cls: len(objs.get(cls, {})) for cls in EXPECTED}
    return objs if counts == EXPECTED else None


def all_uids(objs: dict[str, dict[str, Path]]) -> set[str]:
    return {uid for by_uid in objs.values() for uid in by_uid}


# ------------------------------------------------------------------------------------------
# 1 and 3: embedded mode, one run shared by the end-to-end checks and the resend


@dataclass
class EmbeddedRun:
    """What one embedded-mode node run produced, for the tests to judge."""

    config: Path
    pacs: Path
    folder: Path
    logs: tuple[Path, ...]
    echo: subprocess.CompletedProcess[str]
    pacs_objects: dict[str, dict[str, Path]]
    units: subprocess.CompletedProcess[str]
    exit_code: int | None
    exit_s: float
    seconds_to_results: float


@pytest.fixture(scope="module")
def embedded_run(
    tmp_path_factory: pytest.TempPathFactory, bundle: Path, study: SynthStudy
) -> Iterator[EmbeddedRun]:
    """Node on the embedded broker, SEG then images by storescu, results at storescp.

    storescp stays up for the module (the resend test sends to it again); the node is stopped
    here, by SIGTERM, and how it exited is recorded.
    """
    tmp = tmp_path_factory.mktemp("embedded")
    dest_port = free_port()
    pacs, folder = tmp / "pacs", tmp / "folder"
    config = write_config(tmp, bundle, dest_port=dest_port, folder=folder)
    node_log, pacs_log = tmp / "node.log", tmp / "storescp.log"
    with logs_on_failure(node_log, pacs_log), storescp(dest_port, pacs, pacs_log):
        with node(config, node_log) as (proc, port):
            echo = echoscu(port)
            started = time.monotonic()
            send_seg_first(port, study)
            objs = wait_for(
                lambda: complete(pacs),
                RESULTS_TIMEOUT_S,
                "SR, 2 SC and 2 heatmap SEG at storescp",
                every_s=1.0,
            )
            seconds = time.monotonic() - started

            def unit_done() -> bool:
                listed = run_cli("units", "--config", str(config), "--json")
                return any(
                    u["unit_id"] == study.seg_uid and u["state"] == "done"
                    for u in json.loads(listed.stdout or "[]")
                )

            wait_for(unit_done, RESULTS_TIMEOUT_S, "the unit to be done", every_s=1.0)
            units = run_cli("units", "--config", str(config))
            stop_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code: int | None = proc.wait(timeout=TERM_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                exit_code = None  # the fixture's teardown kills it; the test reports it
            exit_s = time.monotonic() - stop_at
        print(f"embedded mode: results at the PACS {seconds:.1f} s after the first C-STORE")
        yield EmbeddedRun(
            config=config,
            pacs=pacs,
            folder=folder,
            logs=(node_log, pacs_log),
            echo=echo,
            pacs_objects=objs,
            units=units,
            exit_code=exit_code,
            exit_s=exit_s,
            seconds_to_results=seconds,
        )


@pytest.mark.slow
def test_embedded_mode_results_reach_pacs_and_folder(
    embedded_run: EmbeddedRun, study: SynthStudy
) -> None:
    run = embedded_run
    with logs_on_failure(*run.logs):
        assert run.echo.returncode == 0, run.echo.stdout + run.echo.stderr
        sr_path = next(iter(run.pacs_objects[SR_CLASS].values()))
        sr = pydicom.dcmread(sr_path)
        assert sr.StudyInstanceUID == study.study_uid
        assert sr.PatientID == study.patient_id
        assert dciodvfy_errors(sr_path) == []
        for by_uid in (run.pacs_objects[SC_CLASS], run.pacs_objects[SEG_CLASS]):
            for path in by_uid.values():
                assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == (
                    study.study_uid
                )
        # The folder destination got the very same objects, under the unit's folder.
        copies = received(run.folder / study.seg_uid)
        assert all_uids(copies) == all_uids(run.pacs_objects)


@pytest.mark.slow
def test_embedded_mode_units_lists_unit_done(embedded_run: EmbeddedRun, study: SynthStudy) -> None:
    units = embedded_run.units
    assert units.returncode == 0, units.stderr
    rows = [line.split() for line in units.stdout.splitlines()]
    row = next((r for r in rows if r and r[0] == study.seg_uid), None)
    assert row is not None, units.stdout
    assert row[1] == "done" and row[2] == "2/2", units.stdout


@pytest.mark.slow
def test_embedded_mode_node_stops_on_sigterm(embedded_run: EmbeddedRun) -> None:
    with logs_on_failure(*embedded_run.logs):
        assert embedded_run.exit_code == 0, (
            f"node did not exit cleanly within {TERM_TIMEOUT_S} s of SIGTERM "
            f"(exit code {embedded_run.exit_code})"
        )
        print(f"node exited {embedded_run.exit_s:.1f} s after SIGTERM")


@pytest.mark.slow
def test_resend_replaces_rather_than_duplicates(
    embedded_run: EmbeddedRun, study: SynthStudy
) -> None:
    run = embedded_run
    before = {path: path.stat().st_mtime_ns for path in run.pacs.iterdir() if path.is_file()}
    first = all_uids(run.pacs_objects)
    time.sleep(0.05)  # a new write gets a later mtime even on coarse clocks
    with logs_on_failure(*run.logs):
        resend = run_cli("resend", study.seg_uid, "--config", str(run.config))
        assert resend.returncode == 0, resend.stdout + resend.stderr
        assert "pacs: sent" in resend.stdout and "copy: sent" in resend.stdout, resend.stdout

        def rewritten() -> bool:
            return all(path.stat().st_mtime_ns > old for path, old in before.items())

        wait_for(rewritten, 60, "storescp to receive every object again")
        again = complete(run.pacs)
        assert again is not None, sorted(p.name for p in run.pacs.iterdir())
        assert all_uids(again) == first  # the same SOP Instance UIDs: replaced, no new objects
        assert len([p for p in run.pacs.iterdir() if p.is_file()]) == len(before)


# ------------------------------------------------------------------------------------------
# 2: Redis broker, separate worker processes, destination down at first


@pytest.mark.slow
def test_redis_mode_separate_workers_destination_down_at_first(
    tmp_path: Path, bundle: Path, study: SynthStudy
) -> None:
    dest_port = free_port()
    pacs, folder = tmp_path / "pacs", tmp_path / "folder"
    # The file says "embedded": the Redis URL comes from the environment override only.
    config = write_config(
        tmp_path,
        bundle,
        dest_port=dest_port,
        folder=folder,
        queue=QueueSettings(
            broker_url="",
            delivery_retry_base_s=1.0,
            delivery_retry_max_s=4.0,
            delivery_max_retries=10,
        ),
    )
    logs = {name: tmp_path / f"{name}.log" for name in ("node", "prepare-deliver", "infer")}
    pacs_log = tmp_path / "storescp.log"
    status_file = tmp_path / "spool" / "results" / study.seg_uid / "status.json"

    def pacs_failed_copy_sent() -> bool:
        """The first deliver attempt is over: the folder took the objects, the PACS did not."""
        if not status_file.is_file():
            return False
        dests = json.loads(status_file.read_text()).get("destinations", {})
        pacs_entry, copy_entry = dests.get("pacs", {}), dests.get("copy", {})
        return (
            pacs_entry.get("state") == "pending"
            and bool(pacs_entry.get("error"))
            and copy_entry.get("state") == "sent"
        )

    with logs_on_failure(*logs.values(), pacs_log), redis_server(tmp_path / "redis") as url:
        env = {"MOLSUB_QUEUE_BROKER_URL": url}
        worker = [*MOLSUB, "worker", "--config", str(config), "--queues"]
        with (
            node(config, logs["node"], "--no-workers", env=env) as (_, port),
            background([*worker, "prepare,deliver"], logs["prepare-deliver"], env),
            background([*worker, "infer"], logs["infer"], env),
        ):
            sent_at = time.monotonic()
            send_seg_first(port, study)
            # PACS down: the first delivery fails and is recorded; the folder copy goes out.
            wait_for(
                pacs_failed_copy_sent,
                RESULTS_TIMEOUT_S,
                "a failed delivery to the PACS and the folder copy",
                every_s=0.5,
            )
            assert complete(folder / study.seg_uid) is not None, "folder destination not served"
            assert not pacs.exists()
            time.sleep(max(0.0, 10.0 - (time.monotonic() - sent_at)))
            with storescp(dest_port, pacs, pacs_log):
                objs = wait_for(
                    lambda: complete(pacs), 90, "results once the PACS is up", every_s=1.0
                )
            sr = pydicom.dcmread(next(iter(objs[SR_CLASS].values())), stop_before_pixels=True)
            assert sr.StudyInstanceUID == study.study_uid
            assert all_uids(objs) == all_uids(received(folder / study.seg_uid))

            def unit_state() -> str:
                listed = run_cli("units", "--config", str(config), "--json", env=env)
                unit = next(u for u in json.loads(listed.stdout) if u["unit_id"] == study.seg_uid)
                return unit["state"] if unit["state"] in ("done", "failed") else ""

            # The node follows the workers on other processes through the spool: done. It is
            # recorded after the destinations' states, which the PACS's files can run ahead of.
            assert wait_for(unit_state, 60, "the unit to end", every_s=1.0) == "done"
            status = json.loads(status_file.read_text())
            assert status["destinations"]["pacs"]["state"] == "sent"
            assert status["destinations"]["pacs"]["attempts"] >= 2
        # Redis carried the tasks: no embedded filesystem queue was ever made in the spool.
        assert not (tmp_path / "spool" / "queue").exists()


# ------------------------------------------------------------------------------------------
# 4: serve --check


def test_serve_check_valid_config_lists_destinations(tmp_path: Path, bundle: Path) -> None:
    config = write_config(tmp_path, bundle, dest_port=11113, folder=tmp_path / "folder")
    proc = run_cli("serve", "--check", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"destination 'pacs': AE '{PACS_AET}' at 127.0.0.1:11113" in proc.stdout
    assert f"destination 'copy': folder {tmp_path / 'folder'}" in proc.stdout
    assert "configuration OK" in proc.stdout


def test_serve_check_bad_port_exits_2_naming_the_key(tmp_path: Path, bundle: Path) -> None:
    config = write_config(tmp_path, bundle, dest_port=11113, node_port=70000)
    proc = run_cli("serve", "--check", "--config", str(config))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[node] port" in proc.stderr and "70000" in proc.stderr
    # The same value through the environment override is refused the same way (the message
    # names the key; it does not say the value came from $MOLSUB_NODE_PORT).
    good = write_config(tmp_path, bundle, dest_port=11113)
    proc = run_cli("serve", "--check", "--config", str(good), env={"MOLSUB_NODE_PORT": "70000"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[node] port" in proc.stderr and "70000" in proc.stderr
