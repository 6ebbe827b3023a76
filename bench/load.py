"""The node under load: N concurrent associations sending 27 MB mammograms + SEG for a while.

    python bench/load.py [--senders 8] [--seconds 30] [--drain-seconds 120] [--extra 2]

A real node runs as deployed: ``molsub serve`` (SCP, embedded broker, the local worker
processes) with an UNTRAINED bundle (model.bundle.init_untrained) and dcmtk's storescp as the
destination PACS. N sender threads each run dcmtk's ``storescu``, one association per study,
back to back, until ``--seconds`` have passed (a study already started is finished). Each study
is SYNTHETIC: two MG For Presentation images of one breast (CC, MLO; 4096 rows x 3328 columns,
16 bit, uncompressed, 27.3 MB each) and a lesion SEG over both (2 ROIs), sent last. Every send
gets fresh UIDs: a few template studies are drawn once, and a send replaces a fixed-length
token in every UID of a template's bytes (same length, so no element length changes).

Printed:

- ingest throughput (MB/s, studies/s) over the sending window, counting studies whose every
  C-STORE got success (the node answers success only once the object is durable);
- receive latency per study: storescu's start to its exit (association, all C-STOREs with their
  durable successes, release), p50/p90/p99;
- results latency per study: storescu's exit to the last of the study's SR and SCs written at
  the destination (as bench/e2e.py), for the studies whose results arrived within
  ``--drain-seconds`` after the senders stopped; how many did not is printed too (on a small
  host the workers fall behind a saturating sender, so this is mostly queueing time);
- peak RSS (VmHWM from /proc/PID/status, sampled every 0.5 s while they live) of the SCP
  process (``molsub serve``) and of each worker process below it;
- the association limit: after the drain, [node] max_associations idle associations are held
  (one calling AE title each), then ``--extra`` more are attempted with dcmtk's echoscu; what
  echoscu reports (A-ASSOCIATE-RJ result, source, reason) and the node's log lines about them.
  Rejections seen by the senders during the load (when --max-associations is below --senders)
  are counted too; a rejected sender retries after 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from common.sop_classes import COMPREHENSIVE_3D_SR as SR_CLASS
from common.sop_classes import SECONDARY_CAPTURE as SC_CLASS
from model.bundle import init_untrained
from molsub.launch import child_pids, free_port, start_node, stop_process, write_config
from molsub.synth import SYNTHETIC_COMMENT, build_lesion_seg, build_mg, render_views
from worker.results.summary import measurement_groups

ROWS, COLS = 4096, 3328
NODE_AET = "MOLSUB"
MB = 1_000_000
START_TIMEOUT_S = 180.0
STORESCU_TIMEOUT_S = 600.0
RETRY_AFTER_S = 0.5
SAMPLE_EVERY_S = 0.5
# Every UID of a template study is "2.25.<role digits><token>"; a send replaces the token.
TOKEN_DIGITS = 20
ROLES = ("study", "series", "CC", "MLO", "seg", "seg-series", "lesion", "dimension")


def template_token(template: int) -> bytes:
    return f"9{template:0{TOKEN_DIGITS - 1}d}".encode()


def send_token(nonce: int, sender: int, seq: int) -> bytes:
    """Unique per send and per run; starts with 1 (a UID component has no leading zero)."""
    return f"1{nonce % 10**6:06d}{sender:03d}{seq:010d}".encode()


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Template:
    """One drawn study held in memory: (file name, bytes) of the two MGs, then the SEG."""

    index: int
    files: tuple[tuple[str, bytes], ...]

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.files)


def make_template(index: int) -> Template:
    """A SYNTHETIC left breast in CC and MLO with one lesion, and its SEG (2 ROIs)."""
    rng = np.random.default_rng([4242, index])
    token = template_token(index).decode()

    def uid(role: str) -> str:
        return f"2.25.{ROLES.index(role) + 1}{token}"

    views = render_views(index % 5, rng, laterality="L", rows=ROWS, cols=COLS)
    images, files = [], []
    for number, view in enumerate(("CC", "MLO"), start=1):
        ds = build_mg(
            views.images[view],
            laterality="L",
            view=view,
            study_uid=uid("study"),
            series_uid=uid("series"),
            sop_instance_uid=uid(view),
            patient_id=f"SYNTH-LOAD-{index:03d}",
        )
        ds.InstanceNumber = number
        ds.ImageComments = SYNTHETIC_COMMENT
        ds.SeriesDescription = "SYNTHETIC MG bench/load.py"
        images.append(ds)
        files.append((f"MG_{view}.dcm", _encode(ds)))
    seg = build_lesion_seg(
        images,
        [views.masks["CC"], views.masks["MLO"]],
        seg_uid=uid("seg"),
        series_uid=uid("seg-series"),
        tracking_uids=[uid("lesion")],
        dimension_organization_uid=uid("dimension"),
        series_description="SYNTHETIC lesion segmentation",
    )
    seg.ContentDescription = "SYNTHETIC lesion mask, not patient data"
    files.append(("SEG.dcm", _encode(seg)))
    for name, data in files:
        # The token must be where the UIDs are and nowhere else (12-bit pixels cannot hold it).
        count = data.count(template_token(index))
        if count < 3:
            raise RuntimeError(f"template {index} {name}: UID token found {count} time(s)")
    return Template(index, tuple(files))


def _encode(ds: pydicom.Dataset) -> bytes:
    with tempfile.TemporaryFile() as fh:
        ds.save_as(fh, enforce_file_format=True)
        fh.seek(0)
        return fh.read()


def write_study(template: Template, token: bytes, folder: Path) -> tuple[list[Path], str, int]:
    """The template's files with fresh UIDs in ``folder``: (paths, Study Instance UID, bytes)."""
    old = template_token(template.index)
    paths, size = [], 0
    for name, data in template.files:
        path = folder / name
        fresh = data.replace(old, token)
        path.write_bytes(fresh)
        paths.append(path)
        size += len(fresh)
    study_uid = f"2.25.{ROLES.index('study') + 1}{token.decode()}"
    return paths, study_uid, size


