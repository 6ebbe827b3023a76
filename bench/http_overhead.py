"""What the status page and /metrics cost the receiving path: bench/load.py's ingest with the
node's HTTP server off, next to the same load while HTTP clients poll it.

    python bench/http_overhead.py [--repeats 3] [--seconds 30] [--senders 4] [--http-rate 20]

Each repeat runs the same load twice on a fresh node (``molsub serve`` as deployed: embedded
broker, local workers, UNTRAINED bundle, dcmtk's storescp as destination; bench/load.py
``start_load_node``): once with ``--http-port 0`` (the reference: no HTTP server at all) and
once with the HTTP server on while ``--http-clients`` threads, each on one keep-alive
connection as a browser tab or Prometheus holds, request the status page, its refresh
fragment, /api/units, /readyz and /metrics, ``--http-rate`` requests per second in all.
The order alternates between repeats so that a drift of the host does not favour one side.

The default rate, 20 requests/s, is about ten times what a real deployment asks: a Prometheus
scrape every 15 s plus ten browsers open on the page, each refreshing every 5 s, make 2.1/s.

Printed per run: ingest MB/s over the sending window (studies whose every C-STORE got success),
and for the HTTP run the requests answered, their errors and latency percentiles; then the
throughput ratio with/without HTTP per repeat, its median, and the overhead (1 - ratio).
SYNTHETIC data; the figures measure this host, not a clinical deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/...`: bench.load

from bench.load import MB, Senders, Template, make_template, start_load_node  # noqa: E402
from molsub.launch import free_port  # noqa: E402

# What an open status page, a script and Prometheus ask for, in turn.
PATHS = ("/", "/fragment", "/api/units", "/readyz", "/metrics")
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Pollers:
    """``clients`` threads sharing ``rate`` requests/s over PATHS until stopped."""

    host: str
    port: int
    clients: int
    rate: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Pollers:
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _client(self, index: int) -> None:
        """One client on one keep-alive connection, as a browser tab or Prometheus holds."""
        period = self.clients / self.rate
        next_at = time.monotonic() + index * period / self.clients
        turn = index
        connection = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
        while not self._stop.is_set():
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            next_at += period
            path = PATHS[turn % len(PATHS)]
            turn += 1
            started = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()  # reconnects at the next request
                self._error(f"{path}: {exc}")
                continue
            # not ready (503) is an answer too
            if response.status == 200 or (response.status == 503 and path == "/readyz"):
                with self._lock:
                    self.latencies.setdefault(path, []).append(time.perf_counter() - started)
            else:
                self._error(f"{path}: HTTP {response.status}")
        connection.close()

    def _error(self, what: str) -> None:
        with self._lock:
            self.errors.append(what)

    def summary(self) -> str:
        answered = sum(len(v) for v in self.latencies.values())
        every = [x for v in self.latencies.values() for x in v]
        if not every:
            return f"HTTP: 0 answered, {len(self.errors)} error(s) {self.errors[:3]}"
        p50, p99 = np.percentile(every, [50, 99]) * 1000
        return (
            f"HTTP: {answered} answered, {len(self.errors)} error(s); latency p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms"
        )


@dataclass(frozen=True)
class Run:
    http: bool
    mb_per_s: float
    studies: int
    note: str


def one_run(
    args: argparse.Namespace, templates: list[Template], workdir: Path, *, http: bool
) -> Run:
    http_port = free_port() if http else 0
    with contextlib.ExitStack() as stack:
        node = start_load_node(
            workdir,
            stack,
            max_associations=max(args.senders, 16),
            node_args=("--http-port", str(http_port)),
        )
        pollers = (
            Pollers("127.0.0.1", http_port, args.http_clients, args.http_rate) if http else None
        )
        start = time.time()
        senders = Senders(
            args.senders, node.port, templates, workdir / "send", start + args.seconds
        )
        with pollers if pollers is not None else contextlib.nullcontext():
            senders.run()
    end = max([s.acked for s in senders.sent], default=time.time())
    total = sum(s.size for s in senders.sent)
    if senders.failures:
        raise RuntimeError(f"sender failures: {senders.failures[:3]}")
    note = pollers.summary() if pollers is not None else "HTTP server off (--http-port 0)"
    if pollers is not None and pollers.errors:
        raise RuntimeError(f"HTTP errors during the load: {pollers.errors[:3]}")
    return Run(http, total / MB / (end - start), len(senders.sent), note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="sending window (30)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent associations (4)")
    parser.add_argument("--templates", type=int, default=2, help="distinct studies drawn (2)")
    parser.add_argument("--http-clients", type=int, default=4, help="polling threads (4)")
    parser.add_argument("--http-rate", type=float, default=20.0, help="requests/s in all (20)")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    args = parser.parse_args(argv)
    if min(args.repeats, args.senders, args.templates, args.http_clients) < 1:
        parser.error("--repeats, --senders, --templates and --http-clients must be >= 1")
    if args.seconds <= 0 or args.http_rate <= 0:
        parser.error("--seconds and --http-rate must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"dcmtk's {tool} not found on PATH (install dcmtk)")
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="molsub-bench-http-")) if created else args.workdir
    try:
        print(f"drawing {args.templates} SYNTHETIC template studies...", flush=True)
        templates = [make_template(i) for i in range(args.templates)]
        ratios = []
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            runs = {}
            for http in order:
                label = "on " if http else "off"
                folder = workdir.resolve() / f"r{repeat}-{label.strip()}"
                run = one_run(args, templates, folder, http=http)
                runs[http] = run
                shutil.rmtree(folder, ignore_errors=True)  # 27 MB per image: keep the disk free
                print(
                    f"repeat {repeat + 1} HTTP {label}: {run.mb_per_s:6.1f} MB/s "
                    f"({run.studies} studies); {run.note}",
                    flush=True,
                )
            ratios.append(runs[True].mb_per_s / runs[False].mb_per_s)
        median = statistics.median(ratios)
        print()
        print(
            f"ingest with HTTP polled at {args.http_rate:g} req/s / without HTTP: per repeat "
            + ", ".join(f"{r:.3f}" for r in ratios)
            + f"; median {median:.3f} -> overhead {100 * (1 - median):+.1f}%"
        )
        return 0
    finally:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
