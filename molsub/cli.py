"""`molsub`: the command line of the node (offline prediction, bundles, synthetic data).

Heavy imports (torch, highdicom) happen inside the commands so that `molsub --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import BundleError, InputError
from common.units import Unit, UnitState
from model.profiles import Profile
from molsub.cli_dataset import add_dataset_commands
from molsub.cli_evaluate import add_evaluate_commands
from molsub.cli_show import add_show_command
from molsub.cli_train import add_train_command

if TYPE_CHECKING:
    from scp.state import StateDB

log = logging.getLogger("molsub")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _cmd_synth(args: argparse.Namespace) -> int:
    from molsub.synth import write_synthetic_studies

    studies = write_synthetic_studies(args.out, patients=args.patients, seed=args.seed)
    print(
        f"wrote {len(studies)} SYNTHETIC studies to {args.out} (labels: {args.out / 'labels.csv'})"
    )
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    from molsub.predict import predict_files

    report = predict_files(
        args.files, bundle_dir=args.bundle, out_dir=args.out, device=args.device, write_png=True
    )
    for unit in report.units:
        print(unit.summary)
        for path in unit.written:
            print(f"  wrote {path}")
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    if not report.units and not report.failures:
        print("error: no SEG among the inputs: nothing to predict", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if report.failures else EXIT_OK


def _cmd_model_init(args: argparse.Namespace) -> int:
    from model.bundle import init_untrained

    if not args.untrained:
        print(
            "error: only --untrained initialisation is offered; train/ makes trained bundles",
            file=sys.stderr,
        )
        return EXIT_USAGE
    info = init_untrained(
        args.out,
        name=args.name,
        version=args.version,
        seed=args.seed,
        imagenet_checkpoint=args.imagenet,
    )
    print(f"wrote UNTRAINED bundle {info.display_name} to {args.out} (digest {info.digest[:16]})")
    return EXIT_OK


def _cmd_model_import(args: argparse.Namespace) -> int:
    from model.reference_import import import_reference

    files = {"luminal": args.luminal, "her2": args.her2, "tn": args.tn, "subtype5": args.subtype5}
    kwargs = {"version": args.version} if args.version else {}
    info = import_reference(files, args.out, name=args.name, profile=args.profile, **kwargs)
    print(f"wrote bundle {info.display_name} (profile {info.profile}) to {args.out}")
    return EXIT_OK


def _cmd_model_info(args: argparse.Namespace) -> int:
    from model.bundle_info import read_bundle_info

    info = read_bundle_info(args.bundle)
    print(f"bundle      {args.bundle}")
    print(f"name        {info.display_name}")
    print(f"digest      {info.digest}")
    print(f"device UID  {info.device_uid}")
    print(f"profile     {info.profile} (input {info.input_size} px, bound {info.bound_size} px)")
    print(f"untrained   {'yes' if info.untrained else 'no'}")
    for task, classes in info.tasks.items():
        files = ", ".join(m.file for m in info.members[task])
        kind = f"ensemble of {len(info.members[task])}" if info.is_ensemble(task) else "one network"
        print(f"task        {task}: {', '.join(classes)} ({kind}: {files}; "
              f"sha256 {info.weights_sha256[task][:16]})")  # fmt: skip
    if info.synthetic_training_data:
        print("training    SYNTHETIC data: predictions mean something on synthetic data only")
    metrics = info.provenance.get("test_metrics") or {}
    for task, m in metrics.items():
        print(f"metrics     {task}: {_format_metrics(m)}")
    skip = {"test_metrics", "splits", "settings", "folds"}
    for key, value in info.provenance.items():
        if key not in skip:
            print(f"provenance  {key}: {value}")
    if "settings" in info.provenance:
        print("provenance  settings, splits, folds: see bundle.json")
    print("all weights files verified against bundle.json")
    return EXIT_OK


def _format_metrics(m: dict[str, Any]) -> str:
    """Test-set AUC with its CI, accuracy, lesion-level AUC and CV mean +- SD, as recorded."""

    def num(x: object) -> str:
        return f"{x:.3f}" if isinstance(x, int | float) else "n/a"

    ci = m.get("auc_ci95") or [None, None]
    cv = m.get("cv_auc") or {}
    return (
        f"test AUC {num(m.get('auc'))} (95% CI {num(ci[0])}-{num(ci[1])}, n={m.get('n')}), "
        f"ACC {num(m.get('accuracy'))}, lesion-level AUC {num(m.get('lesion_auc'))}, "
        f"CV AUC {num(cv.get('mean'))} +- {num(cv.get('sd'))}"
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from molsub.node import serve_main

    return serve_main(
        args.config, check_only=args.check, workers=not args.no_workers, port=args.port
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    from molsub.config import load_node_config
    from worker.queue.app import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    run_worker(load_node_config(args.config), queues)
    return EXIT_OK


def _cmd_units(args: argparse.Namespace) -> int:
    from molsub.config import load_node_config
    from scp.state import format_units, unit_status

    config = load_node_config(args.config)
    units = unit_status(config.node.spool_dir, args.state)
    if args.json:
        print(json.dumps([u.as_dict() for u in units], indent=2))
    else:
        print(format_units(units))
    return EXIT_OK


def _reset(db: StateDB, unit: Unit) -> bool:
    """Forget what the workers reported, then make the unit ready (in this order: the node
    must not see the old failure again once the unit is back in flight)."""
    from common.progress import ProgressFiles

    ProgressFiles(db.root).clear(unit.unit_id)
    return db.retry(unit.unit_id)


def _cmd_retry(args: argparse.Namespace) -> int:
    from common.spool_layout import SpoolLayout
    from molsub.config import load_node_config
    from scp.state import StateDB

    config = load_node_config(args.config)
    layout = SpoolLayout.at(config.node.spool_dir)
    if not layout.state_db.exists():
        print(f"error: no state database in {layout.root}", file=sys.stderr)
        return EXIT_FAILED
    db = StateDB(layout.state_db)
    try:
        unit = db.get_unit(args.unit)
        if unit is None:
            print(f"error: no unit {args.unit} in {layout.root}", file=sys.stderr)
            return EXIT_FAILED
        if unit.state not in (UnitState.FAILED, UnitState.TIMED_OUT) or not _reset(db, unit):
            print(
                f"error: unit {args.unit} is {unit.state}; only failed or timed-out units "
                "are retried",
                file=sys.stderr,
            )
            return EXIT_FAILED
    finally:
        db.close()
    print(f"unit {args.unit}: ready again; the running node enqueues it from its spooled objects")
    return EXIT_OK


def _cmd_resend(args: argparse.Namespace) -> int:
    from molsub.config import load_node_config
    from worker.delivery.send import resend
    from worker.delivery.store import DestinationState, ResultNotFound

    config = load_node_config(args.config)
    try:
        outcome = resend(args.unit, config)
    except ResultNotFound as exc:
        print(f"error: no recorded results for unit {args.unit} ({exc})", file=sys.stderr)
        return EXIT_FAILED
    for name, state in outcome.items():
        print(f"{name}: {state}")
    sent = all(state == DestinationState.SENT for state in outcome.values())
    return EXIT_OK if sent else EXIT_FAILED


def _cmd_purge(args: argparse.Namespace) -> int:
    from molsub.config import load_node_config
    from molsub.purge import PurgeRefused, purge_expired, purge_study

    config = load_node_config(args.config)
    spool = config.node.spool_dir
    if args.expired:
        if args.study:
            print("error: give a STUDY or --expired, not both", file=sys.stderr)
            return EXIT_USAGE
        hours = config.node.retention_hours
        if hours <= 0:
            print("error: [node] retention_hours is 0: nothing expires", file=sys.stderr)
            return EXIT_FAILED
        swept = purge_expired(spool, hours)
        print(
            f"retention ({hours:g} h after delivery): {len(swept.units)} unit(s), "
            f"{swept.objects} received object(s) and {swept.result_objects} result object(s) "
            f"deleted, {swept.kept_shared} kept (needed by other units, or received again "
            "within the retention time)"
        )
        return EXIT_OK
    if not args.study:
        print("error: give the Study Instance UID to purge (or --expired)", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = purge_study(spool, args.study, force=args.force)
    except PurgeRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not report.anything:
        print(f"error: study {args.study}: nothing of it in {spool}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(report.lines(spool)))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.train:
        from molsub.train_demo import run_train_demo

        return run_train_demo(args.workdir)
    from molsub.demo import run_demo

    return run_demo(args.workdir, offline=args.offline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molsub",
        description="Breast cancer molecular subtype from mammograms. RESEARCH USE ONLY, "
        "not a medical device.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (UIDs only)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write SYNTHETIC MG studies with lesion SEGs and labels")
    p.add_argument("out", type=Path)
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "predict", help="MG + SEG files in; SR, Secondary Captures, heatmap SEGs out"
    )
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("files", nargs="+", type=Path, help="DICOM files or directories")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("serve", help="run the node: C-STORE SCP, dispatcher, local workers")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="node.toml (default: $MOLSUB_CONFIG, else built-in defaults)",
    )
    p.add_argument("--check", action="store_true", help="validate the config, say what it does")
    p.add_argument("--no-workers", action="store_true", help="do not start local workers")
    p.add_argument("--port", type=int, default=None, help="override [node] port (0: any free)")
    p.set_defaults(func=_cmd_serve, private=True)

    p = sub.add_parser("worker", help="run a Celery worker for some queues (e.g. infer on a GPU)")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument(
        "--queues", default="prepare,infer,deliver", help="comma-separated: prepare, infer, deliver"
    )
    p.set_defaults(func=_cmd_worker, private=True)

    p = sub.add_parser("units", help="list the spool's units and their states")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument(
        "--state",
        type=UnitState,
        choices=list(UnitState),
        default=None,
        help="only units in this state",
    )
    p.add_argument("--json", action="store_true", help="JSON for scripts, one object per unit")
    p.set_defaults(func=_cmd_units)

    p = sub.add_parser(
        "retry", help="run a failed or timed-out unit again from its spooled objects"
    )
    p.add_argument("unit", help="unit id (the SEG's SOP Instance UID)")
    p.add_argument("--config", type=Path, default=None)
    p.set_defaults(func=_cmd_retry, private=True)

    p = sub.add_parser("resend", help="send a unit's recorded results to the destinations again")
    p.add_argument("unit", help="unit id (the SEG's SOP Instance UID)")
    p.add_argument("--config", type=Path, default=None)
    p.set_defaults(func=_cmd_resend, private=True)

    p = sub.add_parser(
        "purge",
        help="remove a study everywhere the node keeps it: spool, results, state database",
    )
    p.add_argument("study", nargs="?", help="Study Instance UID")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument(
        "--force", action="store_true", help="purge even while a unit of the study is in flight"
    )
    p.add_argument(
        "--expired",
        action="store_true",
        help="instead: one retention sweep now ([node] retention_hours; the node runs them too)",
    )
    p.set_defaults(func=_cmd_purge, private=True)

    p = sub.add_parser(
        "demo", help="the node on embedded defaults: SYNTHETIC study in by C-STORE, results out"
    )
    p.add_argument("--workdir", type=Path, default=Path("demo"))
    p.add_argument(
        "--offline",
        action="store_true",
        help="no node: run `molsub predict` in this process instead",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="admin quickstart: SYNTHETIC dataset, a short training run, its report, then the "
        "node on the new bundle",
    )
    p.set_defaults(func=_cmd_demo)

    model = sub.add_parser("model", help="model bundles").add_subparsers(
        dest="model_cmd", required=True
    )
    p = model.add_parser("init", help="write a randomly initialised (UNTRAINED) bundle")
    p.add_argument("--untrained", action="store_true", help="required: says what you get")
    p.add_argument("--name", default="untrained")
    p.add_argument("--version", default="0.0.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--imagenet",
        type=Path,
        default=None,
        help="ImageNet DenseNet121 state-dict file to initialise the backbone",
    )
    p.add_argument("out", type=Path)
    p.set_defaults(func=_cmd_model_init)

    p = model.add_parser("import-reference", help="import the authors' published checkpoints")
    # The authors' published file name for each task's checkpoint.
    for task, published in (
        ("luminal", "prefered_model_for_l.pth"),
        ("her2", "prefered_model_for_HER2.pth"),
        ("tn", "prefered_model_for_tn.pth"),
        ("subtype5", "prefered_model_for_ms.pth"),
    ):
        p.add_argument(f"--{task}", type=Path, required=True, help=f"their {published}")
    p.add_argument("--name", default="luo2025-reference")
    p.add_argument(
        "--profile",
        type=Profile,
        choices=[Profile.REFERENCE, Profile.REFERENCE_EXACT],
        default=Profile.REFERENCE,
        help="reference: their intensities, our crop geometry; reference-exact: their crop "
        "and resize too (docs/profiles.md)",
    )
    p.add_argument("--version", default=None, help="default: the authors' release")
    p.add_argument("out", type=Path)
    p.set_defaults(func=_cmd_model_import)

    p = model.add_parser("info", help="show and verify a bundle")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=_cmd_model_info)

    add_dataset_commands(sub)
    add_train_command(sub)
    add_evaluate_commands(sub)
    add_show_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "private", False):
        # The commands that write the spool (patient data) and the processes they start:
        # whatever they create is the node user's alone (common/private.py).
        from common.private import set_private_umask

        set_private_umask()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        # pydicom warns about each invalid value it reads with the value itself: patient data.
        # The node checks values on its own terms (worker/results/source_header.py) and logs
        # keywords and UIDs only; -v (debug) lets pydicom speak.
        import pydicom.config

        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    from molsub.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BundleError, InputError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
