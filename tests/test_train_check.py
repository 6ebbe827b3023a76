"""ROI masks (NIfTI and NRRD written by SimpleITK, DICOM SEGs) and `check_manifest`: every kind
of problem reported with its line and case, real vendor header variants passing, an undecodable
real image reported rather than crashing, class counts per image and per patient."""

from __future__ import annotations

import csv
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from molsub.synth import write_synthetic_studies
from tests.factories import disk_mask, make_mg, make_seg
from tests.header_cases import CASES, build_case
from train.check import IssueKind, check_manifest, format_report
from train.manifest import Manifest, read_manifest
from train.masks import MaskError, MaskProblem, RoiMasks, read_roi_mask

ROWS, COLS = 64, 48
COLUMNS = ("patient_id", "study_uid", "image_path", "roi_path", "view", "laterality")


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_mask(arr: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def write_rows(path: Path, rows: Sequence[dict[str, str]]) -> Manifest:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return read_manifest(path)


def row(image: str, roi: str, *, patient: str = "P1", subtype: str = "LumA", **extra: str) -> dict:
    base = {
        "patient_id": patient,
        "study_uid": "1.2.3",
        "image_path": image,
        "roi_path": roi,
        "view": "CC",
        "laterality": "L",
        "subtype": subtype,
        "segment": "",
    }
    return {**base, **extra}


@pytest.fixture
def mg() -> Dataset:
    return make_mg(rows=ROWS, cols=COLS, laterality="L", view="CC", seed=3)


# --------------------------------------------------------------------------------------------
# Masks from files SimpleITK writes


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_mask_file_on_the_image_grid(tmp_path: Path, mg: Dataset, suffix: str) -> None:
    disk = disk_mask((ROWS, COLS), (20, 30), 6)
    path = write_mask(disk.astype(np.uint8), tmp_path / f"roi{suffix}")
    np.testing.assert_array_equal(read_roi_mask(path, mg), disk)


def test_mask_file_with_a_singleton_z_as_itk_snap_writes(tmp_path: Path, mg: Dataset) -> None:
    disk = disk_mask((ROWS, COLS), (40, 10), 5)
    path = write_mask(disk[None].astype(np.uint8), tmp_path / "roi.nii.gz")
    assert sitk.ReadImage(str(path)).GetDimension() == 3
    np.testing.assert_array_equal(read_roi_mask(path, mg), disk)


def test_label_map_segment_selects_a_label(tmp_path: Path, mg: Dataset) -> None:
    labels = np.zeros((ROWS, COLS), np.uint8)
    labels[5:10, 5:10], labels[30:40, 20:30] = 1, 2
    path = write_mask(labels, tmp_path / "labels.nrrd")
    assert read_roi_mask(path, mg).sum() == 25 + 100
    assert read_roi_mask(path, mg, 2).sum() == 100
    with pytest.raises(MaskError, match="no pixel has label 3") as caught:
        read_roi_mask(path, mg, 3)
    assert caught.value.problem is MaskProblem.EMPTY


@pytest.mark.parametrize(
    ("arr", "problem", "reason"),
    [
        (
            np.zeros((COLS, ROWS), np.uint8),
            MaskProblem.GRID,
            "48x64 (rows x columns), the image 64x48 (transposed?)",
        ),  # fmt: skip
        (np.zeros((ROWS, COLS + 1), np.uint8), MaskProblem.GRID, "64x49"),
        (np.zeros((2, ROWS, COLS), np.uint8), MaskProblem.GRID, "not one 2-D slice"),
        (np.zeros((ROWS, COLS), np.uint8), MaskProblem.EMPTY, "no nonzero pixel"),
    ],
)
def test_bad_mask_files(
    tmp_path: Path, mg: Dataset, arr: np.ndarray, problem: MaskProblem, reason: str
) -> None:
    path = write_mask(arr, tmp_path / "roi.nii.gz")
    with pytest.raises(MaskError) as caught:
        read_roi_mask(path, mg)
    assert caught.value.problem is problem and reason in caught.value.reason
    assert str(path) in str(caught.value)


def test_unreadable_and_vector_mask_files(tmp_path: Path, mg: Dataset) -> None:
    garbage = tmp_path / "roi.nii.gz"
    garbage.write_bytes(b"not a NIfTI file at all")
    with pytest.raises(MaskError, match="SimpleITK cannot read it") as caught:
        read_roi_mask(garbage, mg)
    assert caught.value.problem is MaskProblem.UNREADABLE
    rgb = sitk.GetImageFromArray(np.zeros((ROWS, COLS, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(MaskError, match="several components"):
        read_roi_mask(tmp_path / "rgb.nrrd", mg)


# --------------------------------------------------------------------------------------------
# Masks from DICOM SEGs


def test_seg_masks_union_and_segment(tmp_path: Path, mg: Dataset) -> None:
    other = make_mg(rows=ROWS, cols=COLS, laterality="L", view="MLO", seed=4)
    one, two = disk_mask((ROWS, COLS), (15, 15), 4), disk_mask((ROWS, COLS), (45, 30), 5)
    seg = make_seg([mg, other], [np.stack([one, two]), np.stack([one, np.zeros_like(one)])])
    path = save(seg, tmp_path / "seg")  # any file name
    masks = RoiMasks()
    np.testing.assert_array_equal(masks.mask(path, mg), one | two)
    np.testing.assert_array_equal(masks.mask(path, mg, 2), two)
    np.testing.assert_array_equal(masks.mask(path, other), one)
    with pytest.raises(MaskError, match="segment 2 is not drawn on image") as caught:
        masks.mask(path, other, 2)
    assert caught.value.problem is MaskProblem.EMPTY
    with pytest.raises(MaskError, match=r"has no segment 3 \(it has 1, 2\)"):
        masks.mask(path, mg, 3)


def test_seg_problems(tmp_path: Path, mg: Dataset) -> None:
    seg = save(make_seg([mg], [disk_mask((ROWS, COLS), (20, 20), 5)]), tmp_path / "seg.dcm")
    stranger = make_mg(rows=ROWS, cols=COLS, seed=5)
    with pytest.raises(MaskError) as caught:
        read_roi_mask(seg, stranger)
    assert caught.value.problem is MaskProblem.NOT_ON_IMAGE
    assert str(stranger.SOPInstanceUID) in caught.value.reason
    resized = make_mg(rows=ROWS + 8, cols=COLS, seed=6)
    resized.SOPInstanceUID = mg.SOPInstanceUID
    with pytest.raises(MaskError, match="mask is 64x48 .*the image 72x48") as caught:
        read_roi_mask(seg, resized)
    assert caught.value.problem is MaskProblem.GRID
    image_as_roi = save(mg, tmp_path / "image.dcm")
    with pytest.raises(MaskError, match="not a DICOM Segmentation") as caught:
        read_roi_mask(image_as_roi, mg)
    assert caught.value.problem is MaskProblem.UNREADABLE
    text = tmp_path / "roi.dcm"
    text.write_text("no DICOM here")
    with pytest.raises(MaskError, match="not a DICOM file") as caught:
        read_roi_mask(text, mg)
    assert caught.value.problem is MaskProblem.UNREADABLE


# --------------------------------------------------------------------------------------------
# check_manifest on good data


def test_synthetic_studies_pass_with_counts(tmp_path: Path) -> None:
    write_synthetic_studies(tmp_path, patients=5, rows=320, cols=256)
    from train.from_dicom import manifest_from_dicom

    manifest = manifest_from_dicom(tmp_path, tmp_path / "labels.csv", tmp_path / "m.csv")
    report = check_manifest(manifest)
    assert report.ok and report.errors == [] and report.warnings == []
    assert (report.rows, report.patients) == (10, 5)
    five = {c.name: (c.images, c.patients) for c in report.counts["subtype5"]}
    assert five == {name: (2, 1) for name in five} and len(five) == 5
    luminal = {c.name: (c.images, c.patients) for c in report.counts["luminal"]}
    assert luminal == {"non-Luminal": (6, 3), "Luminal": (4, 2)}
    assert list(report.counts) == ["luminal", "her2", "tn", "subtype5"]
    text = format_report(report)
    assert "subtype5  Luminal A                    2         1" in text
    assert text.splitlines()[-1] == "OK"


def write_header_cases(samples: Path, folder: Path) -> list[dict[str, str]]:
    rows = []
    for index, case in enumerate(CASES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cases' invalid values, on purpose
            mg, seg = build_case(case, samples, index)
            save(mg, folder / case.name / "MG.dcm")
            save(seg, folder / case.name / "SEG.dcm")
        rows.append(
            row(f"{case.name}/MG.dcm", f"{case.name}/SEG.dcm", patient=f"P{index}", subtype="TN")
        )
    return rows


def test_real_vendor_header_variants_pass(samples_dir: Path, tmp_path: Path) -> None:
    manifest = write_rows(tmp_path / "m.csv", write_header_cases(samples_dir, tmp_path))
    report = check_manifest(manifest)
    assert report.errors == [], format_report(report)
    assert report.ok and report.rows == len(CASES)
    text = format_report(report)
    for name in ("Müller", "王", "MAMMOGRAPHY", "Noël"):  # patient names of the cases
        assert name not in text


def test_undecodable_real_image_is_reported_not_raised(samples_dir: Path, tmp_path: Path) -> None:
    rows = write_header_cases(samples_dir, tmp_path)
    broken = tmp_path / "type2-missing" / "MG.dcm"
    ds = pydicom.dcmread(broken)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:32] + bytes(len(frame) - 32)])  # header kept, data lost
    ds.save_as(broken, enforce_file_format=True)
    report = check_manifest(write_rows(tmp_path / "m.csv", rows))
    assert not report.ok
    [issue] = report.errors
    assert issue.kind is IssueKind.UNREADABLE_IMAGE and "cannot be decoded" in issue.message
    assert (issue.path, issue.case_id) == (broken, "type2-missing/MG.dcm")
    assert issue.line == 1 + 1 + [c.name for c in CASES].index("type2-missing")


# --------------------------------------------------------------------------------------------
# check_manifest: every kind of problem


@pytest.fixture
def bad_set(tmp_path: Path, samples_dir: Path) -> tuple[Manifest, dict[str, int]]:
    """A manifest with one problem per row; returns it and each row's line.

    Duplicates and overlaps are looked for among rows without other errors only.
    """
    images = {
        name: make_mg(rows=ROWS, cols=COLS, seed=seed, patient_id=patient, laterality=side)
        for name, seed, patient, side in (
            ("a", 1, "P1", "L"),
            ("b", 2, "P2", "R"),
            ("c", 3, "P1", "L"),
            ("r", 4, "P2", "R"),
        )
    }
    for name, ds in images.items():
        save(ds, tmp_path / f"{name}.dcm")
    shutil.copy(tmp_path / "a.dcm", tmp_path / "a_copy.dcm")
    same_uid = make_mg(rows=ROWS, cols=COLS, seed=9, laterality="R")
    same_uid.SOPInstanceUID = images["b"].SOPInstanceUID
    same_uid.file_meta.MediaStorageSOPInstanceUID = images["b"].SOPInstanceUID
    save(same_uid, tmp_path / "b_again.dcm")
    disk, small = disk_mask((ROWS, COLS), (30, 20), 6), disk_mask((ROWS, COLS), (8, 8), 3)
    save(make_seg([images["a"]], [np.stack([disk, small])]), tmp_path / "a_seg.dcm")
    save(make_seg([images["b"]], [disk]), tmp_path / "b_seg.dcm")
    for name, arr in (("c.nii.gz", disk), ("r.nii.gz", disk), ("a_t.nii.gz", disk.T.copy())):
        write_mask(arr.astype(np.uint8), tmp_path / name)
    write_mask(np.zeros((ROWS, COLS), np.uint8), tmp_path / "zero.nrrd")
    (tmp_path / "text.dcm").write_text("not DICOM")
    shutil.copy(samples_dir / "mg" / "MG-Im-Hologic-PropProj.dcm", tmp_path / "sc.dcm")
    p2 = {"patient": "P2", "laterality": "R", "subtype": "TN"}
    rows = {
        "good": row("a.dcm", "a_seg.dcm"),
        "overlap": row("a.dcm", "a_seg.dcm", segment="2", subtype="TN"),  # and a conflict
        "good-nifti": row("c.dcm", "c.nii.gz", segment="1"),
        "missing-image": row("gone.dcm", "a_seg.dcm"),
        "missing-roi": row("b.dcm", "gone.nii.gz", case_id="b-gone", **p2),
        "not-dicom": row("text.dcm", "a_seg.dcm"),
        "not-mg": row("sc.dcm", "a_seg.dcm"),
        "grid": row("a.dcm", "a_t.nii.gz", case_id="a-transposed"),
        "empty": row("a.dcm", "zero.nrrd", case_id="a-zero"),
        "not-on-image": row("b.dcm", "a_seg.dcm", case_id="b-a", **p2),
        "same-content": row("a_copy.dcm", "a_seg.dcm"),
        "b": row("b.dcm", "b_seg.dcm", **p2),
        "same-uid": row("b_again.dcm", "b_seg.dcm", **p2),
        "laterality": row("r.dcm", "r.nii.gz", patient="P2", subtype="TN"),  # the image is R
    }
    manifest = write_rows(tmp_path / "m.csv", list(rows.values()))
    return manifest, {name: line for line, name in enumerate(rows, start=2)}


def test_every_problem_is_listed_with_its_line(bad_set: tuple[Manifest, dict[str, int]]) -> None:
    manifest, line = bad_set
    report = check_manifest(manifest)
    assert not report.ok
    found = {(issue.kind, issue.line) for issue in report.errors}
    expected = {
        (IssueKind.MISSING_FILE, line["missing-image"]),
        (IssueKind.MISSING_FILE, line["missing-roi"]),
        (IssueKind.UNREADABLE_IMAGE, line["not-dicom"]),
        (IssueKind.UNREADABLE_IMAGE, line["not-mg"]),
        (IssueKind.GRID_MISMATCH, line["grid"]),
        (IssueKind.EMPTY_MASK, line["empty"]),
        (IssueKind.ROI_NOT_ON_IMAGE, line["not-on-image"]),
        (IssueKind.DUPLICATE_IMAGE, line["same-content"]),
        (IssueKind.DUPLICATE_IMAGE, line["same-uid"]),
        (IssueKind.LABEL_CONFLICT, None),
    }
    assert found == expected, format_report(report)
    by_kind = {(i.kind, i.line): i for i in report.errors}
    assert by_kind[(IssueKind.UNREADABLE_IMAGE, line["not-dicom"])].message == "not a DICOM file"
    assert "not an MG image" in by_kind[(IssueKind.UNREADABLE_IMAGE, line["not-mg"])].message
    missing_roi = by_kind[(IssueKind.MISSING_FILE, line["missing-roi"])]
    assert missing_roi.path == manifest.path.parent / "gone.nii.gz"
    assert "ROI file not found" in missing_roi.message
    grid = by_kind[(IssueKind.GRID_MISMATCH, line["grid"])]
    assert grid.case_id == "a-transposed" and "transposed?" in grid.message
    content = by_kind[(IssueKind.DUPLICATE_IMAGE, line["same-content"])]
    assert f"as line {line['good']} (case a.dcm)" in content.message
    assert "same file content" in content.message
    uid = by_kind[(IssueKind.DUPLICATE_IMAGE, line["same-uid"])]
    assert "same SOP Instance UID" in uid.message and f"line {line['b']}" in uid.message
    conflict = by_kind[(IssueKind.LABEL_CONFLICT, None)]
    assert "Luminal A, Triple-negative" in conflict.message
    assert f"{line['overlap']} (case a.dcm#2)" in conflict.message
    assert "P1" not in conflict.message  # patients are named by lines, not IDs
    warnings_found = {(w.kind, w.line) for w in report.warnings}
    assert warnings_found == {
        (IssueKind.LATERALITY_MISMATCH, line["laterality"]),
        (IssueKind.OVERLAPPING_ROWS, line["overlap"]),
    }


def test_report_text_lists_errors_and_verdict(bad_set: tuple[Manifest, dict[str, int]]) -> None:
    manifest, line = bad_set
    report = check_manifest(manifest)
    text = format_report(report)
    assert f"line {line['empty']}, case a-zero: empty mask: no nonzero pixel" in text
    assert "errors (10):" in text and "warnings (2):" in text
    assert text.splitlines()[-1] == "NOT OK: 10 errors"
    assert str(manifest.path) in text and manifest.sha256[:16] in text
    tn = {c.name: (c.images, c.patients) for c in report.counts["tn"]}
    assert tn == {"not triple-negative": (8, 1), "triple-negative": (6, 2)}
    assert (report.rows, report.patients) == (14, 2)


def test_progress_bar_goes_to_stderr(
    bad_set: tuple[Manifest, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    check_manifest(bad_set[0], progress=True)
    captured = capsys.readouterr()
    assert "checking images" in captured.err and captured.out == ""


def test_seg_that_highdicom_cannot_parse_is_unreadable(tmp_path: Path, mg: Dataset) -> None:
    seg = make_seg([mg], [disk_mask((ROWS, COLS), (20, 20), 5)])
    del seg.SegmentSequence
    path = save(seg, tmp_path / "seg.dcm")
    masks = RoiMasks()
    for _ in range(2):  # the failure is remembered, and raised again for the next row
        with pytest.raises(MaskError) as caught:
            masks.mask(path, mg)
        assert caught.value.problem is MaskProblem.UNREADABLE


def test_any_reader_failure_is_an_unreadable_image(tmp_path: Path, mg: Dataset) -> None:
    save(mg, tmp_path / "a.dcm")
    write_mask(disk_mask((ROWS, COLS), (20, 20), 5).astype(np.uint8), tmp_path / "a.nii.gz")
    manifest = write_rows(tmp_path / "m.csv", [row("a.dcm", "a.nii.gz")])

    def failing_reader(path: Path) -> Dataset:
        raise RuntimeError(f"disk error on {path.name}")

    report = check_manifest(manifest, read_image=failing_reader)
    [issue] = report.errors
    assert issue.kind is IssueKind.UNREADABLE_IMAGE
    assert issue.message == "cannot be read (RuntimeError: disk error on a.dcm)"
    assert check_manifest(manifest).ok
