"""`molsub train`: the paper's training protocol on a site's manifest, every default overridable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.profiles import Profile
from model.tasks import TASK_NAMES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ALL = "all"


def add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train DenseNet121-CBAM on a manifest: splits, 5-fold CV, test, report, bundle",
        description="Defaults are the paper's (AdamW lr 1e-4, weight decay 0.005, batch 8, "
        "300 epochs, dropout 0.3, cosine T_max 20 / eta_min 1e-5 per epoch, oversampling "
        "1.3 Luminal / 1.7 TN / 1.5 HER2 and five-class, flips p .5, rotation +-20, "
        "horizontal shear +-10). RESEARCH USE ONLY.",
    )
    p.add_argument("manifest", type=Path, nargs="?", help="manifest CSV (molsub dataset ...)")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--task", choices=[*TASK_NAMES, ALL], default=ALL)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--cosine-t-max", type=int, help="epochs per cosine half-cycle (20)")
    p.add_argument("--cosine-eta-min", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument(
        "--oversample", type=float, help="one oversampling rate for every task (1 = none)"
    )
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes (0)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--profile", type=Profile, choices=list(Profile), default=Profile.DEFAULT)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--bound-size", type=int, default=100)
    p.add_argument("--deploy", choices=["best-fold", "ensemble"], default="best-fold")
    p.add_argument(
        "--pretrained", type=Path, help="ImageNet DenseNet121 state-dict file (torchvision)"
    )
    p.add_argument("--name", default="trained", help="bundle name")
    p.add_argument("--version", default="", help="bundle version (default: the run's date)")
    p.add_argument("--cache", type=Path, help="crop cache (default: beside the manifest)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from train.predictions import Deploy
    from train.report import format_summary
    from train.run import DatasetError, RunSettings, resume_run, train_run, with_overrides

    progress = not args.no_progress
    try:
        if args.resume is not None:
            if args.manifest is not None or args.out is not None:
                print("error: --resume RUN_DIR takes no MANIFEST or --out", file=sys.stderr)
                return EXIT_USAGE
            result = resume_run(args.resume, device=args.device, progress=progress)
        else:
            if args.manifest is None or args.out is None:
                print("error: MANIFEST and --out RUN_DIR are required", file=sys.stderr)
                return EXIT_USAGE
            settings = RunSettings(
                tasks=TASK_NAMES if args.task == ALL else (args.task,),
                profile=args.profile,
                bound_size=args.bound_size,
                input_size=args.input_size,
                folds=args.folds,
                test_fraction=args.test_fraction,
                deploy=Deploy(args.deploy),
                pretrained=args.pretrained,
                name=args.name,
                version=args.version,
                cache_dir=args.cache,
            )
            settings = with_overrides(
                settings,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                weight_decay=args.weight_decay, cosine_t_max=args.cosine_t_max,
                cosine_eta_min=args.cosine_eta_min, dropout=args.dropout, seed=args.seed,
                num_workers=args.workers,
            )  # fmt: skip
            if args.oversample is not None:
                rates = dict.fromkeys(TASK_NAMES, args.oversample)
                settings = with_overrides(settings, oversampling=rates)
            if args.no_augment:
                from train.augment import AugmentSettings

                settings = with_overrides(settings, augment=AugmentSettings.none())
            result = train_run(
                args.manifest, args.out, settings, device=args.device, progress=progress
            )
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for report in result.reports.values():
        print(format_summary(report))
    if result.synthetic:
        print("NOTE: trained and tested on SYNTHETIC data; these figures say nothing clinical.")
    print(f"run directory  {result.run_dir}")
    print(f"report         {result.run_dir / 'report' / 'report.md'}")
    print(f"bundle         {result.bundle_dir}  (molsub model info {result.bundle_dir})")
    return EXIT_OK
