"""End to end on `molsub synth` data: dataset -> `molsub train` -> report -> bundle -> predict and
the node. All data here is SYNTHETIC; the AUC asserted is that the pipeline learns the synthetic
subtype cue on held-out patients, nothing clinical.

The run is short so that it fits CI (a few minutes on 2 cores): 64 patients at 640x512, the
luminal task, 2 folds x 6 epochs, input 128 px, bound 50 px, lr 3e-4 with T_max 6 (the settings
of `molsub demo --train`). It reached a test AUC of 0.88 (95% CI 0.76-1.00; image level, 32
images of 16 held-out patients; lesion level 0.87) when written; the test asserts at least 0.75,
chance being 0.5.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from common.errors import BundleError
from model.bundle_info import read_bundle_info
from molsub.cli import main
from molsub.synth import write_synthetic_studies
from molsub.train_demo import DEMO_IMAGE, send_to_node
from tests.validators import dciodvfy_errors, pixelmed_sr_errors
from train.from_dicom import manifest_from_dicom
from train.manifest import read_manifest
from train.run import DatasetError, RunSettings, resume_run, train_run
from train.splits import Splits
from worker.results.summary import fused_results, summarize_sr

MIN_TEST_AUC = 0.75
TRAIN_ARGS = [
    "--task", "luminal", "--epochs", "6", "--folds", "2", "--input-size", "128",
    "--bound-size", "50", "--lr", "3e-4", "--cosine-t-max", "6", "--test-fraction", "0.25",
    "--no-progress", "--name", "e2e", "--version", "1",
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-e2e")
    rows, cols = DEMO_IMAGE
    write_synthetic_studies(root / "data", patients=64, seed=0, rows=rows, cols=cols)
    manifest_from_dicom(root / "data", root / "data" / "labels.csv", root / "manifest.csv")
    code = main(["train", str(root / "manifest.csv"), "--out", str(root / "run"), *TRAIN_ARGS])
    assert code == 0
    return root / "run"


def test_a_short_cpu_run_learns_the_synthetic_cue_on_held_out_patients(run: Path) -> None:
    report = json.loads((run / "report" / "luminal" / "report.json").read_text())
    assert report["task"] == "luminal" and report["positive_class"] == "Luminal"
    assert report["n"] == 32  # 16 held-out patients, CC + MLO
    assert report["auc"] >= MIN_TEST_AUC, report["auc"]
    lo, hi = report["auc_ci95"]
    assert lo <= report["auc"] <= hi
    assert report["lesion_level"]["n"] == 16 and report["lesion_level"]["auc"] >= MIN_TEST_AUC
    assert report["synthetic"] is True
    assert len(report["folds"]) == 2
    text = (run / "report" / "report.md").read_text()
    assert "SYNTHETIC" in text and "Fold 1" in text and "Test" in text


def test_no_patient_crosses_the_splits_and_the_run_records_everything(run: Path) -> None:
    manifest = read_manifest(json.loads((run / "config.json").read_text())["manifest"]["path"])
    splits = Splits.read(run / "splits.json")
    test = set(splits.test)
    for fold in splits.folds:
        assert not set(fold.train) & set(fold.val) and not (set(fold.train) | set(fold.val)) & test
    val_csv = run / "predictions" / "luminal" / "val_fold1.csv"
    with val_csv.open() as f:
        val_patients = {row["patient_id"] for row in csv.DictReader(f)}
    assert val_patients == set(splits.folds[0].val)
    with (run / "metrics.csv").open() as f:
        epochs = list(csv.DictReader(f))
    assert [(int(e["fold"]), int(e["epoch"])) for e in epochs] == [
        (k, e) for k in (1, 2) for e in range(1, 7)
    ]
    info = read_bundle_info(run / "bundle")
    assert list(info.tasks) == ["luminal"] and not info.untrained
    assert info.synthetic_training_data and "SYNTHETIC" in info.display_name
    prov = info.provenance
    assert prov["manifest_sha256"] == manifest.sha256
    assert prov["splits"]["test"] == sorted(test)
    assert prov["deploy"] == "best-fold" and prov["best_fold"]["luminal"] in (1, 2)
    assert prov["test_metrics"]["luminal"]["auc"] == pytest.approx(
        json.loads((run / "report" / "luminal" / "report.json").read_text())["auc"]
    )
    assert len(prov["code"]["git_commit"] or "x" * 40) == 40


def test_model_info_shows_provenance_and_metrics(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "info", str(run / "bundle")]) == 0
    out = capsys.readouterr().out
    assert "metrics     luminal: test AUC" in out
    assert "SYNTHETIC data" in out and "manifest_sha256" in out


def test_the_bundle_runs_in_predict_with_a_valid_sr(run: Path, tmp_path: Path) -> None:
    rows, cols = DEMO_IMAGE
    study = write_synthetic_studies(tmp_path / "s", patients=1, seed=77, rows=rows, cols=cols)[0]
    code = main(["predict", "--bundle", str(run / "bundle"), "--out", str(tmp_path / "out"),
                 *map(str, study.paths)])  # fmt: skip
    assert code == 0
    srs = [p for p in (tmp_path / "out").rglob("*.dcm") if pydicom.dcmread(p).Modality == "SR"]
    assert len(srs) == 1
    sr = pydicom.dcmread(srs[0])
    summary = summarize_sr(sr)
    assert "luminal:" in summary and "subtype:" not in summary  # a luminal-only bundle
    assert "SYNTHETIC data only" in summary
    (fused,) = fused_results(sr)
    assert set(fused.probabilities) == {"luminal"}
    assert dciodvfy_errors(srs[0]) == []
    assert pixelmed_sr_errors(srs[0]) == []


def test_the_bundle_runs_in_the_node(run: Path, tmp_path: Path) -> None:
    study, sr_path = send_to_node(tmp_path, run / "bundle")
    sr = pydicom.dcmread(sr_path)
    info = read_bundle_info(run / "bundle")
    devices = [str(i.DeviceUID) for i in sr.ContributingEquipmentSequence if "DeviceUID" in i]
    assert info.device_uid in devices  # the trained weights, named in the node's output
    assert sr.PatientID == study.patient_id
    assert "SYNTHETIC-TRAINED" in sr.SeriesDescription


def test_resume_and_an_ensemble_deployment_reuse_the_finished_folds(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished fold is not trained again: resuming a complete run rebuilds the same bundle;
    the same folds deployed as an ensemble give a bundle that averages both."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    resumed = resume_run(copy, progress=False)
    assert read_bundle_info(resumed.bundle_dir).digest == read_bundle_info(run / "bundle").digest

    config = json.loads((copy / "config.json").read_text())
    config["settings"]["deploy"] = "ensemble"
    (copy / "config.json").write_text(json.dumps(config))
    ensemble = resume_run(copy, progress=False)
    info = read_bundle_info(ensemble.bundle_dir)
    assert info.is_ensemble("luminal") and len(info.members["luminal"]) == 2

    rows, cols = DEMO_IMAGE
    study = write_synthetic_studies(tmp_path / "s", patients=1, seed=78, rows=rows, cols=cols)[0]
    assert main(["predict", "--bundle", str(ensemble.bundle_dir), "--out",
                 str(tmp_path / "out"), *map(str, study.paths)]) == 0  # fmt: skip

    # Paired comparison of the two deployments on the same test patients.
    capsys.readouterr()
    assert main(["compare", str(run), str(copy), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert "luminal" in json.dumps(compared)


def test_profiles_compare_on_the_same_images_and_weights(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((run / "config.json").read_text())["manifest"]["path"]
    capsys.readouterr()
    code = main(["evaluate", "--bundle", str(run / "bundle"), "--manifest", manifest,
                 "--test-of", str(run), "--out", str(tmp_path / "profiles")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "profiles" / "luminal" / "report.json").read_text())
    assert list(report["sets"]) == ["default", "reference", "reference-exact"]
    run_report = json.loads((run / "report" / "luminal" / "report.json").read_text())
    # The default profile is what the run trained and tested on: the same figure exactly.
    assert report["sets"]["default"]["auc"] == pytest.approx(run_report["auc"])
    assert "reference-exact" in report["paired"]


def test_training_refuses_a_manifest_with_errors(run: Path, tmp_path: Path) -> None:
    source = Path(json.loads((run / "config.json").read_text())["manifest"]["path"])
    lines = source.read_text().splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    first[header.index("image_path")] = "missing.dcm"
    bad = tmp_path / "manifest.csv"
    bad.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    shutil.copytree(source.parent / "data", tmp_path / "data")
    with pytest.raises(DatasetError, match="training refused"):
        train_run(bad, tmp_path / "run", RunSettings(tasks=("luminal",)), progress=False)
    assert not (tmp_path / "run").exists()
    assert main(["train", str(bad), "--out", str(tmp_path / "run2"), "--no-progress"]) == 1


def test_a_run_directory_is_never_overwritten(run: Path) -> None:
    with pytest.raises(FileExistsError):
        train_run(Path("unused.csv"), run, RunSettings(), progress=False)
    with pytest.raises((FileNotFoundError, BundleError)):
        resume_run(run / "bundle", progress=False)
