"""JSON logs with the unit and the stage (common/logs.py), and the choice of format.

In-process: the formatter and the context, the precedence flag > environment > node.toml >
text, the worker tasks binding their unit and stage, and a real NodeSCP receiving a real vendor
header with a non-ASCII PatientName that no log line repeats. As real processes: `molsub serve
--log-format json` receiving a SYNTHETIC study, every line of its log (its workers' and
Celery's included) JSON, the unit's lines carrying its UID through every stage.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
import pytest

from common.logs import (
    LOG_FORMAT_ENV,
    LogStage,
    choose_format,
    configure_logging,
    current_context,
    log_context,
    make_handler,
)
from common.settings import (
    Destination,
    LogFormat,
    LogSettings,
    ModelSettings,
    NodeConfig,
    NodeSettings,
)
from common.units import Unit
from molsub import launch
from molsub.cli import build_parser
from molsub.launch import free_port, wait_for
from tests import worker_standins as standins
from tests.dicom_peers import SCU_AET, storescu
from tests.header_cases import CASES, build_case
from worker.queue.app import enqueue_unit, make_celery_app

JSON_FIELDS = {"time", "level", "logger", "message", "process"}
CONTEXT_FIELDS = {"unit", "stage", "sop_instance_uid", "exc_info", "stack_info"}


@contextmanager
def captured(log_format: LogFormat, level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Everything the root logger sees, in ``log_format``, while the block runs."""
    stream = io.StringIO()
    handler = make_handler(log_format, stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line parsed; fails on the first that is not one JSON object."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict), line
            lines.append(obj)
    return lines


# ------------------------------------------------------------------------------------------
# Formatter and context


def test_json_lines_carry_the_fields_and_the_context() -> None:
    log = logging.getLogger("molsub.test")
    with captured(LogFormat.JSON) as out:
        log.info("outside")
        with log_context(unit="1.2.3", stage=LogStage.PREPARE):
            log.info("unit %s prepared: %d ROI(s)", "1.2.3", 2)
            with log_context(stage=LogStage.DELIVER):
                log.warning("inner")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.exception("failed")
        log.info("after", extra={"data": {"args": "task arguments never reach the output"}})
    outside, prepared, inner, failed, after = json_lines(out.getvalue())
    for line in (outside, prepared, inner, failed, after):
        assert JSON_FIELDS <= set(line) <= JSON_FIELDS | CONTEXT_FIELDS, line
        assert line["logger"] == "molsub.test" and line["process"] == os.getpid()
        stamp = datetime.fromisoformat(line["time"])
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 600
    assert "unit" not in outside and "stage" not in outside
    assert prepared["message"] == "unit 1.2.3 prepared: 2 ROI(s)"
    assert (prepared["unit"], prepared["stage"], prepared["level"]) == ("1.2.3", "prepare", "INFO")
    assert (inner["unit"], inner["stage"], inner["level"]) == ("1.2.3", "deliver", "WARNING")
    assert failed["stage"] == "prepare"  # the inner block restored the outer stage
    assert failed["exc_info"].startswith("Traceback") and "RuntimeError: boom" in failed["exc_info"]
    assert "unit" not in after and "data" not in after
    assert current_context() == {}


def test_context_stays_in_its_thread() -> None:
    """Two associations at once: each thread's lines carry only its own object."""
    barrier = threading.Barrier(2)

    def receive(uid: str) -> None:
        with log_context(stage=LogStage.RECEIVE, sop_instance_uid=uid):
            barrier.wait(timeout=10)
            logging.getLogger("scp.test").info("stored %s", uid)
            barrier.wait(timeout=10)

    with captured(LogFormat.JSON) as out:
        threads = [threading.Thread(target=receive, args=(uid,)) for uid in ("1.2.1", "1.2.2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    lines = json_lines(out.getvalue())
    assert len(lines) == 2
    for line in lines:
        assert line["message"] == f"stored {line['sop_instance_uid']}"
        assert line["stage"] == "receive"


def test_text_default_is_unchanged() -> None:
    """The human-readable line of before: time, level, logger: message (no context fields)."""
    with captured(LogFormat.TEXT) as out, log_context(unit="1.2.3", stage=LogStage.INFER):
        logging.getLogger("worker.test").info("unit %s inferred", "1.2.3")
    line = out.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO worker\.test: unit 1\.2\.3 inferred", line
    ), line
    assert choose_format(None, {}, None) is LogFormat.TEXT
    assert LogSettings().format is LogFormat.TEXT


# ------------------------------------------------------------------------------------------
# Choice of format


def test_flag_beats_environment_beats_config_beats_text() -> None:
    env_text, env_json = {LOG_FORMAT_ENV: "text"}, {LOG_FORMAT_ENV: "json"}
    assert choose_format("json", env_text, LogFormat.TEXT) is LogFormat.JSON
    assert choose_format("text", env_json, LogFormat.JSON) is LogFormat.TEXT
    assert choose_format(None, env_json, LogFormat.TEXT) is LogFormat.JSON
    assert choose_format(None, env_text, LogFormat.JSON) is LogFormat.TEXT
    assert choose_format(None, {}, LogFormat.JSON) is LogFormat.JSON
    assert choose_format(None, {LOG_FORMAT_ENV: ""}, None) is LogFormat.TEXT
    with pytest.raises(ValueError):
        choose_format(None, {LOG_FORMAT_ENV: "xml"}, None)


def test_log_format_flag_is_global_and_after_the_process_commands() -> None:
    parser = build_parser()
    assert parser.parse_args(["--log-format", "json", "units"]).log_format == "json"
    assert parser.parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["--log-format", "json", "worker"]).log_format == "json"
    assert parser.parse_args(["worker", "--log-format", "text"]).log_format == "text"
    assert parser.parse_args(["serve"]).log_format is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-format", "xml", "units"])


def test_main_puts_the_flag_where_config_and_workers_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`molsub --log-format json` sets $MOLSUB_LOGGING_FORMAT: the config loaded afterwards
    and the local workers `molsub serve` starts (same environment) log JSON too."""
    from molsub.cli import main
    from molsub.config import load_config

    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    toml = launch.write_config(
        NodeConfig(node=NodeSettings(spool_dir=tmp_path / "spool"), logging=LogSettings()),
        tmp_path / "node.toml",
    )
    assert main(["--log-format", "json", "units", "--config", str(toml)]) == 0
    assert os.environ[LOG_FORMAT_ENV] == "json"
    assert load_config(toml).logging.format is LogFormat.JSON
    capsys.readouterr()
    monkeypatch.setenv(LOG_FORMAT_ENV, "xml")
    assert main(["units", "--config", str(toml)]) == 2
    assert LOG_FORMAT_ENV in capsys.readouterr().err


def test_configure_logging_replaces_its_own_handler_and_keeps_a_hosts() -> None:
    """Called twice (main, then serve with the config) it leaves one handler of its own; a
    root logger set up by someone else (here pytest) is left alone without a stream."""
    root = logging.getLogger()
    before = list(root.handlers)
    first, second = io.StringIO(), io.StringIO()
    old_level, old_mode = root.level, pydicom.config.settings.reading_validation_mode
    try:
        assert configure_logging(LogFormat.TEXT, stream=first) is not None
        assert configure_logging(LogFormat.JSON, level="WARNING", stream=second) is not None
        assert len(root.handlers) == len(before) + 1
        logging.getLogger("molsub.test").warning("once")
        logging.getLogger("molsub.test").info("below the level")
        assert first.getvalue() == ""
        assert [line["message"] for line in json_lines(second.getvalue())] == ["once"]
        assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
        assert configure_logging(LogFormat.JSON) is None  # pytest's handlers are there
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(old_level)
        pydicom.config.settings.reading_validation_mode = old_mode
        logging.captureWarnings(False)


# ------------------------------------------------------------------------------------------
# Worker tasks: unit and stage on their lines


def test_worker_tasks_log_their_unit_and_stage(tmp_path: Path) -> None:
    """The chain run eagerly with stand-in stages: each stage's lines carry the unit and the
    stage, and nothing is left bound afterwards."""
    from tests.test_worker_chain import write_unit

    spool, out = tmp_path / "spool", tmp_path / "out"
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool),
        model=ModelSettings(bundle=tmp_path / "no-bundle-with-standins"),
        destinations=(Destination("copy", folder=out),),
    )
    app = make_celery_app(config, pipeline=standins.pipeline(standins.KINDS, config))
    app.conf.task_always_eager = True
    unit_id, seg, images = write_unit(spool)
    with captured(LogFormat.JSON) as log:
        enqueue_unit(app, unit_id, seg, images)
    lines = json_lines(log.getvalue())
    stages = {line.get("stage") for line in lines if line.get("unit") == unit_id}
    assert {"prepare", "infer", "deliver"} <= stages, lines
    for line in lines:
        if unit_id in line["message"] and line.get("stage") is not None:
            assert line["unit"] == unit_id, line
    messages = {(line.get("stage"), line["message"]) for line in lines}
    assert any(s == "prepare" and m.startswith(f"unit {unit_id} prepared") for s, m in messages)
    assert ("deliver", f"unit {unit_id} done") in messages
    assert current_context() == {}


# ------------------------------------------------------------------------------------------
# The receiving side: no header values in any line


@pytest.fixture
def quiet_pydicom() -> Iterator[None]:
    """pydicom as the node runs it without -v (reading validation off), restored after."""
    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    yield
    pydicom.config.settings.reading_validation_mode = old


def test_receiving_logs_uids_and_never_the_patient_name(
    samples_dir: Path,
    tmp_path: Path,
    running_scps: Callable[..., Any],
    quiet_pydicom: None,
) -> None:
    """A real vendor header (Siemens, ISO_IR 192) with PatientName 'Wang^Xiaohong=王^小红' by
    C-STORE into a real NodeSCP: the lines name the objects by UID, with stage receive, the
    unit ready and enqueued (stage dispatch); no line holds the name, the physician's name or
    the PatientID."""
    index, case = next((i, c) for i, c in enumerate(CASES) if c.name == "utf8-chinese-accented")
    mg, seg = build_case(case, samples_dir, index)
    mg_path, seg_path = tmp_path / "mg.dcm", tmp_path / "seg.dcm"
    mg.save_as(mg_path, enforce_file_format=True)
    seg.save_as(seg_path, enforce_file_format=True)
    unit_id = str(seg.SOPInstanceUID)
    secrets = ["Wang", "Xiaohong", "王", "小红", "Müller", "Zoë", "Éléonore", str(mg.PatientID)]
    enqueued: list[Unit] = []
    settings = NodeSettings(
        port=free_port(),
        spool_dir=tmp_path / "spool",
        allowed_calling_aets=(SCU_AET,),
        min_free_mb=0,
    )
    with captured(LogFormat.JSON) as out:
        scp = running_scps(settings, enqueue=enqueued.append)
        for path in (seg_path, mg_path):
            sent = storescu(scp.port, [path], options=("-R", "-xs"))
            assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: enqueued, 30, "the unit to be enqueued", every_s=0.05)
        wait_for(lambda: "enqueued" in out.getvalue(), 10, "the enqueued line", every_s=0.05)
    text = out.getvalue()
    lines = json_lines(text)
    for secret in secrets:
        assert secret not in text, secret
        assert json.dumps(secret)[1:-1] not in text, secret  # nor JSON-escaped
    stored = {
        line["sop_instance_uid"]
        for line in lines
        if line.get("stage") == "receive" and line["message"].startswith("stored ")
    }
    assert stored == {str(mg.SOPInstanceUID), unit_id}
    ready = [line for line in lines if line["message"] == f"unit {unit_id} ready"]
    assert ready and ready[0]["unit"] == unit_id and ready[0]["stage"] == "receive"
    dispatched = [line for line in lines if line["message"].startswith(f"unit {unit_id} enqueued")]
    assert dispatched and dispatched[0]["unit"] == unit_id
    assert dispatched[0]["stage"] == "dispatch"


# ------------------------------------------------------------------------------------------
# Real processes: `molsub serve --log-format json`


def http_get(port: int, path: str) -> int | None:
    """The HTTP status of GET ``path``, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.mark.slow
def test_serve_json_logs_every_line_with_the_unit_through_every_stage(tmp_path: Path) -> None:
    """The node (SCP, dispatcher, its two local workers, Celery) on the embedded broker with
    the real UNTRAINED model: a SYNTHETIC study in by storescu, results in a folder."""
    from model.bundle import init_untrained
    from molsub.synth import write_synthetic_studies

    bundle = tmp_path / "bundle"
    init_untrained(bundle)
    study = write_synthetic_studies(tmp_path / "study", patients=1, seed=5)[0]
    out = tmp_path / "out"
    config = NodeConfig(
        node=NodeSettings(
            spool_dir=tmp_path / "spool",
            allowed_calling_aets=(SCU_AET,),
            min_free_mb=0,
        ),
        model=ModelSettings(bundle=bundle, device="cpu"),
        destinations=(Destination("copy", folder=out),),
    )
    toml = launch.write_config(config, tmp_path / "node.toml")
    log_path = tmp_path / "node.log"
    env = {k: v for k, v in os.environ.items() if k != LOG_FORMAT_ENV}
    unit_id, http_port = study.seg_uid, free_port()
    args = ("--log-format", "json", "--http-port", str(http_port))
    try:
        with launch.running_node(toml, log_path, *args, env=env, timeout_s=180) as (
            _proc,
            listening,
        ):
            # The HTTP server's lines (uvicorn) are JSON too.
            wait_for(lambda: http_get(http_port, "/healthz"), 60, "/healthz", every_s=0.2)
            for files in ([study.seg_path], list(study.image_paths.values())):
                sent = storescu(listening.port, files)
                assert sent.returncode == 0, sent.stdout + sent.stderr

            def finished() -> bool:
                text = log_path.read_text(errors="replace")
                return f"unit {unit_id} done" in text and "dispatch" in text

            wait_for(finished, 300, "the unit to be done", every_s=1.0)
            # the dispatcher's own "done" comes after the worker's: wait for both
            wait_for(
                lambda: log_path.read_text().count(f"unit {unit_id} done") >= 2,
                30,
                "the dispatcher to follow the unit",
                every_s=0.5,
            )
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:] if log_path.exists() else "(no log)")
        raise
    lines = json_lines(log_path.read_text())  # every line, Celery's and the workers' too
    assert len({line["process"] for line in lines}) >= 3  # the node and its two workers
    about_unit = [line for line in lines if unit_id in line["message"]]
    stages = {line.get("stage") for line in about_unit}
    assert {"receive", "dispatch", "prepare", "infer", "deliver"} <= stages, stages
    for line in about_unit:
        if line.get("stage") in ("dispatch", "prepare", "infer", "deliver"):
            assert line["unit"] == unit_id, line
    # Celery's per-task "succeeded" lines quote the start of the task's return value (the
    # crops' compressed header bytes): held back at WARNING unless -v (common/logs.py).
    assert not [line for line in lines if " succeeded in " in line["message"]]
    assert any(pydicom.dcmread(p).SOPClassUID for p in out.rglob("*.dcm"))
