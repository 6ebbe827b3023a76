"""End-to-end latency of the node: last C-STORE of a study -> SR and SCs at the destination.

Each SYNTHETIC study has four MG images (both breasts, CC and MLO; 1280 rows x 1024 columns)
and one SEG with a lesion on the left breast's two views (2 ROIs). storescu sends the images,
then the SEG, in one association; t0 is when storescu returns (last C-STORE acknowledged,
association released). t1 is when the last of the study's SR and SCs is fully written by
dcmtk's storescp (the PACS): storescp runs ``--exec-on-reception`` only after a file is closed,
which appends its name to a log, and t1 is the newest modification time among those files.

Paths, measured in one run, study by study in rotating order so that all three see the same
load on a shared host (both nodes run all the time; the idle one only polls its broker):

- embedded: `molsub serve --port 0` (local workers, kombu filesystem broker in the spool);
- redis: a private redis-server, `molsub serve --no-workers`, `molsub worker --queues
  prepare,deliver` and `molsub worker --queues infer`;
- in-process (reference): the same stages without the node, model already loaded: read the
  files -> worker.pipeline.Pipeline.run (prepare -> infer -> results). Pure compute; the
  ratio node p50 / in-process p50 is the node's overhead factor (queues, processes, DIMSE).

Study 0 warms every path up (model load, first imports) and is not counted.

    python bench/e2e.py [--studies 10] [--modes embedded,redis]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from common.sop_classes import COMPREHENSIVE_3D_SR as SR_CLASS
from common.sop_classes import SECONDARY_CAPTURE as SC_CLASS
from model.bundle import init_untrained
from molsub.launch import (
    MOLSUB,
    free_port,
    redis_server,
    start_node,
    stop_process,
    wait_for,
    write_config,
)
from molsub.synth import (
    SYNTHETIC_COMMENT,
    build_lesion_seg,
    build_mg,
    render_views,
    synthetic_uid,
)
from worker.pipeline import BundleModel, Pipeline
from worker.results.summary import measurement_groups

ROWS, COLS = 1280, 1024
SEED = 1000
START_TIMEOUT_S = 120.0
WARMUP_TIMEOUT_S = 600.0  # the first study also waits for the workers to start
STUDY_TIMEOUT_S = 300.0
STORESCU_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Study:
    """One SYNTHETIC study on disk: four MG files, the SEG (sent last), its Study UID."""

    images: list[Path]
    seg: Path
    study_uid: str


def make_study(folder: Path, index: int) -> Study:
    """Both breasts CC + MLO, SEG over the left breast's two views (2 ROIs); SYNTHETIC."""
    rng = np.random.default_rng([SEED, index])
    uid = functools.partial(synthetic_uid, SEED, index)
    study_uid, series_uid = uid("study"), uid("series")
    images, seg_sources, masks = [], [], []
    for number, lat in enumerate(("L", "R")):
        views = render_views(index % 5, rng, laterality=lat, rows=ROWS, cols=COLS)
        for offset, view in enumerate(("CC", "MLO"), start=1):
            ds = build_mg(
                views.images[view],
                laterality=lat,
                view=view,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=uid(lat + view),
                patient_id=f"SYNTH-E2E-{index:03d}",
            )
            ds.InstanceNumber = 2 * number + offset
            ds.ImageComments = SYNTHETIC_COMMENT
            ds.SeriesDescription = "SYNTHETIC MG bench/e2e.py"
            path = folder / f"{index:03d}_MG_{lat}_{view}.dcm"
            ds.save_as(path, enforce_file_format=True)
            images.append(path)
            if lat == "L":
                seg_sources.append(ds)
                masks.append(views.masks[view])
    seg = build_lesion_seg(
        seg_sources,
        masks,
        seg_uid=uid("seg"),
        series_uid=uid("seg-series"),
        tracking_uids=[uid("lesion-1")],
        series_description="SYNTHETIC lesion segmentation",
    )
    seg.ContentDescription = "SYNTHETIC lesion mask, not patient data"
    seg_path = folder / f"{index:03d}_SEG.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    return Study(images, seg_path, study_uid)


