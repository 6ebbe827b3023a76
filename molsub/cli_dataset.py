"""`molsub dataset`: build a training manifest from DICOM and check one before training.

Registered by ``molsub.cli.build_parser`` through ``add_dataset_commands``. train/ is imported
inside the handlers so that `molsub --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED = 0, 1


def add_dataset_commands(sub: argparse._SubParsersAction) -> None:
    """Add `dataset from-dicom` and `dataset check` to the top-level subcommands ``sub``."""
    dataset = sub.add_parser(
        "dataset", help="training data: manifests from DICOM, checks (docs/training-data.md)"
    )
    commands = dataset.add_subparsers(dest="dataset_command", required=True)

    from_dicom = commands.add_parser(
        "from-dicom",
        help="write a manifest of the MG images and SEGs under DIR, labelled from a CSV",
    )
    from_dicom.add_argument("dir", type=Path, help="folder of MG and SEG files (any names)")
    from_dicom.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="CSV keyed by study_uid or patient_id, with subtype or er, pr, her2, ki67",
    )
    from_dicom.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    from_dicom.set_defaults(func=cmd_from_dicom)

    check = commands.add_parser(
        "check", help="read every image and mask of a manifest; list problems and class counts"
    )
    check.add_argument("manifest", type=Path)
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)


def cmd_from_dicom(args: argparse.Namespace) -> int:
    from train.from_dicom import manifest_from_dicom

    try:
        manifest = manifest_from_dicom(args.dir, args.labels, args.out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for warning in manifest.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    patients = len({row.patient_id for row in manifest.rows})
    print(
        f"wrote {len(manifest.rows)} rows ({patients} patients) to {manifest.path} "
        f"(sha256 {manifest.sha256[:16]}); left out: {len(manifest.warnings)} (see warnings)"
    )
    print(f"next: molsub dataset check {manifest.path}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from train.check import check_manifest, format_report
    from train.manifest import read_manifest

    try:
        manifest = read_manifest(args.manifest)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report = check_manifest(manifest, progress=not args.no_progress)
    print(format_report(report))
    if not report.ok:
        print(
            f"error: {len(report.errors)} problems; training refuses this manifest", file=sys.stderr
        )
        return EXIT_FAILED
    return EXIT_OK
