"""The README's "Train your own model", on SYNTHETIC data: dataset, training, report, node.

One command an admin runs on a fresh 2-core machine (scripts/train-demo): it makes a SYNTHETIC
dataset with `molsub synth`, builds and checks the manifest, trains a short run (the settings
below are smaller than the paper's and say so), prints the evaluation report, then starts the
node on the new bundle and sends it a SYNTHETIC study of a patient the model never saw. The
results say that the model was trained on synthetic data: its figures say nothing clinical.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import Destination
from molsub.launch import running_node, write_config

if TYPE_CHECKING:
    from molsub.synth import SynthStudy

# Smaller than the paper's protocol so that the whole demo fits in 15 minutes on 2 CPU cores.
DEMO_PATIENTS = 64
DEMO_IMAGE = (640, 512)  # rows, columns of the SYNTHETIC mammograms (pixel spacing 0.4 mm)
DEMO_SEED = 0
HELD_OUT_SEED = 99  # the study sent to the node comes from another seed: an unseen patient


@dataclass(frozen=True)
class DemoTraining:
    """The short run's settings, printed before it starts (the paper's are in brackets)."""

    tasks: tuple[str, ...] = ("luminal", "subtype5")
    epochs: int = 6  # [300]
    folds: int = 2  # [5]
    input_size: int = 128  # [224]
    bound_size: int = 50  # [100]
    lr: float = 3e-4  # [1e-4]
    cosine_t_max: int = 6  # [20]
    test_fraction: float = 0.25  # [0.2]

    def describe(self) -> str:
        return (
            f"tasks {', '.join(self.tasks)}; {self.epochs} epochs [paper 300], "
            f"{self.folds} folds [5], input {self.input_size} px [224], bound "
            f"{self.bound_size} px [100], lr {self.lr:g} [1e-4], cosine T_max "
            f"{self.cosine_t_max} [20], test fraction {self.test_fraction} [0.2]; batch 8, AdamW "
            "weight decay 0.005, dropout 0.3, oversampling and augmentations as the paper's"
        )


def run_train_demo(workdir: Path, training: DemoTraining | None = None) -> int:
    from molsub.synth import write_synthetic_studies
    from train.check import check_manifest, format_report
    from train.from_dicom import manifest_from_dicom
    from train.predictions import Deploy
    from train.report import format_summary
    from train.run import RunSettings, train_run, with_overrides

    training = training or DemoTraining()
    workdir.mkdir(parents=True, exist_ok=True)
    for leftover in ("run", "spool", "received"):
        shutil.rmtree(workdir / leftover, ignore_errors=True)
    began = time.monotonic()

    print(f"1/5 SYNTHETIC dataset: {DEMO_PATIENTS} patients, CC + MLO + lesion SEG each")
    rows, cols = DEMO_IMAGE
    write_synthetic_studies(
        workdir / "dataset", patients=DEMO_PATIENTS, seed=DEMO_SEED, rows=rows, cols=cols
    )
    manifest_path = workdir / "manifest.csv"
    manifest = manifest_from_dicom(
        workdir / "dataset", workdir / "dataset" / "labels.csv", manifest_path
    )
    print(f"2/5 manifest {manifest_path}: {len(manifest.rows)} images; molsub dataset check:")
    report = check_manifest(manifest)
    print(format_report(report))
    if not report.ok:
        return 1

    print(f"3/5 training (short settings): {training.describe()}")
    settings = RunSettings(
        tasks=training.tasks,
        input_size=training.input_size,
        bound_size=training.bound_size,
        folds=training.folds,
        test_fraction=training.test_fraction,
        deploy=Deploy.BEST_FOLD,
        name="synthetic-demo",
        version="1",
    )
    settings = with_overrides(
        settings, epochs=training.epochs, lr=training.lr, cosine_t_max=training.cosine_t_max
    )
    result = train_run(manifest_path, workdir / "run", settings)

    print("4/5 evaluation (molsub evaluate): SYNTHETIC data, not clinical performance")
    for task_report in result.reports.values():
        print(format_summary(task_report))
    print(f"    report: {result.run_dir / 'report' / 'report.md'}")
    print(f"    bundle: {result.bundle_dir} (molsub model info {result.bundle_dir})")

    print("5/5 the node on the new bundle; an unseen SYNTHETIC patient sent by C-STORE")
    import pydicom

    from worker.results.summary import summarize_sr

    study, sr_path = send_to_node(workdir, result.bundle_dir)
    print(summarize_sr(pydicom.dcmread(sr_path)))
    print(f"    true label of this SYNTHETIC patient: {study.subtype}")
    print(f"    SR {sr_path}")
    print("    The model learnt a SYNTHETIC cue: its calls mean something on synthetic data only.")
    print(f"done in {time.monotonic() - began:.0f} s")
    return 0


def send_to_node(workdir: Path, bundle_dir: Path) -> tuple[SynthStudy, Path]:
    """Start the node on ``bundle_dir``, C-STORE an unseen SYNTHETIC study, wait for the SR."""
    from molsub.demo import DEMO_TIMEOUT_S, demo_config, wait_for_results
    from molsub.synth import write_synthetic_studies
    from worker.delivery.targets import store_scu

    rows, cols = DEMO_IMAGE
    study = write_synthetic_studies(
        workdir / "unseen", patients=1, seed=HELD_OUT_SEED, rows=rows, cols=cols
    )[0]
    config = write_config(demo_config(workdir, bundle_dir), workdir / "node.toml")
    with running_node(config, workdir / "node.log", timeout_s=DEMO_TIMEOUT_S) as (_, listening):
        target = Destination(name="node", ae_title="MOLSUB", host="127.0.0.1", port=listening.port)
        store_scu(target, study.paths, calling_ae="MOLSUB_DEMO")
        sr_path, _ = wait_for_results(workdir / "received")
    return study, sr_path
