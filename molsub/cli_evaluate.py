"""`molsub evaluate` and `molsub compare`: the paper's report and paired tests from predictions.

The statistics live in ``train/``; these handlers only parse, call and print. train/ (scipy,
scikit-learn, matplotlib) is imported inside the handlers so that `molsub --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RESEARCH_LINE = "RESEARCH USE ONLY - not a medical device."
SYNTHETIC_LINE = "SYNTHETIC data: these numbers say nothing about real performance."


def _header(synthetic: bool) -> list[str]:
    return [RESEARCH_LINE, *([SYNTHETIC_LINE] if synthetic else [])]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from model.tasks import TASKS

    if args.bundle is not None or args.manifest is not None:
        return _evaluate_bundle(args)
    if (args.run_dir is None) == (args.predictions is None):
        print("error: give exactly one of RUN_DIR or --predictions CSV", file=sys.stderr)
        return EXIT_USAGE
    if args.predictions is not None:
        if args.task is None or args.out is None:
            print("error: --predictions needs --task and --out", file=sys.stderr)
            return EXIT_USAGE
        if args.task not in TASKS:
            print(f"error: unknown task {args.task!r}; known: {', '.join(TASKS)}", file=sys.stderr)
            return EXIT_USAGE
        if args.youden:
            print("error: --youden goes with RUN_DIR (it needs validation folds)", file=sys.stderr)
            return EXIT_USAGE
    elif args.task is not None or args.lesion_level or args.synthetic or args.title:
        print(
            "error: --task, --lesion-level, --synthetic and --title go with --predictions",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return _evaluate_predictions(args) if args.predictions else _evaluate_run(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _evaluate_predictions(args: argparse.Namespace) -> int:
    from train.predictions import read_predictions
    from train.report import evaluate_predictions, format_summary

    preds = read_predictions(args.predictions, args.task)
    report = evaluate_predictions(
        preds,
        args.out,
        title=args.title or args.predictions.name,
        synthetic=args.synthetic,
    )
    lines = _header(args.synthetic)
    lines.append(format_summary(report, lesion_level=args.lesion_level))
    lines.append(f"report: {args.out / 'report.md'}")
    print("\n".join(lines))
    return EXIT_OK


def _evaluate_run(args: argparse.Namespace) -> int:
    from train.predictions import read_run_info
    from train.report import evaluate_run, format_summary

    info = read_run_info(args.run_dir)
    out = args.out if args.out is not None else args.run_dir / "report"
    reports = evaluate_run(args.run_dir, out, youden_threshold=args.youden)
    lines = _header(info.synthetic)
    lines += [format_summary(r) for r in reports.values()]
    lines.append(f"report: {out / 'report.md'}")
    print("\n".join(lines))
    return EXIT_OK


def _evaluate_bundle(args: argparse.Namespace) -> int:
    """A bundle on a manifest under each of ``--profiles``, side by side."""
    from model.profiles import Profile
    from train.bundle_eval import compare_profiles
    from train.cache import CropCache
    from train.manifest import read_manifest
    from train.run import all_synthetic
    from train.splits import Splits

    if args.bundle is None or args.manifest is None or args.out is None or args.run_dir:
        print("error: --bundle needs --manifest and --out (and no RUN_DIR)", file=sys.stderr)
        return EXIT_USAGE
    try:
        profiles = [Profile.parse(p.strip()) for p in args.profiles.split(",") if p.strip()]
        manifest = read_manifest(args.manifest)
        rows = list(manifest.rows)
        if args.test_of is not None:
            test = set(Splits.read(args.test_of / "splits.json").test)
            rows = [r for r in rows if r.patient_id in test]
        if not rows:
            print("error: no manifest rows to evaluate", file=sys.stderr)
            return EXIT_FAILED
        synthetic = all_synthetic(rows)
        cache = CropCache(args.cache or manifest.path.parent / ".molsub-crop-cache")
        reports = compare_profiles(
            args.bundle, rows, profiles, args.out, cache, synthetic=synthetic, device=args.device
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    lines = _header(synthetic)
    for task, report in reports.items():
        for name, metrics in report["sets"].items():
            auc, lesion = metrics.get("auc"), metrics["lesion_level"].get("auc")
            lines.append(
                f"{task:9s} {name:16s} n={metrics['n']}: AUC {_fmt(auc)}, "
                f"lesion-level AUC {_fmt(lesion)}, ACC {_fmt(metrics['accuracy']['value'])}"
            )
        lines.append(f"report: {args.out / task / 'report.md'}")
    print("\n".join(lines))
    return EXIT_OK


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cmd_compare(args: argparse.Namespace) -> int:
    from train.compare import compare_runs, format_comparison

    try:
        result = compare_runs(args.run_a, args.run_b)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(format_comparison(result))
    return EXIT_OK


def add_evaluate_commands(sub: argparse._SubParsersAction) -> None:
    """Register `evaluate` and `compare` on the CLI's subparsers."""
    p = sub.add_parser(
        "evaluate",
        help="the paper's report (AUC, ACC, SENS, SPEC, PPV, NPV with 95%% CIs) "
        "from a training run or a predictions CSV",
    )
    p.add_argument("run_dir", nargs="?", type=Path, default=None, help="training run directory")
    p.add_argument("--predictions", type=Path, default=None, help="a predictions CSV instead")
    p.add_argument("--task", default=None, help="task of --predictions (luminal, her2, ...)")
    p.add_argument(
        "--out", type=Path, default=None, help="report directory (run default: RUN_DIR/report)"
    )
    p.add_argument(
        "--lesion-level",
        action="store_true",
        help="with --predictions: also print the lesion-level (views fused) summary",
    )
    p.add_argument("--title", default=None, help="with --predictions: report title")
    p.add_argument(
        "--synthetic", action="store_true", help="with --predictions: the data is SYNTHETIC"
    )
    p.add_argument(
        "--youden",
        action="store_true",
        help="with RUN_DIR: binary tasks called at the Youden threshold of the validation folds",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="evaluate this bundle on --manifest under each of --profiles, side by side",
    )
    p.add_argument("--manifest", type=Path, default=None, help="with --bundle: the images")
    p.add_argument(
        "--profiles",
        default="default,reference,reference-exact",
        help="with --bundle: comma-separated preprocessing profiles (the first is the "
        "reference of the paired tests)",
    )
    p.add_argument(
        "--test-of",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="with --bundle: only that training run's test patients",
    )
    p.add_argument("--cache", type=Path, default=None, help="with --bundle: crop cache folder")
    p.add_argument("--device", default="cpu", help="with --bundle: torch device")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="paired DeLong and McNemar tests of two training runs")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--json", action="store_true", help="JSON for scripts")
    p.set_defaults(func=_cmd_compare)