# --------------------------------------------------------------------------------------------
# Senders


@dataclass
class Sent:
    study_uid: str
    size: int
    started: float  # time.time() of storescu's start
    acked: float  # time.time() of storescu's exit: every C-STORE answered success


@dataclass
class Senders:
    """N threads, each sending studies back to back with storescu until ``until``."""

    count: int
    port: int
    templates: list[Template]
    folder: Path
    until: float
    nonce: int = field(default_factory=lambda: int(time.time()))
    sent: list[Sent] = field(default_factory=list)
    rejected: int = 0
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._sender, args=(i,), name=f"sender-{i}")
            for i in range(self.count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _sender(self, index: int) -> None:
        folder = self.folder / f"sender-{index:02d}"
        folder.mkdir(parents=True)
        seq = 0
        while time.time() < self.until:
            template = self.templates[(index + seq) % len(self.templates)]
            token = send_token(self.nonce, index, seq)
            seq += 1
            paths, study_uid, size = write_study(template, token, folder)
            cmd = ["storescu", "-aet", f"LOAD{index:02d}", "-aec", NODE_AET, "-R"]
            cmd += ["127.0.0.1", str(self.port), *map(str, paths)]
            started = time.time()
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=STORESCU_TIMEOUT_S, check=False
            )
            acked = time.time()
            for path in paths:
                path.unlink()
            with self._lock:
                if result.returncode == 0:
                    self.sent.append(Sent(study_uid, size, started, acked))
                elif "Association Rejected" in result.stderr:
                    self.rejected += 1
                else:
                    last = (result.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                    self.failures.append(f"exit {result.returncode}: {last[:160]}")
            if result.returncode != 0:
                time.sleep(RETRY_AFTER_S)


# --------------------------------------------------------------------------------------------
# Destination and processes


class Pacs:
    """dcmtk storescp; a log line per fully written file (``-xcr`` runs after the close)."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder, self.received = folder, folder / "received.log"
        folder.mkdir(parents=True)
        self.port = free_port()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["storescp", "-aet", "PACS", "-od", str(folder), "-uf", str(self.port)]
                + ["-xcr", f"echo '#f' >> '{self.received}'"],
                stdout=out,
                stderr=out,
            )
        self._seen: set[str] = set()
        self.studies: dict[str, dict[str, list[float]]] = {}  # study -> class -> mtimes
        self.rois: dict[str, int] = {}  # study -> ROIs its SR reports

    def poll(self) -> None:
        if not self.received.exists():
            return
        for name in self.received.read_text().split():
            if name in self._seen:
                continue
            self._seen.add(name)
            path = self.folder / name
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study, cls = str(ds.StudyInstanceUID), str(ds.SOPClassUID)
            self.studies.setdefault(study, {}).setdefault(cls, []).append(path.stat().st_mtime)
            if cls == SR_CLASS:
                self.rois[study] = sum(1 for _ in measurement_groups(pydicom.dcmread(path)))

    def done_at(self, study_uid: str) -> float | None:
        """When the study's SR and all its SCs were written; None while some are missing."""
        got = self.studies.get(study_uid, {})
        if SR_CLASS not in got or len(got.get(SC_CLASS, [])) < self.rois.get(study_uid, 1):
            return None
        return max(got[SR_CLASS] + got[SC_CLASS])


def descendants(pid: int) -> list[int]:
    """Processes below ``pid``, children first."""
    found, todo = [], [pid]
    while todo:
        for child in child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in kB, None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", text, re.M))
    return int(values.get("VmHWM", 0)), int(values.get("VmRSS", 0))


def describe_process(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv if a]
    if "--queues" in args:
        return f"worker --queues {args[args.index('--queues') + 1]}"
    return " ".join(Path(args[0]).name if i == 0 else a for i, a in enumerate(args[:4]))


class MemorySampler(threading.Thread):
    """Peak RSS per process of the node's tree, and the peak of the workers' summed RSS."""

    def __init__(self, node_pid: int) -> None:
        super().__init__(daemon=True, name="memory-sampler")
        self.node_pid = node_pid
        self.hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.workers_rss_peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(SAMPLE_EVERY_S)

    def sample(self) -> None:
        workers_rss = 0
        for pid in [self.node_pid, *descendants(self.node_pid)]:
            mem = memory_kb(pid)
            if mem is None:
                continue
            self.hwm[pid] = max(self.hwm.get(pid, 0), mem[0])
            self.names.setdefault(pid, describe_process(pid))
            if pid != self.node_pid:
                workers_rss += mem[1]
        self.workers_rss_peak = max(self.workers_rss_peak, workers_rss)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.sample()


# --------------------------------------------------------------------------------------------
# The association limit


def probe_limit(port: int, held: int, extra: int, log_path: Path) -> list[str]:
    """Hold ``held`` idle associations, then try ``extra`` more with echoscu; what happened."""
    ae = AE(ae_title="LOADHOLD")
    ae.add_requested_context(Verification)
    lines = []
    log_before = log_path.stat().st_size
    holders = []
    try:
        for i in range(held):
            assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
            # one calling AE title each: [node] max_associations_per_aet does not trip first
            assoc_ok = assoc.is_established
            if not assoc_ok:
                lines.append(f"holder {i + 1}/{held}: NOT established (limit reached early?)")
                break
            holders.append(assoc)
            ae.ae_title = f"LOADHOLD{i + 1:02d}"
        lines.append(f"{len(holders)} idle associations held (the node's max_associations)")
        for i in range(extra):
            cmd = ["echoscu", "-aet", f"LOADXTRA{i:02d}", "-aec", NODE_AET, "-to", "10"]
            result = subprocess.run(
                [*cmd, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60
            )
            said = " ".join(result.stderr.split()) or "(nothing on stderr)"
            outcome = "accepted" if result.returncode == 0 else f"exit {result.returncode}"
            lines.append(f"extra association {i + 1}/{extra}: echoscu {outcome}: {said[:240]}")
        still = sum(1 for a in holders if a.is_established)
        lines.append(f"held associations still established after the extra ones: {still}")
    finally:
        for assoc in holders:
            with contextlib.suppress(Exception):
                assoc.release()
    time.sleep(0.5)
    with log_path.open("rb") as fh:
        fh.seek(log_before)
        text = fh.read().decode(errors="replace")
    rejected = [line.split(" - ", 1)[-1] for line in text.splitlines() if "rejected:" in line]
    lines.append(f"node log, rejections during the probe ({len(rejected)}):")
    lines += [f"  {line.strip()}" for line in rejected[:8]]
    return lines


# --------------------------------------------------------------------------------------------
# Main


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"p50 {p50:6.2f} s  p90 {p90:6.2f} s  p99 {p99:6.2f} s  (n={len(values)})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=8, help="concurrent associations (8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="sending window (30)")
    parser.add_argument(
        "--drain-seconds", type=float, default=120.0, help="wait for results after it (120)"
    )
    parser.add_argument("--extra", type=int, default=2, help="associations past the limit (2)")
    parser.add_argument(
        "--max-associations",
        type=int,
        default=NodeSettings().max_associations,
        help="the node's [node] max_associations (default: the node's default)",
    )
    parser.add_argument("--templates", type=int, default=2, help="distinct studies drawn (2)")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (spool, logs)")
    args = parser.parse_args(argv)
    if min(args.senders, args.templates, args.max_associations) < 1 or args.seconds <= 0:
        parser.error("--senders, --templates, --max-associations >= 1; --seconds > 0")
    if args.extra < 0 or args.drain_seconds < 0:
        parser.error("--extra and --drain-seconds must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"dcmtk's {tool} not found on PATH (install dcmtk)")
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="molsub-bench-load-")) if created else args.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, workdir)
    finally:
        if created and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {workdir}")


