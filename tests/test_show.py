"""`molsub show` on the results of a real `molsub predict` (SYNTHETIC study, UNTRAINED bundle).

The SR is read here by its content items (tests/sr_items.py, pydicom only), independently of
the highdicom read-back that `molsub show` uses, and the printed report must say the same.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from model.bundle import init_untrained
from molsub import conformance
from molsub.cli import main as molsub_main
from molsub.cli_show import add_show_command
from molsub.synth import write_synthetic_studies
from tests.sr_items import concept, value_code, walk
from worker.results.codes import CLASS_CODES, PROBABILITY_CODES, SCHEME, TASK_CONCEPTS

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MEASUREMENT_GROUP = ("DCM", "125007")
TRACKING_IDENTIFIER = ("DCM", "112039")
ALGORITHM_NAME, ALGORITHM_VERSION = ("DCM", "111001"), ("DCM", "111003")

pytestmark = pytest.mark.slow  # one `molsub predict` run for the module


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("synth")
    return write_synthetic_studies(out, patients=1, seed=5, rows=320, cols=256)[0].paths


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, study: list[Path]) -> dict[str, list[Path]]:
    """SOP class -> the files `molsub predict` wrote."""
    bundle = tmp_path_factory.mktemp("bundle") / "untrained"
    init_untrained(bundle, name="show-test", version="1.2.3")
    out = tmp_path_factory.mktemp("pred")
    argv = ["predict", "--bundle", str(bundle), "--out", str(out), *map(str, study)]
    assert molsub_main(argv) == 0
    found: dict[str, list[Path]] = {}
    for path in sorted(out.rglob("*.dcm")):
        found.setdefault(str(pydicom.dcmread(path).SOPClassUID), []).append(path)
    return found


def show(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """`molsub show ...` through add_show_command on a fresh parser."""
    parser = argparse.ArgumentParser(prog="molsub")
    add_show_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["show", *map(str, argv)])
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _flat(text: str) -> str:
    return " ".join(text.split())


def _groups(sr: Dataset) -> list[tuple[str, list[Dataset]]]:
    """(tracking identifier, content items) of every measurement group, by content item."""
    found = []
    for item in walk(sr):
        if item.ValueType == "CONTAINER" and concept(item) == MEASUREMENT_GROUP:
            children = list(item.ContentSequence)
            (tracking,) = [c for c in children if concept(c) == TRACKING_IDENTIFIER]
            found.append((str(tracking.TextValue), children))
    return found


def _section(out: str, heading: str, headings: list[str]) -> str:
    """The lines of ``out`` from ``heading`` up to the next group's heading."""
    start = out.index(f"  {heading}\n")
    ends = [out.index(f"  {h}\n", start + 1) for h in headings if f"  {h}\n" in out[start + 1 :]]
    return out[start : min(ends, default=len(out))]


def test_sr_report_has_every_probability_call_algorithm_and_source_image(
    capsys: pytest.CaptureFixture[str], results: dict[str, list[Path]], study: list[Path]
) -> None:
    (sr_path,) = results[SR_CLASS]
    sr = pydicom.dcmread(sr_path)
    code, out, err = show(capsys, sr_path)
    assert code == 0, err
    assert "RESEARCH USE ONLY" in out and "UNTRAINED" in out
    groups = _groups(sr)
    assert len(groups) == 3  # CC, MLO and the fused lesion
    headings = [name for name, _ in groups]
    probability_class = {
        code.value: CLASS_CODES[task][j].meaning
        for task, codes in PROBABILITY_CODES.items()
        for j, code in enumerate(codes)
    }
    task_concepts = {code.value: code.meaning for code in TASK_CONCEPTS.values()}
    for name, items in groups:
        section = _flat(_section(out, name, headings))
        numbers = [i for i in items if i.ValueType == "NUM" and concept(i)[0] == SCHEME]
        assert len(numbers) == sum(len(c) for c in PROBABILITY_CODES.values())
        for item in numbers:
            value = float(item.MeasuredValueSequence[0].NumericValue)
            assert f"{probability_class[concept(item)[1]]} {value:.4f}" in section, name
        calls = [i for i in items if i.ValueType == "CODE" and concept(i)[1] in task_concepts]
        assert len(calls) == len(TASK_CONCEPTS)
        for item in calls:
            meaning = item.ConceptCodeSequence[0].CodeMeaning
            assert f"{task_concepts[concept(item)[1]]}: {meaning}" in section, name
    algorithm = {
        concept(i): str(i.TextValue)
        for i in walk(sr)
        if concept(i) in (ALGORITHM_NAME, ALGORITHM_VERSION)
    }
    assert "show-test" in algorithm[ALGORITHM_NAME] and algorithm[ALGORITHM_VERSION] == "1.2.3"
    assert f"name {algorithm[ALGORITHM_NAME]}" in _flat(out)
    assert "version 1.2.3" in _flat(out)
    for path in study:
        source = pydicom.dcmread(path)
        if source.Modality != "MG":
            continue
        (line,) = [x for x in out.splitlines() if x.startswith(f"  {source.SOPInstanceUID} ")]
        assert f"{source.ImageLaterality} {source.ViewPosition}" in line


