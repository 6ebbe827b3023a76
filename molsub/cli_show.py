"""`molsub show FILE`: a result object made readable (molsub/show.py does the work).

Registered by molsub/cli.py through ``add_show_command``; highdicom and the result readers are
imported inside the handler so that `molsub --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED = 0, 1


def _cmd_show(args: argparse.Namespace) -> int:
    from molsub.show import ShowError, show

    try:
        text = show(args.file, phi=args.phi, png=args.png)
    except ShowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(text)
    return EXIT_OK


def add_show_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="print an SR as a readable report; describe an SC or heatmap SEG, render it to PNG",
        description="Print a result object of the node: an SR as a report (findings, "
        "probabilities per task and class, algorithm, source images), a Secondary Capture or "
        "a heatmap SEG described and, with --png, rendered. Patient data only with --phi.",
    )
    p.add_argument("file", type=Path, help="an SR, SC or heatmap SEG written by the node")
    p.add_argument(
        "--phi",
        action="store_true",
        help="also print patient name, ID, birth date, sex, accession number and study date "
        "(default: UIDs only)",
    )
    p.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="render an SC (its pixels) or a heatmap SEG (the fraction as a colour map)",
    )
    p.set_defaults(func=_cmd_show)
