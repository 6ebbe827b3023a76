"""Logging for every process of the node: human-readable text (the default) or JSON lines.

JSON mode writes one object per line for log aggregation: ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``message``, ``process``, and when known the ``unit`` (the SEG's SOP Instance UID),
the ``stage`` (receive, dispatch, prepare, infer, deliver, ...) and, on the receiving side, the
``sop_instance_uid`` of the object; ``exc_info`` as one string. Only these fields are written:
a library's ``extra`` (Celery passes task arguments) never reaches the output.

The unit and stage come from context variables that ``log_context`` sets around a piece of work
(a C-STORE, a dispatcher round's unit, a worker task); a filter on the handler copies them onto
every record, so the existing log calls need no change. Context variables are per thread and
per task, so concurrent associations never mix their UIDs.

Log lines name objects by UID and never carry header values; pydicom's own warnings about the
values it reads (which quote them) are silenced unless -v.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from common.settings import LogFormat

LOG_FORMAT_ENV = "MOLSUB_LOGGING_FORMAT"  # the [logging] format override, also read by config
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# At WARNING unless -v. celery.app.trace logs each task's success with the start of its return
# value, and the prepare task returns the crops with the source's compressed header: header
# bytes, if encoded, do not belong in a log (the node logs each stage's outcome itself).
QUIET_LIBRARIES = ("highdicom", "celery.app.trace")


class LogStage(StrEnum):
    """What a process was doing when it logged a line (the ``stage`` field)."""

    RECEIVE = "receive"  # a C-STORE in the SCP
    DISPATCH = "dispatch"  # the node's dispatcher: enqueue, follow, fail, re-offer
    PREPARE = "prepare"
    INFER = "infer"
    DELIVER = "deliver"
    REPORT = "report"  # a failure recorded for a host that cannot see the spool
    RETENTION = "retention"
    HTTP = "http"


CONTEXT_FIELDS = ("unit", "stage", "sop_instance_uid")
_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"molsub_log_{name}", default=None) for name in CONTEXT_FIELDS
}

ContextTokens = list[tuple[ContextVar[str | None], Token[str | None]]]


def push_context(
    *, unit: str | None = None, stage: str | None = None, sop_instance_uid: str | None = None
) -> ContextTokens:
    """Set the given fields for what this thread logs next; ``pop_context`` undoes it.

    For callers that cannot use a ``with`` block (Celery's task_prerun / task_postrun)."""
    values = {"unit": unit, "stage": stage, "sop_instance_uid": sop_instance_uid}
    return [
        (_context[name], _context[name].set(str(value)))
        for name, value in values.items()
        if value is not None
    ]


def pop_context(tokens: ContextTokens) -> None:
    """Restore what ``push_context`` replaced (in reverse order)."""
    for var, token in reversed(tokens):
        try:
            var.reset(token)
        except ValueError:  # set in another context (a different thread): clear it instead
            var.set(None)


@contextmanager
def log_context(
    *, unit: str | None = None, stage: str | None = None, sop_instance_uid: str | None = None
) -> Iterator[None]:
    """Every line logged inside the block carries these fields (None: keep the outer value)."""
    tokens = push_context(unit=unit, stage=stage, sop_instance_uid=sop_instance_uid)
    try:
        yield
    finally:
        pop_context(tokens)


def current_context() -> dict[str, str]:
    """The fields set now (tests, and code that hands them on)."""
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record (a value passed in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record with the fixed fields of the module docstring, nothing else."""

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["process"] = record.process
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                log_data[name] = value
        for name in ("exc_info", "stack_info"):
            if message_dict.get(name):
                log_data[name] = message_dict[name]


def make_handler(log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) in ``log_format``, with the context filter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonLineFormatter(json_ensure_ascii=False))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    setattr(handler, _OURS, True)
    return handler


_OURS = "_molsub_handler"


def choose_format(
    flag: str | None, env: Mapping[str, str], configured: LogFormat | str | None = None
) -> LogFormat:
    """--log-format, else $MOLSUB_LOGGING_FORMAT, else [logging] format, else text."""
    for value in (flag, env.get(LOG_FORMAT_ENV), configured):
        if value:
            return LogFormat(str(value).strip().lower())
    return LogFormat.TEXT


def configure_logging(
    log_format: LogFormat = LogFormat.TEXT,
    *,
    level: str | int = logging.INFO,
    verbose: bool = False,
    stream: TextIO | None = None,
) -> logging.Handler | None:
    """Set up the root logger of this process; called again, it replaces its own handler.

    Like logging.basicConfig, a process whose root logger already has someone else's handlers
    (pytest, a program embedding the node) keeps them, unless ``stream`` is given. Returns the
    handler installed, or None when none was. -v (``verbose``) means DEBUG and lets highdicom
    and pydicom speak; otherwise pydicom's reading validation is off (it quotes header values).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _OURS, False)]
    foreign = [h for h in root.handlers if not getattr(h, _OURS, False)]
    quiet_libraries(verbose)
    if foreign and stream is None:
        return None
    for old in ours:
        root.removeHandler(old)
    handler = make_handler(log_format, stream)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else level)
    # Every line JSON in JSON mode: Python's warnings go through logging too.
    logging.captureWarnings(log_format is LogFormat.JSON)
    return handler


def quiet_libraries(verbose: bool) -> None:
    """highdicom and Celery's per-task success lines at WARNING, and pydicom's reading
    validation off, unless -v."""
    if verbose:
        return
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom warns about each invalid value it reads with the value itself: patient data.
    # The node checks values on its own terms (worker/results/source_header.py) and logs
    # keywords and UIDs only; -v (debug) lets pydicom speak.
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
