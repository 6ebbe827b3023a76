"""A real NodeSCP on loopback for the fuzz tests and bench/fuzz.py, its units run in-process.

Units the dispatcher hands over go through the node's Celery app in eager mode: the real
prepare stage, stand-in infer and results (tests/worker_standins.py), so that every unit a
fuzzed object starts ends ``done`` or ``failed`` here, in seconds, without a model.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from celery import Celery
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from common.settings import (
    Destination,
    InputSettings,
    ModelSettings,
    NodeConfig,
    NodeSettings,
)
from common.units import Unit, UnitState
from molsub.launch import free_port
from scp.server import NodeSCP
from tests import worker_standins
from tests.fuzz_cases import Case, file_meta, structural_defect
from worker.queue.app import enqueue_unit, make_celery_app

SCU_AET = "FUZZSCU"
FINAL_STATES = (UnitState.DONE, UnitState.FAILED, UnitState.TIMED_OUT)
ACCEPTED_VALID = "accepted-valid"
ACCEPTED_CORRUPT = "accepted-corrupt"  # must never happen
CONTEXT_REJECTED = "context-rejected"  # a bogus syntax: refused at negotiation, no C-STORE


@dataclass
class FuzzNode:
    """A started NodeSCP, the folder results go to, and what the dispatcher enqueued."""

    scp: NodeSCP
    spool: Path
    out: Path
    enqueued: list[Unit] = field(default_factory=list)

    def send(self, case: Case, folder: Path) -> tuple[str, str | None]:
        """C-STORE the case's bytes as they are; (outcome, the independent judge's defect)."""
        path = folder / "case.dcm"
        path.write_bytes(case.data)
        defect = structural_defect(case.data)
        meta, _ = file_meta(case.data)
        status = store_raw(self.scp.port, path, str(meta.MediaStorageSOPClassUID),
                           str(meta.TransferSyntaxUID))  # fmt: skip
        if status is None:
            return CONTEXT_REJECTED, defect
        code = int(status.Status)
        if code == 0x0000:
            return (ACCEPTED_VALID if defect is None else ACCEPTED_CORRUPT), defect
        comment = str(status.get("ErrorComment", "")).split(":")[0]
        return f"0x{code:04X} {comment}", defect

    def echo(self) -> bool:
        ae = AE(ae_title=SCU_AET)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.scp.port, ae_title="MOLSUB")
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        return int(status.get("Status", -1)) == 0x0000

    def spool_defects(self) -> list[str]:
        """Spooled objects the independent judge finds malformed, and leftovers in tmp/."""
        bad = [f"{p.name}: {d}" for p in self.spooled() if (d := structural_defect(p.read_bytes()))]
        return bad + [f"tmp/{p.name}" for p in (self.spool / "tmp").iterdir()]

    def spooled(self) -> list[Path]:
        return sorted((self.spool / "studies").rglob("*.dcm"))

    def wait_units_final(self, timeout_s: float) -> list[Unit]:
        """Every unit the node made, once all are final (or when ``timeout_s`` has passed)."""
        assert self.scp.db is not None
        deadline = time.monotonic() + timeout_s
        while True:
            units = self.scp.db.list_units()
            if all(u.state in FINAL_STATES for u in units) or time.monotonic() > deadline:
                return units

    def unit_outcomes(self, units: list[Unit]) -> Counter[str]:
        return Counter(str(u.state) for u in units)


def store_raw(port: int, path: Path, sop_class: str, syntax: str) -> object | None:
    """pynetdicom sends the file's bytes after its meta undecoded (STORE_SEND_CHUNKED_DATASET):
    the sender repairs nothing. None when the SCP refused the syntax at negotiation."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title=SCU_AET)
        ae.add_requested_context(Verification)  # so that a refused syntax still associates
        ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title="MOLSUB")
        if not assoc.is_established:
            raise RuntimeError("association not established")
        try:
            if not any(c.abstract_syntax == sop_class for c in assoc.accepted_contexts):
                return None
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
    if "Status" not in status:
        raise RuntimeError("no C-STORE response")
    return status


def eager_app(folder: Path) -> tuple[Celery, Path, Path]:
    """The node's Celery app run in this process (real prepare, stand-in infer and results),
    its spool and the folder destination: (app, spool, out)."""
    spool, out = folder / "spool", folder / "out"
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool),
        model=ModelSettings(bundle=folder / "no-bundle-with-standins"),
        destinations=(Destination("copy", folder=out),),
    )
    pipeline = worker_standins.pipeline(("infer", "results"), config)
    pipeline = replace(pipeline, model=replace(pipeline.model, standin_info=True))
    app = make_celery_app(config, pipeline=pipeline)
    app.conf.task_always_eager = True
    return app, spool, out


@contextmanager
def fuzz_node(root: Path | None = None, *, study_timeout_s: float = 1.0) -> Iterator[FuzzNode]:
    """A NodeSCP (min_image_side 1: the real GE header is 1x2 px) whose units run eagerly."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        app, spool, out = eager_app(Path(tmp))
        enqueued: list[Unit] = []

        def enqueue(unit: Unit) -> None:
            enqueued.append(unit)
            assert unit.seg_path is not None
            enqueue_unit(app, unit.unit_id, unit.seg_path, list(unit.image_paths))

        settings = NodeSettings(
            port=free_port(), spool_dir=spool, acse_timeout_s=5, study_timeout_s=study_timeout_s
        )
        scp = NodeSCP(settings, enqueue, inputs=InputSettings(min_image_side=1), poll_s=0.05)
        scp.start()
        try:
            yield FuzzNode(scp, spool, out, enqueued)
        finally:
            scp.stop()
