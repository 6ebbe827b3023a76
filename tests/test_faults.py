"""Faults: every unit ends ``done`` or ``failed`` with a reason, and results arrive exactly once.

"Exactly once" at a destination means one object per SOP Instance UID: result UIDs are
deterministic (worker/results/uids.py), so a unit run again after a fault replaces its objects
(storescp names its files by SOP Instance UID) and never adds new ones. The checks below assert
the expected set of UIDs and one file each, plus the unit's final state and reason.

Fast, in-process (Celery eager, stand-in model stages): the exception paths of the stages (a
SEG without PixelData, a SEG without segments, a full disk simulated by an OSError(ENOSPC)
injected at the result store's write layer) and the dispatcher's stall sweep.
Real processes: the node's worker supervision and PR_SET_PDEATHSIG; and, marked slow, whole
nodes (UNTRAINED bundle, SYNTHETIC study) whose infer worker or whole `molsub serve` is killed
by SIGKILL mid-inference, in both broker modes, and a Redis restart with a unit in flight.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
from celery import Celery

from common.progress import FailureKind, Progress, ProgressFiles
from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from common.units import Unit, UnitState
from molsub import launch, node
from molsub.launch import MOLSUB, free_port, redis_server, stop_process, wait_for
from molsub.synth import SynthStudy
from scp.dispatcher import Dispatcher, Stall
from scp.state import StateDB
from tests import worker_standins
from tests.dicom_peers import start_storescp, storescu
from tests.factories import disk_mask, make_mg, make_seg
from worker.queue import handlers as handlers_module
from worker.queue.app import enqueue_unit, make_celery_app

# ------------------------------------------------------------------------------------------
# In-process: the stages' exception paths end the unit, with the reason


def write_unit(
    spool: Path, *, seed: int = 0, pixels: bool = True, segments: bool = True
) -> tuple[str, Path, list[Path]]:
    """One MG and its lesion SEG in the spool; optionally broken as a PACS may send them."""
    mg = make_mg(seed=seed)
    seg = make_seg([mg], [disk_mask((256, 200), (90, 90), 15)])
    if not pixels:
        del seg.PixelData
    if not segments:
        seg.SegmentSequence = []
    folder = spool / "studies" / str(mg.StudyInstanceUID)
    folder.mkdir(parents=True)
    paths = [folder / f"{ds.SOPInstanceUID}.dcm" for ds in (seg, mg)]
    seg.save_as(paths[0], enforce_file_format=True)
    mg.save_as(paths[1], enforce_file_format=True)
    return str(seg.SOPInstanceUID), paths[0], paths[1:]


def eager_app(tmp: Path, kinds: tuple[str, ...], **queue: int) -> tuple[Celery, NodeConfig]:
    """The node's Celery app run in this process, with a folder destination."""
    config = NodeConfig(
        node=NodeSettings(spool_dir=tmp / "spool"),
        queue=QueueSettings(delivery_retry_base_s=1.0, delivery_retry_max_s=1.0, **queue),
        destinations=(Destination("copy", folder=tmp / "out"),),
    )
    config = replace(config, model=ModelSettings(bundle=tmp / "no-bundle-with-standins"))
    pipeline = worker_standins.pipeline(kinds, config)
    if "prepare" not in kinds:  # the real prepare, but the stand-in bundle description
        pipeline = replace(pipeline, model=replace(pipeline.model, standin_info=True))
    app = make_celery_app(config, pipeline=pipeline)
    app.conf.task_always_eager = True
    return app, config


def run_unit(app: Celery, spool: Path, unit: tuple[str, Path, list[Path]]) -> Progress | None:
    unit_id, seg, images = unit
    enqueue_unit(app, unit_id, seg, images)
    return ProgressFiles(spool).read(unit_id)


def test_seg_without_pixel_data_fails_in_prepare_with_the_reason(tmp_path: Path) -> None:
    app, _ = eager_app(tmp_path, ("infer", "results"))
    spool = tmp_path / "spool"
    progress = run_unit(app, spool, write_unit(spool, pixels=False))
    assert progress is not None and progress.state is UnitState.FAILED
    assert progress.failure is FailureKind.PERMANENT
    assert progress.reason.startswith("prepare: ") and "pixel data" in progress.reason


def test_seg_without_segments_fails_in_prepare_not_in_deliver(tmp_path: Path) -> None:
    app, _ = eager_app(tmp_path, ("infer", "results"))
    spool = tmp_path / "spool"
    unit = write_unit(spool, segments=False)
    progress = run_unit(app, spool, unit)
    assert progress is not None and progress.state is UnitState.FAILED
    assert progress.failure is FailureKind.PERMANENT
    assert progress.reason.startswith("prepare: ") and "no segment" in progress.reason
    assert unit[0] in progress.reason  # named by UID
    assert not (tmp_path / "out").exists()  # nothing delivered


