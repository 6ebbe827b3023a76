"""``python -m scp``: run the receiving side alone (the node's ``molsub serve`` wraps NodeSCP).

``--enqueue celery`` (default) queues each ready unit on the node's Celery app;
``--enqueue log`` only logs it (a receiver test bench: units are marked enqueued).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from molsub.config import ConfigError, load_config, with_node
from scp.dispatcher import EnqueueFn
from scp.server import NodeSCP
from scp.state import Unit, format_units, unit_status

log = logging.getLogger("scp")


def _log_enqueue(unit: Unit) -> None:
    log.info(
        "unit %s ready: SEG %s, %d image(s)", unit.unit_id, unit.seg_uid, len(unit.image_paths)
    )


def _celery_enqueue(config) -> EnqueueFn:  # noqa: ANN001 - molsub.config.NodeConfig
    from worker.celery_app import enqueue_unit, make_celery_app

    app = make_celery_app(config)

    def enqueue(unit: Unit) -> None:
        enqueue_unit(app, unit.unit_id, unit.seg_path or "", unit.image_paths)

    return enqueue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scp", description=__doc__)
    parser.add_argument(
        "--config", type=Path, help="node.toml (default: $MOLSUB_CONFIG, else built-in defaults)"
    )
    parser.add_argument("--port", type=int, help="override [node] port (0: any free port)")
    parser.add_argument("--spool", type=Path, help="override [node] spool_dir")
    parser.add_argument("--enqueue", choices=("celery", "log"), default="celery")
    parser.add_argument("--check", action="store_true", help="print the settings and exit")
    parser.add_argument("--units", action="store_true", help="list the spool's units and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config or os.environ.get("MOLSUB_CONFIG") or None)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.port is not None:
        config = with_node(config, port=args.port)
    if args.spool is not None:
        config = with_node(config, spool_dir=args.spool)
    if args.check:
        print(config.describe())
        return 0
    if args.units:
        print(format_units(unit_status(config.node.spool_dir)))
        return 0
    enqueue = _log_enqueue if args.enqueue == "log" else _celery_enqueue(config)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    scp = NodeSCP(config, enqueue)
    scp.start()
    # The line a supervisor (or a test) waits for; the port is the real one for --port 0.
    print(f"listening {scp.config.node.host}:{scp.port}", flush=True)
    stopping.wait()
    scp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
