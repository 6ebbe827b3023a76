"""How fast the node's SCP takes in large mammograms next to dcmtk's storescp, on one host.

    python bench/ingest.py [--n 8] [--repeats 3] [--workdir DIR] [--keep]

The same N SYNTHETIC MG For Presentation files (4096 rows x 3328 columns, 16 bits, uncompressed
Explicit VR Little Endian, about 27 MB each, random pixels) are sent by dcmtk's ``storescu`` in
one association per run to:

- ``storescp``: dcmtk's storescp (plain, single process, ``-od DIR -pdu P``, P the node's max
  PDU by default), the reference. It does NOT fsync: dcmtk offers no fsync option, so it
  answers success once the file is in the page cache. This is the upper bound for "receive and
  write a file".
- ``node``: ``molsub serve --config node.toml --no-workers`` (what deploy/ runs as the SCP
  service), embedded broker, a fresh spool. It answers success only after the object is fsynced
  and renamed into the spool and its folders are fsynced (scp/spool.py), and is measured so.
- ``storescp+sync`` (unless ``--no-synced-reference``): storescp with ``-xcr "sync #p/#f" -xs``,
  i.e. coreutils ``sync FILE`` (an fsync of the file) run synchronously after each object and
  before its response: a reference that pays for durability like the node does.

Each repeat runs every target once, in that order, each on a fresh output folder and a freshly
started receiver (start-up is not timed); the time is storescu's wall time for the whole
association. MB/s uses MB = 10**6 bytes of the files sent; the median over repeats is reported.
After each run the received files are checked (N files, same SOP Instance UIDs, identical pixel
data). Finally one untimed node run with ``strace -e trace=fsync,fdatasync`` attached counts the
syncs of spooled objects, spool folders and the state database, to show that every object was
synced (skipped when strace is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pydicom

from common.settings import NodeConfig, NodeSettings
from molsub.launch import free_port, start_node, stop_process, write_config
from molsub.synth import build_mg, synthetic_uid

ROWS, COLS = 4096, 3328
SCU_AET = "BENCHSCU"
NODE_AET = "MOLSUB"
REF_AET = "STORESCP"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
SYNTHETIC_COMMENT = "SYNTHETIC - random pixels for bench/ingest.py, not patient data"
MB = 1_000_000
DCMTK_MAX_PDU = 131072  # the largest max PDU dcmtk's storescp accepts (-pdu)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sop_uid: str
    size: int
    pixel_sha256: str


@dataclass
class Target:
    """One receiver under test and its timed runs (seconds per association)."""

    name: str
    durable: str
    start: Callable[[Path, Path], Receiver]
    seconds: list[float] = field(default_factory=list)

    def rates(self, total_bytes: int) -> list[float]:
        return [total_bytes / MB / s for s in self.seconds]


@dataclass
class Receiver:
    """A started receiver process: where it listens and where its objects land."""

    proc: subprocess.Popen[str]
    port: int
    called_aet: str
    received: Callable[[], list[Path]]


# --------------------------------------------------------------------------------------------
# Helpers


def dcmtk_tool(name: str) -> str:
    """dcmtk's binary of that name; the venv has pynetdicom apps of the same names, skip those."""
    venv = Path(sys.prefix).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        if candidate.resolve().is_relative_to(venv):
            continue
        version = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        if "dcmtk" in version.stdout:
            return str(candidate)
    raise SystemExit(f"dcmtk's {name} not found on PATH (install dcmtk)")


def wait_for_port(proc: subprocess.Popen[str], port: int, timeout_s: float) -> None:
    """Until something accepts TCP connections on the port (storescp prints nothing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s:g} s")


def wait_for_line(
    proc: subprocess.Popen[str], stream: IO[str], needle: str, timeout_s: float
) -> str:
    """The first line of ``stream`` containing ``needle``, read with a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"no line with {needle!r} within {timeout_s:g} s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.wait(timeout=10)}) before {needle!r}")
        if needle in line:
            return line


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after a timeout; only the process this script started."""
    stop_process(proc, timeout_s=STOP_TIMEOUT_S)


def node_env(tmpdir: Path) -> dict[str, str]:
    """No MOLSUB_* overrides from the caller's shell: the node.toml written here is measured.

    TMPDIR on the spool's file system: pynetdicom streams each object to a temporary file there
    and the spool then renames it instead of copying (the deployment should do the same).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLSUB_")}
    env["TMPDIR"] = str(tmpdir)
    return env


