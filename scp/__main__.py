"""``python -m scp``: the receiving side alone, for testing a receiver without workers.

It runs ``molsub serve --no-workers`` (the SCP service deploy/ installs) with two extras:
``--enqueue log`` only logs each ready unit (it is marked enqueued; no queue is touched), and
``--spool`` points it at another spool folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from molsub.config import ConfigError, load_node_config, with_node
from molsub.node import serve
from scp.state import Unit, format_units, unit_status

log = logging.getLogger("scp")


def _log_enqueue(unit: Unit) -> None:
    log.info(
        "unit %s ready: SEG %s, %d image(s)", unit.unit_id, unit.seg_uid, len(unit.image_paths)
    )


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
        config = load_node_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.spool is not None:
        config = with_node(config, spool_dir=args.spool)
    if args.check:
        print(config.describe())
        return 0
    if args.units:
        print(format_units(unit_status(config.node.spool_dir)))
        return 0
    enqueue = _log_enqueue if args.enqueue == "log" else None
    return serve(config, workers=False, port=args.port, enqueue=enqueue)


if __name__ == "__main__":
    sys.exit(main())