# --------------------------------------------------------------------------------------------
# The destination: storescp, with a log line per fully written file


class Pacs:
    """dcmtk storescp on a free port; ``arrival`` answers when a study's SR + SCs are in."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder, self.received = folder, folder / "received.log"
        folder.mkdir(parents=True)
        self.port = free_port()
        with log.open("ab") as out:
            # sh -c runs the command after storescp has closed the file: no partial reads.
            self.proc = subprocess.Popen(
                ["storescp", "-aet", "PACS", "-od", str(folder), "-uf", str(self.port)]
                + ["-xcr", f"echo '#f' >> '{self.received}'"],
                stdout=out,
                stderr=out,
            )
        self._seen: dict[str, tuple[str, str, float]] = {}  # file -> (study, class, mtime)
        try:
            wait_for(self._echo, START_TIMEOUT_S, f"storescp on port {self.port}")
        except BaseException:
            stop_process(self.proc)
            raise

    def _echo(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {self.proc.returncode}")
        cmd = ["echoscu", "-aec", "PACS", "-to", "5", "127.0.0.1", str(self.port)]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0

    def arrival(self, study_uid: str) -> float | None:
        """Wall time the study's SR and all its SCs were complete, None while some are missing."""
        if self.received.exists():
            for name in self.received.read_text().split():
                if name not in self._seen:
                    path = self.folder / name
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                    self._seen[name] = (
                        str(ds.StudyInstanceUID),
                        str(ds.SOPClassUID),
                        path.stat().st_mtime,
                    )
        mine = [(cls, t, name) for name, (s, cls, t) in self._seen.items() if s == study_uid]
        srs = [name for cls, _, name in mine if cls == SR_CLASS]
        scs = [t for cls, t, _ in mine if cls == SC_CLASS]
        if not srs or len(scs) < roi_count(pydicom.dcmread(self.folder / srs[0])):
            return None
        return max(t for cls, t, _ in mine if cls in (SR_CLASS, SC_CLASS))


def roi_count(sr: pydicom.Dataset) -> int:
    """Measurement groups in an SR: one SC is sent per group."""
    return sum(1 for _ in measurement_groups(sr))


# --------------------------------------------------------------------------------------------
# The node, in either mode


def node_config(workdir: Path, bundle: Path, dest_port: int, broker_url: str) -> NodeConfig:
    return NodeConfig(
        node=NodeSettings(ae_title="MOLSUB", spool_dir=workdir / "spool"),
        model=ModelSettings(bundle=bundle, device="cpu"),
        queue=QueueSettings(broker_url=broker_url),
        destinations=(Destination("pacs", ae_title="PACS", host="127.0.0.1", port=dest_port),),
    )


def start_mode(
    stack: contextlib.ExitStack, mode: str, bundle: Path, tmp: Path
) -> Callable[[Study], float]:
    """Start storescp and the node for ``mode``; returns send(study) -> latency in seconds."""
    workdir = tmp / mode
    workdir.mkdir()
    log_path = workdir / "node.log"
    pacs = Pacs(workdir / "pacs", log_path)
    stack.callback(stop_process, pacs.proc)
    broker = stack.enter_context(redis_server(workdir / "redis")) if mode == "redis" else ""
    config = write_config(node_config(workdir, bundle, pacs.port, broker), workdir / "node.toml")
    serve_args: list[str] = []
    if mode == "redis":
        serve_args.append("--no-workers")
        with log_path.open("ab") as log:
            for queues in ("prepare,deliver", "infer"):
                cmd = [*MOLSUB, "worker", "--config", str(config), "--queues", queues]
                worker = subprocess.Popen(cmd, stdout=log, stderr=log)
                stack.callback(stop_process, worker, 90)
    node, listening = start_node(config, log_path, *serve_args, timeout_s=START_TIMEOUT_S)
    stack.callback(stop_process, node, 120)  # warm shutdown: its local workers stop first
    threading.Thread(target=node.stdout.read, daemon=True).start()  # type: ignore[union-attr]
    port = listening.port
    first = [True]

    def send(study: Study) -> float:
        cmd = ["storescu", "-R", "-aec", "MOLSUB", "127.0.0.1", str(port)]
        cmd += [*map(str, study.images), str(study.seg)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=STORESCU_TIMEOUT_S)
        t0 = time.time()
        timeout = WARMUP_TIMEOUT_S if first[0] else STUDY_TIMEOUT_S
        first[0] = False
        t1 = wait_for(
            lambda: pacs.arrival(study.study_uid), timeout, f"{mode}: SR+SCs", every_s=0.05
        )
        return t1 - t0

    return send