def test_sr_report_has_no_patient_data_unless_asked(
    capsys: pytest.CaptureFixture[str], results: dict[str, list[Path]]
) -> None:
    (sr_path,) = results[SR_CLASS]
    sr = pydicom.dcmread(sr_path)
    private = [str(sr.PatientName), str(sr.PatientID), str(sr.PatientBirthDate)]
    assert all(private)
    _, out, _ = show(capsys, sr_path)
    assert not [value for value in private if value in out]
    assert str(sr.StudyInstanceUID) in out
    code, out, _ = show(capsys, sr_path, "--phi")
    assert code == 0
    assert all(value in out for value in private)


@pytest.mark.parametrize("sop_class", [SC_CLASS, SEG_CLASS])
def test_sc_and_heatmap_seg_render_to_png_of_their_size(
    capsys: pytest.CaptureFixture[str],
    results: dict[str, list[Path]],
    tmp_path: Path,
    sop_class: str,
) -> None:
    for index, path in enumerate(results[sop_class]):
        ds = pydicom.dcmread(path)
        png = tmp_path / f"{index}.png"
        code, out, err = show(capsys, path, "--png", png)
        assert code == 0, err
        assert f"wrote {png}" in out and "RESEARCH USE ONLY" in out
        assert str(ds.PatientName) not in out
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == (ds.Columns, ds.Rows)
            pixels = np.asarray(image)
        if sop_class == SC_CLASS:
            assert np.array_equal(pixels, ds.pixel_array)  # the SC's own pixels
        else:
            # The fraction as a colour map: zero where the map is zero, colours where it is not.
            fraction = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns).max(axis=0)
            outside = pixels[fraction == 0]
            assert (outside == outside[0]).all()
            assert len(np.unique(pixels[fraction > 0].reshape(-1, 3), axis=0)) > 10


def test_other_files_are_refused_with_a_message(
    capsys: pytest.CaptureFixture[str],
    results: dict[str, list[Path]],
    study: list[Path],
    tmp_path: Path,
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    code, out, err = show(capsys, text)
    assert code == 1 and not out and "not a DICOM file" in err
    mg = next(p for p in study if pydicom.dcmread(p).Modality == "MG")
    code, out, err = show(capsys, mg)
    assert code == 1 and not out
    assert "Digital Mammography" in err and "input" in err
    lesion_seg = next(p for p in study if pydicom.dcmread(p).Modality == "SEG")
    code, _, err = show(capsys, lesion_seg)
    assert code == 1 and "not a Grad-CAM heatmap" in err
    code, _, err = show(capsys, results[SR_CLASS][0], "--png", tmp_path / "sr.png")
    assert code == 1 and "--png" in err
    assert not (tmp_path / "sr.png").exists()
    code, _, err = show(capsys, tmp_path / "missing.dcm")
    assert code == 1 and "no such file" in err


def test_results_are_written_in_the_transfer_syntaxes_the_statement_documents(
    results: dict[str, list[Path]],
) -> None:
    for sop_class, (_, syntax) in conformance.RESULT_OBJECTS.items():
        for path in results[sop_class]:
            assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax, path


def test_every_code_of_a_real_sr_is_named_in_the_statement(
    results: dict[str, list[Path]],
) -> None:
    """The SR tree in Annex A is written by hand: a restructured SR must update it."""
    document = conformance.DOC.read_text(encoding="utf-8")
    sr = pydicom.dcmread(results[SR_CLASS][0])
    used = {concept(item) for item in walk(sr) if "ConceptNameCodeSequence" in item}
    used |= {value_code(item) for item in walk(sr) if "ConceptCodeSequence" in item}
    missing = sorted(
        f"{scheme} {value}"
        for scheme, value in used
        if not re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", document)
    )
    assert not missing, f"docs/conformance.md Annex A does not name {missing}"