def pixel_digest(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path)
    return str(ds.SOPInstanceUID), hashlib.sha256(ds.PixelData).hexdigest()


# --------------------------------------------------------------------------------------------
# Data


def write_sources(folder: Path, n: int, seed: int) -> list[SourceFile]:
    """N SYNTHETIC MG files with random 16-bit pixels, so nothing about them is compressible."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = synthetic_uid(seed, 0, "bench-ingest-study")
    series_uid = synthetic_uid(seed, 0, "bench-ingest-series")
    sources = []
    for i in range(n):
        pixels = rng.integers(0, 1 << 16, size=(ROWS, COLS), dtype=np.uint16)
        sop_uid = synthetic_uid(seed, i, "bench-ingest-mg")
        ds = build_mg(
            pixels,
            laterality="L" if i % 2 == 0 else "R",
            view="CC" if (i // 2) % 2 == 0 else "MLO",
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            patient_id="SYNTH-BENCH",
            bits_stored=16,
        )
        ds.InstanceNumber = i + 1
        ds.ImageComments = SYNTHETIC_COMMENT
        path = folder / f"MG_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        sources.append(SourceFile(path, sop_uid, path.stat().st_size, digest))
    (folder / "README.txt").write_text(
        "SYNTHETIC DATA - random pixels written by bench/ingest.py, not patient data.\n"
    )
    return sources


# --------------------------------------------------------------------------------------------
# Receivers


def start_storescp(out_dir: Path, log_path: Path, *, synced: bool, max_pdu: int) -> Receiver:
    """storescp advertising ``max_pdu`` (dcmtk accepts 4096..131072; its default is 16384):
    storescu sends PDUs of the receiver's maximum, so both receivers get the same PDUs."""
    port = free_port()
    cmd = [dcmtk_tool("storescp"), "-aet", REF_AET, "-od", str(out_dir), "-pdu", str(max_pdu)]
    if synced:
        # #p/#f: the folder and file just written; -xs: run it before the response goes back.
        cmd += ["-xcr", f"{shutil.which('sync') or 'sync'} #p/#f", "-xs"]
    cmd.append(str(port))
    with log_path.open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(proc, port, START_TIMEOUT_S)
    except BaseException:
        stop(proc)
        raise
    return Receiver(proc, port, REF_AET, lambda: sorted(p for p in out_dir.iterdir()))


def start_node_receiver(out_dir: Path, log_path: Path) -> Receiver:
    """`molsub serve --no-workers` on a fresh spool in ``out_dir``: SCP only, embedded broker,
    no destinations; the real port comes from the node's listening line."""
    spool = out_dir / "spool"
    tmpdir = out_dir / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    config = NodeConfig(node=NodeSettings(ae_title=NODE_AET, spool_dir=spool))
    config_path = write_config(config, out_dir / "node.toml")
    proc, listening = start_node(
        config_path, log_path, "--no-workers", env=node_env(tmpdir), timeout_s=START_TIMEOUT_S
    )
    studies = spool / "studies"
    return Receiver(proc, listening.port, NODE_AET, lambda: sorted(studies.glob("*/*.dcm")))


# --------------------------------------------------------------------------------------------
# Runs


def send(receiver: Receiver, files: Sequence[Path], timeout_s: float) -> float:
    """storescu, one association, only the files' SOP class proposed (-R); returns seconds."""
    cmd = [
        dcmtk_tool("storescu"),
        "-aet",
        SCU_AET,
        "-aec",
        receiver.called_aet,
        "-R",
        "127.0.0.1",
        str(receiver.port),
        *map(str, files),
    ]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds


