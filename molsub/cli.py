"""`molsub`: the command line of the node (offline prediction, bundles, synthetic data).

Heavy imports (torch, highdicom) happen inside the commands so that `molsub --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import BundleError, InputError
from common.logs import LOG_FORMAT_ENV, choose_format, configure_logging
from common.settings import LogFormat, LogSettings
from common.units import UnitState
from model.profiles import Profile
from molsub.cli_dataset import add_dataset_commands
from molsub.cli_evaluate import add_evaluate_commands
from molsub.cli_show import add_show_command
from molsub.cli_train import add_train_command
from worker.queue.metrics import METRICS_PORT_ENV

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
    from model.bundle_info import format_test_metrics, read_bundle_info

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
        print(f"metrics     {task}: {format_test_metrics(m)}")
    skip = {"test_metrics", "splits", "settings", "folds"}
    for key, value in info.provenance.items():
        if key not in skip:
            print(f"provenance  {key}: {value}")
    if "settings" in info.provenance:
        print("provenance  settings, splits, folds: see bundle.json")
    print("all weights files verified against bundle.json")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from molsub.config import load_node_config
    from molsub.node import serve_main

    _configure_logs(args, load_node_config(args.config).logging)

    return serve_main(
        args.config,
        check_only=args.check,
        workers=not args.no_workers,
        port=args.port,
        http_port=args.http_port,
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    from molsub.config import load_node_config
    from worker.queue.app import run_worker

    config = load_node_config(args.config)
    _configure_logs(args, config.logging)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    run_worker(config, queues, metrics_port=_metrics_port(args), metrics_host=args.metrics_host)
    return EXIT_OK


def _metrics_port(args: argparse.Namespace) -> int:
    """--metrics-port, else $MOLSUB_WORKER_METRICS_PORT, else 0 (off)."""
    from molsub.config import ConfigError

    if args.metrics_port is not None:
        return int(args.metrics_port)
    value = os.environ.get(METRICS_PORT_ENV, "").strip() or "0"
    if not value.isdigit() or int(value) > 65535:
        raise ConfigError(f"${METRICS_PORT_ENV}: a TCP port 0..65535 (0: off), got {value!r}")
    return int(value)


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


def _cmd_retry(args: argparse.Namespace) -> int:
    from common.spool_layout import SpoolLayout
    from molsub.config import load_node_config
    from molsub.unit_actions import RetryOutcome, retry_unit
    from scp.state import StateDB

    config = load_node_config(args.config)
    layout = SpoolLayout.at(config.node.spool_dir)
    if not layout.state_db.exists():
        print(f"error: no state database in {layout.root}", file=sys.stderr)
        return EXIT_FAILED
    db = StateDB(layout.state_db)
    try:
        result = retry_unit(db, args.unit)
    finally:
        db.close()
    if result.outcome is RetryOutcome.UNKNOWN:
        print(f"error: no unit {args.unit} in {layout.root}", file=sys.stderr)
        return EXIT_FAILED
    if result.outcome is not RetryOutcome.RETRIED:
        print(f"error: unit {args.unit}: {result.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"unit {args.unit}: {result.message}")
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


def _add_log_format(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--log-format, global and (with a SUPPRESS default: the global one stands) after the
    process commands too, where scripts put their options."""
    parser.add_argument(
        "--log-format",
        choices=[str(f) for f in LogFormat],
        default=default,
        help=f"text (default) or json: one object per line (${LOG_FORMAT_ENV}, [logging] format)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molsub",
        description="Breast cancer molecular subtype from mammograms. RESEARCH USE ONLY, "
        "not a medical device.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (UIDs only)")
    _add_log_format(parser, None)
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
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="override [http] port: status page, /healthz, /readyz, /metrics (0: off)",
    )
    _add_log_format(p, argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve, private=True)

    p = sub.add_parser("worker", help="run a Celery worker for some queues (e.g. infer on a GPU)")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument(
        "--queues", default="prepare,infer,deliver", help="comma-separated: prepare, infer, deliver"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help=f"serve this worker's Prometheus metrics on PORT (0: off; ${METRICS_PORT_ENV})",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    _add_log_format(p, argparse.SUPPRESS)
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


def _configure_logs(args: argparse.Namespace, configured: LogSettings | None = None) -> None:
    """Logging by --log-format > $MOLSUB_LOGGING_FORMAT > [logging] format > text.

    main() calls it before a command loads its config; serve and worker again with the
    config's [logging]. A --log-format is put in the environment, where the config's override
    and the local workers `molsub serve` starts find it too.
    """
    from molsub.config import ConfigError

    flag = getattr(args, "log_format", None)
    if flag:
        os.environ[LOG_FORMAT_ENV] = str(flag)
    try:
        log_format = choose_format(flag, os.environ, configured.format if configured else None)
    except ValueError:
        raise ConfigError(
            f"${LOG_FORMAT_ENV}: one of {', '.join(LogFormat)}, got {os.environ[LOG_FORMAT_ENV]!r}"
        ) from None
    level = configured.level.upper() if configured else logging.INFO
    configure_logging(log_format, level=level, verbose=args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "private", False):
        # The commands that write the spool (patient data) and the processes they start:
        # whatever they create is the node user's alone (common/private.py).
        from common.private import set_private_umask

        set_private_umask()
    from molsub.config import ConfigError

    try:
        _configure_logs(args)
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BundleError, InputError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