@dataclass
class LoadNode:
    """A node started for a load run, with its destination PACS (stopped by the ExitStack)."""

    proc: subprocess.Popen[str]
    port: int
    pacs: Pacs
    log_path: Path


def start_load_node(
    workdir: Path,
    stack: contextlib.ExitStack,
    *,
    max_associations: int,
    node_args: tuple[str, ...] = (),
) -> LoadNode:
    """``molsub serve`` as deployed (embedded broker, local workers, UNTRAINED bundle, fresh
    spool under ``workdir``) with dcmtk's storescp as its destination; ``node_args`` are added
    to its command line (bench/http_overhead.py turns the HTTP server on with them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = workdir / "bundle"
    init_untrained(bundle)
    log_path = workdir / "node.log"
    pacs = Pacs(workdir / "pacs", log_path)
    stack.callback(stop_process, pacs.proc)
    spool, tmp = workdir / "spool", workdir / "tmp"
    tmp.mkdir()
    node = NodeSettings(
        ae_title=NODE_AET,
        spool_dir=spool,
        max_associations=max_associations,
        max_associations_per_aet=max_associations,
    )
    config = NodeConfig(
        node=node,
        model=ModelSettings(bundle=bundle, device="cpu"),
        queue=QueueSettings(broker_url=""),  # the embedded broker
        destinations=(Destination("pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port),),
    )
    config_path = write_config(config, workdir / "node.toml")
    # TMPDIR on the spool's file system, as bench/ingest.py and the deployment have it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLSUB_")}
    env["TMPDIR"] = str(tmp)
    proc, listening = start_node(
        config_path, log_path, *node_args, env=env, timeout_s=START_TIMEOUT_S
    )
    stack.callback(functools.partial(stop_process, proc, timeout_s=120))
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
    return LoadNode(proc, listening.port, pacs, log_path)


def run(args: argparse.Namespace, workdir: Path) -> int:
    print(f"drawing {args.templates} SYNTHETIC template studies ({ROWS}x{COLS} MG x2 + SEG)...")
    templates = [make_template(i) for i in range(args.templates)]
    study_mb = templates[0].size / MB
    with contextlib.ExitStack() as stack:
        node = start_load_node(workdir, stack, max_associations=args.max_associations)
        proc, pacs, log_path = node.proc, node.pacs, node.log_path
        sampler = MemorySampler(proc.pid)
        sampler.start()
        print(
            f"node listening on {node.port}; {args.senders} senders for {args.seconds:g} s; "
            f"study = 2 MG + SEG, {study_mb:.1f} MB; max_associations {args.max_associations}; "
            f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        start = time.time()
        senders = Senders(
            args.senders, node.port, templates, workdir / "send", start + args.seconds
        )
        senders.run()
        end = max([s.acked for s in senders.sent], default=time.time())
        window = end - start
        load_after = os.getloadavg()[0]
        sent = sorted(senders.sent, key=lambda s: s.started)
        print(
            f"senders done after {window:.1f} s; waiting up to {args.drain_seconds:g} s for results"
        )
        deadline = time.time() + args.drain_seconds
        done: dict[str, float] = {}
        while True:
            pacs.poll()
            for s in sent:
                if s.study_uid not in done and (t := pacs.done_at(s.study_uid)) is not None:
                    done[s.study_uid] = t
            if len(done) == len(sent) or time.time() > deadline:
                break
            time.sleep(0.5)
        drained = time.time()
        probe = (
            probe_limit(node.port, args.max_associations, args.extra, log_path)
            if args.extra
            else []
        )
        sampler.stop()

    total = sum(s.size for s in sent)
    receive = [s.acked - s.started for s in sent]
    results = [done[s.study_uid] - s.acked for s in sent if s.study_uid in done]
    log_text = log_path.read_text(errors="replace")
    reasons = Counter(m for m in re.findall(r"rejected: ([^\n]+)", log_text))
    print()
    print(
        f"load: {args.senders} senders (storescu, one association per study), "
        f"{args.seconds:g} s window; SYNTHETIC study = 2 MG {ROWS}x{COLS} 16 bit + SEG "
        f"(2 ROIs), {study_mb:.1f} MB; UNTRAINED bundle, CPU; embedded broker, local workers"
    )
    print(f"host: {os.cpu_count()} CPU(s); load average at the end of sending {load_after:.2f}")
    print(
        f"ingest: {len(sent)} studies, {total / MB:.0f} MB in {window:.1f} s = "
        f"{total / MB / window:.1f} MB/s, {len(sent) / window:.2f} studies/s "
        f"(every C-STORE answered success = durable)"
    )
    print(f"receive latency (storescu start -> exit, per study): {percentiles(receive)}")
    print(
        f"results latency (last C-STORE acked -> SR + SCs at the destination): "
        f"{percentiles(results)}"
    )
    finished = len(done)
    print(
        f"results: {finished}/{len(sent)} studies within the sending window + "
        f"{args.drain_seconds:g} s drain ({drained - start:.0f} s after the start); "
        f"{finished / (drained - start):.3f} studies/s end to end"
    )
    print(
        f"senders: {senders.rejected} association(s) rejected during the load, "
        f"{len(senders.failures)} other failure(s) {senders.failures[:3] or ''}"
    )
    print("peak RSS (VmHWM):")
    scp_kb = sampler.hwm.get(proc.pid, 0)
    print(f"  SCP (molsub serve, pid {proc.pid}) {scp_kb / 1024:8.0f} MiB")
    for pid, kb in sorted(sampler.hwm.items()):
        if pid != proc.pid:
            print(f"  {sampler.names.get(pid, '?'):44s} {kb / 1024:8.0f} MiB  (pid {pid})")
    print(f"  workers together, peak of summed RSS {sampler.workers_rss_peak / 1024:8.0f} MiB")
    if probe:
        print(f"association limit ([node] max_associations = {args.max_associations}):")
        for line in probe:
            print(f"  {line}")
    if reasons:
        print(
            "node log, all association rejections: "
            + ", ".join(f"{why} x{n}" for why, n in reasons.most_common())
        )
    ok = len(sent) > 0 and not senders.failures
    if not ok:
        print("FAILED: no study sent, or a sender failed for a reason other than a rejection")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