def verify(received: list[Path], sources: Sequence[SourceFile], target: str) -> None:
    """N objects with the sources' SOP Instance UIDs and byte-identical pixel data."""
    expected = {s.sop_uid: s.pixel_sha256 for s in sources}
    got = dict(pixel_digest(p) for p in received)
    if len(received) != len(sources) or got != expected:
        missing = sorted(set(expected) - set(got))
        raise RuntimeError(
            f"{target}: received {len(received)} file(s), expected {len(sources)}; "
            f"missing or different: {missing or 'pixel data differs'}"
        )


def run_once(
    target: Target, sources: Sequence[SourceFile], run_dir: Path, timeout_s: float
) -> float:
    run_dir.mkdir(parents=True)
    receiver = target.start(run_dir, run_dir.parent / f"{target.name}.log")
    try:
        seconds = send(receiver, [s.path for s in sources], timeout_s)
    finally:
        stop(receiver.proc)
    verify(receiver.received(), sources, target.name)
    shutil.rmtree(run_dir)
    os.sync()  # the next run starts without this one's dirty pages being written back
    return seconds


def count_node_fsyncs(
    sources: Sequence[SourceFile], run_dir: Path, timeout_s: float
) -> tuple[int, int, int] | None:
    """Untimed node run with strace attached: fsyncs of (objects, spool folders, state DB).

    strace attaches to the running node (-p, all threads) rather than starting it, so that the
    node is still the process this script stops. None when strace is missing.
    """
    strace = shutil.which("strace")
    if strace is None:
        return None
    run_dir.mkdir(parents=True)
    trace = run_dir.parent / "node-strace.txt"
    receiver = start_node_receiver(run_dir, run_dir.parent / "node-strace.log")
    tracer: subprocess.Popen[str] | None = None
    try:
        tracer = subprocess.Popen(
            [strace, "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace)]
            + ["-p", str(receiver.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        wait_for_line(tracer, tracer.stderr, "attached", START_TIMEOUT_S)
        send(receiver, [s.path for s in sources], timeout_s)
    finally:
        stop(receiver.proc)
        if tracer is not None:
            stop(tracer)  # it ends with the node; SIGTERM only if it has not
    verify(receiver.received(), sources, "node under strace")
    text = trace.read_text()
    spool = re.escape(str((run_dir / "spool").resolve()))
    ok = r">\)\s+=\s+0"
    objects = set(re.findall(rf"fsync\(\d+<({spool}/tmp/[^>]+\.part){ok}", text))
    folders = len(re.findall(rf"fsync\(\d+<{spool}/(?:tmp|studies(?:/[^>/]+)?){ok}", text))
    database = len(re.findall(rf"(?:fsync|fdatasync)\(\d+<{spool}/state\.sqlite3[^>]*{ok}", text))
    shutil.rmtree(run_dir)
    return len(objects), folders, database


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="files per association (8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target; median (3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (files, logs)")
    parser.add_argument(
        "--no-synced-reference", action="store_true", help="skip the storescp+sync target"
    )
    parser.add_argument("--no-strace", action="store_true", help="skip the fsync count")
    parser.add_argument(
        "--storescp-pdu",
        type=int,
        default=min(NodeSettings().max_pdu_bytes, DCMTK_MAX_PDU),
        help="max PDU storescp advertises (default: the node's max_pdu_bytes, at most 131072, "
        "so both receive the same PDUs; 16384 is storescp's own default)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="limit for one storescu run (600)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.timeout_s <= 0:
        parser.error("--n and --repeats must be at least 1, --timeout-s positive")
    if not 4096 <= args.storescp_pdu <= DCMTK_MAX_PDU:
        parser.error(f"--storescp-pdu must be in 4096..{DCMTK_MAX_PDU}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="molsub-bench-ingest-")) if created else args.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, workdir)
    finally:
        if created and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {workdir}")


def run(args: argparse.Namespace, workdir: Path) -> int:
    version = subprocess.run(
        [dcmtk_tool("storescp"), "--version"], capture_output=True, text=True, timeout=30
    ).stdout.splitlines()[0]
    print(f"generating {args.n} SYNTHETIC MG files ({ROWS}x{COLS}, 16 bit, random pixels)...")
    sources = write_sources(workdir / "sources", args.n, args.seed)
    total = sum(s.size for s in sources)
    os.sync()
    targets = [
        Target(
            "storescp",
            "no",
            lambda d, log: start_storescp(d, log, synced=False, max_pdu=args.storescp_pdu),
        ),
        Target("node", "yes", lambda d, log: start_node_receiver(d, log)),
    ]
    if not args.no_synced_reference:
        targets.append(
            Target(
                "storescp+sync",
                "file only",
                lambda d, log: start_storescp(d, log, synced=True, max_pdu=args.storescp_pdu),
            )
        )
    runs_dir = workdir / "runs"
    for repeat in range(args.repeats):
        for target in targets:
            run_dir = runs_dir / f"{target.name}-{repeat}"
            target.seconds.append(run_once(target, sources, run_dir, args.timeout_s))
            print(
                f"  repeat {repeat + 1}/{args.repeats} {target.name:14s} "
                f"{target.seconds[-1]:7.2f} s  {total / MB / target.seconds[-1]:7.1f} MB/s",
                flush=True,
            )

    print()
    print(
        f"ingest: {args.n} SYNTHETIC MG For Presentation files, {ROWS} rows x {COLS} cols, "
        f"16 bit, Explicit VR LE, {total / args.n / MB:.1f} MB each, {total / MB:.1f} MB per "
        f"run; one storescu association per run (-R); {args.repeats} repeat(s), median"
    )
    print(f"host: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; {version}")
    print(
        f"max PDU advertised: node {NodeSettings().max_pdu_bytes} (its default [node] "
        f"max_pdu_bytes), storescp {args.storescp_pdu} bytes"
    )
    print(f"{'target':15s} {'fsync before success':22s} {'MB/s':>8s}   runs (MB/s)")
    medians: dict[str, float] = {}
    for target in targets:
        rates = target.rates(total)
        medians[target.name] = statistics.median(rates)
        runs = " ".join(f"{r:.1f}" for r in rates)
        print(f"{target.name:15s} {target.durable:22s} {medians[target.name]:8.1f}   {runs}")
    by_name = {t.name: t for t in targets}
    for ref in ("storescp", "storescp+sync"):
        if ref in by_name:
            # Per-repeat ratios too: neighbouring runs share the host's load at the time.
            node_s, ref_s = by_name["node"].seconds, by_name[ref].seconds
            paired = [r / n for r, n in zip(ref_s, node_s, strict=True)]
            print(
                f"ratio node/{ref}: {medians['node'] / medians[ref]:.2f} "
                f"(median of per-repeat ratios {statistics.median(paired):.2f})"
            )
    print(
        "storescp: no fsync (dcmtk's storescp has no fsync option; success goes back once the "
        "file is written to the page cache)"
    )
    if "storescp+sync" in medians:
        print(
            "storescp+sync: storescp -xcr 'sync #p/#f' -xs, an fsync of each file (not of its "
            "folder) before the response, at the cost of one process start per object"
        )
    print(
        "node: molsub serve --no-workers (the deployed SCP), embedded broker; fsync of each "
        "object and of its folders before success (scp/spool.py), always on"
    )
    print(f"node: stored {args.n}/{args.n} files per run, SOP UIDs and pixel data identical")
    if not args.no_strace:
        counted = count_node_fsyncs(sources, runs_dir / "node-strace", args.timeout_s)
        if counted is None:
            print("node fsync count: skipped (strace not found)")
        else:
            objects, folders, database = counted
            verdict = "every object fsynced" if objects == args.n else "NOT every object fsynced"
            print(
                f"node fsync count (untimed run under strace): {objects}/{args.n} spooled objects "
                f"fsynced, {folders} spool folder fsyncs, {database} state database syncs: "
                f"{verdict}"
            )
            if objects != args.n:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