# --------------------------------------------------------------------------------------------
# The reference: the same stages in this process


def in_process_runner(bundle: Path) -> Callable[[Study], float]:
    """Load the model once; returns run(study) -> seconds for read + prepare + infer + build."""
    pipeline = Pipeline(BundleModel(bundle, "cpu"))
    pipeline.model.predictor()  # loaded before the clock runs, as a warm worker has it

    def run(study: Study) -> float:
        t0 = time.perf_counter()
        seg = pydicom.dcmread(study.seg)
        mgs = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, study.images)}
        results = pipeline.run(seg, mgs).results
        elapsed = time.perf_counter() - t0
        if len(results.secondary_captures) != 2:
            raise RuntimeError(f"expected 2 ROIs, got {len(results.secondary_captures)}")
        return elapsed

    return run


# --------------------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    return float(np.percentile(values, 95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10, help="measured studies (+1 warm-up)")
    parser.add_argument("--modes", default="embedded,redis", help="node modes, comma-separated")
    args = parser.parse_args()
    if args.studies < 1:
        parser.error("--studies must be at least 1")
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"embedded", "redis"}:
        parser.error(f"unknown mode in {args.modes!r}: embedded, redis")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="molsub-e2e-") as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        bundle = tmp / "bundle"
        init_untrained(bundle)
        (tmp / "studies").mkdir()
        studies = [make_study(tmp / "studies", i) for i in range(args.studies + 1)]
        print(
            f"{args.studies} SYNTHETIC studies (+1 warm-up): 4 MG {ROWS}x{COLS} (rows x cols) "
            f"+ SEG over the left CC+MLO (2 ROIs); UNTRAINED bundle; CPU; "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        paths: dict[str, Callable[[Study], float]] = {"in-process": in_process_runner(bundle)}
        for mode in modes:
            paths[mode] = start_mode(stack, mode, bundle, tmp)
        times: dict[str, list[float]] = {label: [] for label in paths}
        labels = list(paths)
        for i, study in enumerate(studies):
            order = labels[i % len(labels) :] + labels[: i % len(labels)]
            measured = {label: paths[label](study) for label in order}
            print(
                f"study {i:2d}{' (warm-up)' if i == 0 else '          '} "
                + "  ".join(f"{label} {s:6.2f} s" for label, s in measured.items())
                + f"  (load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            if i > 0:
                for label, seconds in measured.items():
                    times[label].append(seconds)
    reference = statistics.median(times["in-process"])
    print(f"\nload average {os.getloadavg()[0]:.2f}; total {time.monotonic() - started:.0f} s")
    # min: the least disturbed run, telling on a shared host where load swamps the medians.
    print(
        f"{'mode':12s} {'studies':>7s} {'p50 s':>7s} {'p95 s':>7s} {'min s':>7s} "
        f"{'ratio vs in-process':>20s}"
    )
    for label, values in times.items():
        p50 = statistics.median(values)
        print(
            f"{label:12s} {len(values):7d} {p50:7.2f} {p95(values):7.2f} {min(values):7.2f} "
            f"{p50 / reference:20.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
