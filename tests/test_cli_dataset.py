"""`molsub dataset from-dicom` and `molsub dataset check` through their argparse registration:
SYNTHETIC studies end to end (exit 0, class counts printed), and every failure exits 1 saying why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from molsub.cli_dataset import add_dataset_commands
from molsub.synth import SynthStudy, write_synthetic_studies


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="molsub")
    add_dataset_commands(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthStudy]]:
    folder = tmp_path_factory.mktemp("synth")
    return folder, write_synthetic_studies(folder, patients=5, rows=320, cols=256)


def test_from_dicom_then_check_end_to_end(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, studies = synth
    manifest = tmp_path / "train.csv"
    assert run("dataset", "from-dicom", str(folder), "--labels", str(folder / "labels.csv"),
               "--out", str(manifest)) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"wrote 10 rows (5 patients) to {manifest}" in out
    assert manifest.is_file()
    assert run("dataset", "check", str(manifest), "--no-progress") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "10 rows (images), 5 patients" in captured.out
    for task, name in (("luminal", "non-Luminal"), ("her2", "HER2-negative"),
                       ("tn", "not triple-negative"), ("subtype5", "Luminal A")):  # fmt: skip
        assert any(line.startswith(f"{task:<10}{name}") for line in lines), captured.out
    assert [line.split() for line in lines if "Triple-negative" in line] == [
        ["Triple-negative", "2", "1"]  # images, patients
    ]
    assert lines[-1] == "OK"
    assert all(s.patient_id not in captured.out for s in studies)  # counts, not patients


def test_check_with_errors_exits_1_listing_them(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, studies = synth
    manifest = tmp_path / "m.csv"
    image = studies[0].image_paths["CC"]
    manifest.write_text(
        "patient_id,study_uid,image_path,roi_path,view,laterality,subtype\n"
        f"P1,1.2.3,{image},{tmp_path / 'missing.nii.gz'},CC,{studies[0].laterality},TN\n"
    )
    assert run("dataset", "check", str(manifest), "--no-progress") == 1
    captured = capsys.readouterr()
    assert "line 2, case" in captured.out and "missing file: ROI file not found" in captured.out
    assert captured.out.splitlines()[-1] == "NOT OK: 1 errors"
    assert "error: 1 problems; training refuses this manifest" in captured.err


def test_check_of_a_malformed_manifest_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,study_uid,image_path,roi_path,view,laterality\n")
    assert run("dataset", "check", str(manifest)) == 1
    err = capsys.readouterr().err
    assert f"error: {manifest}, line 1, column subtype: needs a subtype column" in err


def test_from_dicom_prints_what_it_left_out(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, studies = synth
    labels = tmp_path / "labels.csv"
    labels.write_text(f"study_uid,subtype\n{studies[0].study_uid},{studies[0].subtype}\n")
    assert run("dataset", "from-dicom", str(folder), "--labels", str(labels),
               "--out", str(tmp_path / "m.csv")) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "wrote 2 rows (1 patients)" in captured.out and "left out: 4" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: study")]
    assert len(warnings) == 4 and studies[1].study_uid in captured.err


def test_from_dicom_failures_exit_1(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = synth
    labels = tmp_path / "labels.csv"
    labels.write_text("study_uid,subtype\n1.2.3,TN\n")
    out = tmp_path / "m.csv"
    assert (
        run("dataset", "from-dicom", str(folder), "--labels", str(labels), "--out", str(out)) == 1
    )
    assert "error: no labelled MG image with a SEG" in capsys.readouterr().err
    assert not out.exists()
    missing = tmp_path / "absent.csv"
    assert (
        run("dataset", "from-dicom", str(folder), "--labels", str(missing), "--out", str(out)) == 1
    )
    assert f"error: {missing}, line 0: cannot be read" in capsys.readouterr().err


def test_dataset_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        run("dataset")
    assert caught.value.code == 2
    assert "from-dicom" in capsys.readouterr().err


def test_from_dicom_unwritable_out_exits_1(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = synth
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "m.csv"
    assert run("dataset", "from-dicom", str(folder), "--labels", str(folder / "labels.csv"),
               "--out", str(out)) == 1  # fmt: skip
    assert capsys.readouterr().err.startswith("error: ")