def _enospc_writes(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """The result store's writes fail with ENOSPC ``failures`` times (the disk is full), then
    succeed (space was freed). Returns the counter of failed writes."""
    from worker.delivery import store

    real = store.atomic_write_bytes
    failed: list[int] = []

    def write(path: Path, data: bytes) -> None:
        if len(failed) < failures:
            failed.append(1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", write)
    return failed


def test_disk_full_then_freed_delivers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = eager_app(tmp_path, worker_standins.KINDS, delivery_max_retries=3)
    spool = tmp_path / "spool"
    unit_id, seg, images = write_unit(spool)
    failed = _enospc_writes(monkeypatch, failures=2)
    progress = run_unit(app, spool, (unit_id, seg, images))
    assert len(failed) == 2
    assert progress is not None and progress.state is UnitState.DONE, progress
    delivered = sorted(p.name for p in (tmp_path / "out" / unit_id).iterdir())
    assert len(delivered) == worker_standins_objects(images)  # one file per result UID


def test_disk_full_for_good_fails_transient_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = eager_app(tmp_path, worker_standins.KINDS, delivery_max_retries=2)
    spool = tmp_path / "spool"
    unit = write_unit(spool)
    _enospc_writes(monkeypatch, failures=1000)
    progress = run_unit(app, spool, unit)
    assert progress is not None and progress.state is UnitState.FAILED
    assert progress.failure is FailureKind.TRANSIENT
    assert progress.reason.startswith("deliver: OSError: ")
    assert "No space left on device" in progress.reason and "after 2 retries" in progress.reason


def test_unit_offered_again_after_it_ended_is_skipped(tmp_path: Path) -> None:
    """A redelivered message (Redis after its visibility timeout, or the stall sweep racing a
    slow worker) does nothing for a unit already done: no second delivery."""
    app, _ = eager_app(tmp_path, worker_standins.KINDS)
    spool = tmp_path / "spool"
    unit = write_unit(spool)
    assert run_unit(app, spool, unit).state is UnitState.DONE
    out = tmp_path / "out" / unit[0]
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.05)
    assert run_unit(app, spool, unit).state is UnitState.DONE
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


def worker_standins_objects(images: list[Path]) -> int:
    return 2 + len(images)  # stand-in results: SR + one SC per ROI + one SEG


def test_infer_delay_hook_is_off_unless_set() -> None:
    assert handlers_module.INFER_DELAY_ENV not in os.environ


# ------------------------------------------------------------------------------------------
# In-process: the stall sweep offers lost units again, then fails them


class _Recorder:
    def __init__(self) -> None:
        self.offered: list[str] = []

    def __call__(self, unit: Unit) -> None:
        self.offered.append(unit.unit_id)


def _enqueued_unit(tmp: Path, at: float) -> tuple[StateDB, str]:
    from scp.spool import ObjectInfo

    db = StateDB(tmp / "state.sqlite3", tmp)
    seg = ObjectInfo(
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        study_uid="1.2.3",
    )
    (tmp / "seg.dcm").write_bytes(b"")
    assert db.record_instance(seg, tmp / "seg.dcm", now=at) == ["1.2.3.4"]
    assert db.mark_enqueued("1.2.3.4", now=at)
    return db, "1.2.3.4"


def test_stalled_unit_is_offered_again_then_fails_with_the_reason(tmp_path: Path) -> None:
    t0 = 1_000_000.0
    db, unit_id = _enqueued_unit(tmp_path, t0)
    enqueue = _Recorder()
    progress = ProgressFiles(tmp_path)
    dispatcher = Dispatcher(db, enqueue, 600, progress=progress, stall=Stall(60, 2))
    assert dispatcher.sweep_stalled(t0 + 59) == []  # not stalled yet
    assert dispatcher.sweep_stalled(t0 + 61) == [unit_id]
    unit = db.get_unit(unit_id)
    assert unit.state is UnitState.ENQUEUED and "offered to the queue again (1 of 2)" in unit.detail
    assert dispatcher.sweep_stalled(t0 + 100) == []  # the timer restarted at the re-offer
    assert dispatcher.sweep_stalled(t0 + 122) == [unit_id]
    assert dispatcher.sweep_stalled(t0 + 183) == []  # offers spent: failed
    unit = db.get_unit(unit_id)
    assert unit.state is UnitState.FAILED
    assert unit.detail.startswith("transient: no progress for ")
    assert "after 2 re-offer(s)" in unit.detail
    assert enqueue.offered == [unit_id, unit_id]
    # Workers that still hold the unit see it final and skip it.
    assert progress.read(unit_id).state is UnitState.FAILED
    # `molsub retry` starts the count again.
    assert db.retry(unit_id) and db.offers(unit_id) == 0


def test_progress_written_by_a_worker_keeps_a_unit_from_stalling(tmp_path: Path) -> None:
    now = time.time()
    db, unit_id = _enqueued_unit(tmp_path, now - 1000)
    progress = ProgressFiles(tmp_path)
    progress.advance(unit_id, UnitState.PREPARED)  # a worker is at it: fresh mtime
    dispatcher = Dispatcher(db, _Recorder(), 600, progress=progress, stall=Stall(60, 2))
    dispatcher.follow_progress()
    assert dispatcher.sweep_stalled(now) == []
    assert db.get_unit(unit_id).state is UnitState.PREPARED


def test_without_a_stall_policy_nothing_is_swept(tmp_path: Path) -> None:
    db, _ = _enqueued_unit(tmp_path, 0.0)
    assert Dispatcher(db, _Recorder(), 600).sweep_stalled(1e9) == []


# ------------------------------------------------------------------------------------------
# Real processes: the node supervises its workers, and they die with it


def _supervisor(monkeypatch: pytest.MonkeyPatch, code: str, limit: int) -> node.WorkerSupervisor:
    monkeypatch.setattr(node, "_worker_command", lambda config, q: [sys.executable, "-c", code])
    config = NodeConfig(queue=QueueSettings(worker_restart_limit=limit))
    return node.WorkerSupervisor(config, [("infer",)])


def test_a_dead_worker_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sup = _supervisor(monkeypatch, "import time; time.sleep(60)", limit=1)
    try:
        first = sup.processes[0]
        first.kill()
        first.wait()
        assert sup.check()
        assert sup.processes[0] is not first and sup.processes[0].poll() is None
    finally:
        node.stop_processes(sup.processes, timeout_s=5)


def test_workers_that_keep_dying_stop_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    sup = _supervisor(monkeypatch, "raise SystemExit(3)", limit=2)
    results = []
    for _ in range(3):
        sup.processes[0].wait(timeout=30)
        results.append(sup.check())
    assert results == [True, True, False]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_workers_die_with_a_killed_node() -> None:
    """A parent that starts workers as the node does, then is killed by SIGKILL."""
    code = (
        "import sys, time\n"
        "from molsub import node\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "node._worker_command = lambda c, q: sleep\n"
        "from common.settings import NodeConfig\n"
        "procs = node.start_local_workers(NodeConfig())\n"
        "print(' '.join(str(p.pid) for p in procs), flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == len(node.LOCAL_WORKER_QUEUES) and all(map(_alive, pids))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not any(map(_alive, pids)), 10, "the workers to die with the node")
    finally:
        stop_process(parent)


# ------------------------------------------------------------------------------------------
# Whole nodes (slow): SIGKILL mid-inference, both brokers; SIGKILL of serve; Redis restart

STALL_S = 60.0  # > the slowest stage on a loaded 2-core CPU (infer: torch + 4 DenseNets)
INFER_DELAY_S = 3.0  # each inference sleeps first: time to kill the worker in it
PACS_AET = "PACS"
START_TIMEOUT_S = 180
FINAL_TIMEOUT_S = STALL_S * 3 + 240  # a re-offer, and a slow rerun, on a loaded machine
EXPECTED_RESULTS = 5  # SYNTHETIC CC + MLO, 1 ROI: SR, 2 SC, 2 heatmap SEG


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.bundle import init_untrained

    out = tmp_path_factory.mktemp("faults-bundle") / "bundle"
    init_untrained(out)
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[SynthStudy]:
    from molsub.synth import write_synthetic_studies

    return write_synthetic_studies(tmp_path_factory.mktemp("faults-studies"), patients=2, seed=21)


class FaultNode:
    """One node's config, PACS (storescp) and log; the node itself is started by the test."""

    def __init__(
        self, tmp: Path, bundle: Path, broker_url: str = "", spool_dir: Path | None = None
    ) -> None:
        self.tmp = tmp
        self.pacs_port = free_port()
        self.pacs_dir = tmp / "pacs"
        self.log = tmp / "node.log"
        config = NodeConfig(
            node=NodeSettings(
                spool_dir=spool_dir or tmp / "spool",
                study_timeout_s=600,
                # A small spool disk (the tmpfs of the disk-full test) is all below the
                # default watermark: off, so that the disk itself runs full.
                min_free_mb=0 if spool_dir else NodeSettings().min_free_mb,
            ),
            model=ModelSettings(bundle=bundle, device="cpu"),
            queue=QueueSettings(
                broker_url=broker_url,
                stall_timeout_s=STALL_S,
                max_redeliveries=2,
                delivery_max_retries=3,
                delivery_retry_base_s=1.0,
                delivery_retry_max_s=2.0,
            ),
            destinations=(
                Destination("pacs", ae_title=PACS_AET, host="127.0.0.1", port=self.pacs_port),
            ),
        )
        self.config = launch.write_config(config, tmp / "node.toml")
        self.env = {**os.environ, handlers_module.INFER_DELAY_ENV: str(INFER_DELAY_S)}
        self.pacs = start_storescp(
            self.pacs_dir, self.pacs_port, aet=PACS_AET, log=tmp / "pacs.log"
        )

    def start(self) -> tuple[subprocess.Popen[str], int]:
        proc, listening = launch.start_node(
            self.config, self.log, env=self.env, timeout_s=START_TIMEOUT_S
        )
        return proc, listening.port

    def units(self) -> dict[str, dict]:
        out = subprocess.run(
            [*MOLSUB, "units", "--config", str(self.config), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
        )
        assert out.returncode == 0, out.stderr
        return {u["unit_id"]: u for u in json.loads(out.stdout)}

    def wait_final(self, unit_ids: list[str]) -> dict[str, dict]:
        def final() -> dict[str, dict] | None:
            units = self.units()
            ok = all(units.get(i, {}).get("state") in ("done", "failed") for i in unit_ids)
            return units if ok else None

        return wait_for(final, FINAL_TIMEOUT_S, f"units {unit_ids} to end", every_s=2.0)

    def wait_log(self, text: str, after: int = 0, timeout_s: float = 300) -> int:
        """Wait until ``text`` is in the log past offset ``after``; returns the new offset."""

        def found() -> int:
            data = self.log.read_text(errors="replace")
            at = data.find(text, after)
            return at + len(text) if at >= 0 else 0

        return wait_for(found, timeout_s, f"{text!r} in the node log", every_s=0.2)

    def results_of(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> file name, for the PACS's files of one study."""
        import pydicom

        found = {}
        for path in self.pacs_dir.iterdir():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if str(ds.StudyInstanceUID) == study_uid:
                found[str(ds.SOPInstanceUID)] = path.name
        return found

    def assert_done_once(self, unit: dict) -> None:
        assert unit["state"] == "done", unit
        results = self.results_of(unit["study_uid"])
        # One object per SOP Instance UID: the expected number, whatever ran twice.
        assert len(results) == EXPECTED_RESULTS, results
        assert len(set(results.values())) == len(results)

    def close(self) -> None:
        stop_process(self.pacs)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-8000:] if self.log.exists() else ""


@pytest.fixture
def fault_node(tmp_path: Path, bundle: Path) -> Iterator[FaultNode]:
    made = FaultNode(tmp_path, bundle)
    try:
        yield made
    except BaseException:
        print(made.tail())
        raise
    finally:
        made.close()


def send_study(port: int, study: SynthStudy) -> None:
    files = [study.seg_path, *study.image_paths.values()]
    proc = storescu(port, files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def infer_worker(serve_pid: int) -> int:
    """The pid of the node's infer worker (its child whose command line ends ``infer``)."""
    for pid in launch.child_pids(serve_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--queues" in argv and argv[argv.index(b"--queues") + 1] == b"infer":
            return pid
    return 0


def kill_infer_mid_inference(made: FaultNode, proc: subprocess.Popen[str], unit_id: str) -> None:
    made.wait_log(f"unit {unit_id}: infer started")
    pid = infer_worker(proc.pid)
    assert pid, "no infer worker found"
    os.kill(pid, signal.SIGKILL)
    # serve starts a new one (and does not stop, as it did before).
    wait_for(lambda: infer_worker(proc.pid) not in (0, pid), 30, "a new infer worker")
    assert proc.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_sigkill_of_the_infer_worker_mid_inference(
    broker: str, tmp_path: Path, bundle: Path, studies: list[SynthStudy]
) -> None:
    study = studies[0]
    broker_cm = redis_server(tmp_path / "redis") if broker == "redis" else nullcontext("")
    with broker_cm as url:
        made = FaultNode(tmp_path, bundle, broker_url=url or "")
        try:
            proc, port = made.start()
            try:
                started = time.monotonic()
                send_study(port, study)
                kill_infer_mid_inference(made, proc, study.seg_uid)
                unit = made.wait_final([study.seg_uid])[study.seg_uid]
                took = time.monotonic() - started
                made.assert_done_once(unit)
                # Redelivered by the stall sweep, not after the visibility timeout (7200 s).
                assert took < FINAL_TIMEOUT_S
                assert "offered to the queue again (1 of 2)" in made.tail()
                print(f"{broker}: unit done {took:.0f} s after the send (stall {STALL_S:g} s)")
            finally:
                stop_process(proc, timeout_s=90)
            assert proc.returncode == 0
        except BaseException:
            print(made.tail())
            raise
        finally:
            made.close()


@pytest.mark.slow
def test_sigkill_of_serve_with_units_in_flight_and_one_half_received(
    fault_node: FaultNode, studies: list[SynthStudy]
) -> None:
    """Unit A in inference and unit B's SEG received without its images when the node is
    killed: its workers die with it, the restarted node runs two workers (not four), A is
    offered again and B completes when its images come."""
    made = fault_node
    a, b = studies
    proc, port = made.start()
    send_study(port, a)
    made.wait_log(f"unit {a.seg_uid}: infer started")
    sent = storescu(port, [b.seg_path])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    workers = launch.child_pids(proc.pid)
    assert len(workers) == len(node.LOCAL_WORKER_QUEUES)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(map(_alive, workers)), 15, "the workers to die with the node")
    proc, port = made.start()
    try:
        assert len(launch.child_pids(proc.pid)) == len(node.LOCAL_WORKER_QUEUES)
        assert made.units()[b.seg_uid]["state"] == "waiting"
        sent = storescu(port, list(b.image_paths.values()))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        units = made.wait_final([a.seg_uid, b.seg_uid])
        made.assert_done_once(units[a.seg_uid])
        made.assert_done_once(units[b.seg_uid])
    finally:
        stop_process(proc, timeout_s=90)


@pytest.mark.slow
def test_redis_restart_with_a_unit_in_flight(
    tmp_path: Path, bundle: Path, studies: list[SynthStudy]
) -> None:
    """Redis without persistence restarts while a unit is in inference: its messages are gone;
    the workers reconnect and the stall sweep offers the unit again."""
    study = studies[1]
    redis_port = free_port()
    (tmp_path / "redis").mkdir()
    redis_proc = launch.start_redis(tmp_path / "redis", redis_port)
    made = FaultNode(tmp_path, bundle, broker_url=f"redis://127.0.0.1:{redis_port}/0")
    proc = None
    try:
        proc, port = made.start()
        send_study(port, study)
        made.wait_log(f"unit {study.seg_uid}: infer started")
        stop_process(redis_proc)
        time.sleep(2)
        redis_proc = launch.start_redis(tmp_path / "redis", redis_port)
        unit = made.wait_final([study.seg_uid])[study.seg_uid]
        made.assert_done_once(unit)
        assert proc.poll() is None  # the node rode it out
    except BaseException:
        print(made.tail())
        raise
    finally:
        if proc is not None:
            stop_process(proc, timeout_s=90)
        stop_process(redis_proc)
        made.close()


def _mount_tmpfs(where: Path, size: str) -> bool:
    """A small tmpfs (root only; False where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.slow
def test_disk_full_while_inferring_then_freed(
    tmp_path: Path, bundle: Path, studies: list[SynthStudy]
) -> None:
    """The spool on a 64 MiB tmpfs fills up while a unit is in inference: deliver cannot record
    its results (nor the queue take a retry); once space is freed the unit ends done, its
    results at the PACS once."""
    spool_disk = tmp_path / "disk"
    if not _mount_tmpfs(spool_disk, "64m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the in-process ENOSPC test runs")
    study = studies[0]
    made = None
    proc = None
    try:
        made = FaultNode(tmp_path, bundle, spool_dir=spool_disk / "spool")
        proc, port = made.start()
        send_study(port, study)
        offset = made.wait_log(f"unit {study.seg_uid}: infer started")
        filler = _fill(spool_disk)
        # infer ends with the disk full: the deliver message cannot be queued, nor results
        # recorded; the space comes back a little later.
        made.wait_log(f"unit {study.seg_uid} inferred", after=offset, timeout_s=180)
        time.sleep(3)
        filler.unlink()
        unit = made.wait_final([study.seg_uid])[study.seg_uid]
        made.assert_done_once(unit)
    except BaseException:
        if made is not None:
            print(made.tail())
        raise
    finally:
        if proc is not None:
            stop_process(proc, timeout_s=90)
        if made is not None:
            made.close()
        subprocess.run(["umount", str(spool_disk)], check=False)
