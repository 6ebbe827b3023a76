"""The training manifest (read, write, defaults, errors naming line and column, task labels) and
the manifest made from a folder of DICOM (`molsub synth` studies, real vendor header variants)."""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from common.mammo import View
from model.tasks import SUBTYPE5, SUBTYPE_TO_BINARY, TASKS
from molsub.synth import SynthStudy, write_synthetic_studies
from tests.factories import make_mg
from tests.header_cases import CASES, build_case
from train.from_dicom import laterality_of, manifest_from_dicom, view_of
from train.manifest import (
    Laterality,
    ManifestError,
    ManifestRow,
    read_manifest,
    task_label,
    write_manifest,
)

HEADER = "patient_id,study_uid,image_path,roi_path,view,laterality"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def manifest_text(*rows: str, extra: str = "subtype") -> str:
    return "\n".join([f"{HEADER},{extra}", *rows]) + "\n"


# --------------------------------------------------------------------------------------------
# Reading


def test_rows_paths_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "sets").mkdir()
    path = write(
        tmp_path / "sets" / "m.csv",
        manifest_text(
            "P1,1.2.3,../img/a.dcm,../img/seg.dcm,cc,l,LumA,",
            "P1,1.2.3,../img/b.dcm,../img/seg.dcm,MLO,Left,Luminal A,",
            "P2,1.2.4,c.dcm,masks/c.nii.gz,CC,R,Triple-negative,2",
            extra="subtype,segment",
        ),
    )
    manifest = read_manifest(path)
    a, b, c = manifest.rows
    assert a.image_path == tmp_path / "img" / "a.dcm"
    assert a.roi_path == tmp_path / "img" / "seg.dcm"
    assert a.image_path.is_absolute() and c.roi_path == tmp_path / "sets" / "masks" / "c.nii.gz"
    assert (a.view, a.laterality, b.view, b.laterality) == (View.CC, Laterality.LEFT, View.MLO, "L")
    assert (a.subtype, b.subtype, c.subtype) == (0, 0, 4)
    assert (a.segment, c.segment) == (None, 2)
    # case_id: the image path relative to the manifest, and the segment
    assert (a.case_id, b.case_id, c.case_id) == ("../img/a.dcm", "../img/b.dcm", "c.dcm#2")
    # lesion_id: one per breast per study; a SEG's path is part of it, a mask file's is not
    assert a.lesion_id == b.lesion_id == "1.2.3/L/../img/seg.dcm"
    assert c.lesion_id == "1.2.4/R/2"
    assert (a.line, b.line, c.line) == (2, 3, 4)
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest.path == path


def test_mask_files_of_one_breast_share_a_lesion(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        manifest_text("P1,1.2.3,cc.dcm,cc.nii.gz,CC,L,TN", "P1,1.2.3,mlo.dcm,mlo.nrrd,MLO,L,TN"),
    )
    cc, mlo = read_manifest(path).rows
    assert cc.lesion_id == mlo.lesion_id == "1.2.3/L"


def test_explicit_ids_and_markers_bom_and_extra_columns(tmp_path: Path) -> None:
    text = manifest_text(
        "P1,1.2.3,a.dcm,s.dcm,CC,L,90,50,1+,10,lesion-7,case-1,note",
        "P1,1.2.3,b.dcm,s.dcm,MLO,L,0,0,2+/ISH+,,lesion-7,case-2,",
        extra="er,pr,her2,ki67,lesion_id,case_id,comment",
    )
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel saves UTF-8
    a, b = read_manifest(path).rows
    assert (a.case_id, a.lesion_id, a.subtype) == ("case-1", "lesion-7", 0)
    assert (b.case_id, b.subtype) == ("case-2", 3)


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ("patient_id,study_uid,image_path,view,laterality,subtype\n", 1, "roi_path", "missing"),
        (f"{HEADER}\nP1,1.2.3,a.dcm,s.dcm,CC,L\n", 1, "subtype", "needs a subtype column"),
        (f"{HEADER},subtype,subtype\n", 1, "subtype", "appears twice"),
        ("", 1, None, "no header"),
        (manifest_text(), 2, None, "has no rows"),
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,TN", ",1.2.3,b.dcm,s.dcm,CC,L,TN"),
            3,
            "patient_id",
            "is empty",
        ),  # fmt: skip
        (manifest_text("P1,1.2.3,a.dcm,s.dcm,ML,L,TN"), 2, "view", "not one of CC, MLO"),
        (manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,B,TN"), 2, "laterality", "not L or R"),
        (manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,Luminal"), 2, "subtype", "unknown subtype"),
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,TN,0", extra="subtype,segment"),
            2,
            "segment",
            "not a positive whole number",
        ),  # fmt: skip
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,TN,x", extra="subtype,segment"),
            2,
            "segment",
            "not a positive whole number",
        ),  # fmt: skip
        (manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,TN,extra"), 2, None, "has 8 fields"),
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,TN", "P1,1.2.3,a.dcm,s2.dcm,CC,L,TN"),
            3,
            "case_id",
            "already on line 2",
        ),  # fmt: skip
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,90,50,2+,10", extra="er,pr,her2,ki67"),
            2,
            "her2",
            "equivocal without an ISH result",
        ),  # fmt: skip
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,0.5,50,0,10", extra="er,pr,her2,ki67"),
            2,
            "er",
            "ambiguous: a fraction",
        ),  # fmt: skip
        (
            manifest_text("P1,1.2.3,a.dcm,s.dcm,CC,L,90,50,0,", extra="er,pr,her2,ki67"),
            2,
            "ki67",
            "ki67 is needed",
        ),  # fmt: skip
    ],
)
def test_malformed_manifest_names_line_and_column(
    tmp_path: Path, text: str, line: int, column: str | None, reason: str
) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert reason in str(caught.value)
    assert str(path) in str(caught.value) and f"line {line}" in str(caught.value)
    if column:
        assert f"column {column}" in str(caught.value)


def test_unreadable_manifest_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path / "absent.csv")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(manifest_text("Müller,1.2.3,a.dcm,s.dcm,CC,L,TN").encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(latin1)


def test_write_then_read_gives_the_same_rows(tmp_path: Path) -> None:
    source = read_manifest(
        write(
            tmp_path / "in.csv",
            manifest_text(
                "P1,1.2.3,img/a.dcm,img/s.dcm,CC,L,HER2+/HR+,",
                "P2,1.2.4,img/b.dcm,img/b.nii,MLO,R,TN,3",
                extra="subtype,segment",
            ),
        )
    )
    out = tmp_path / "out" / "copy.csv"
    written = write_manifest(source.rows, out)
    assert written.rows == source.rows
    assert written.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    with out.open(newline="") as f:
        records = list(csv.DictReader(f))
    assert records[0]["image_path"] == "../img/a.dcm"  # relative to the new manifest's folder
    assert records[0]["subtype"] == "HER2+/HR+" and records[1]["segment"] == "3"
    assert not list(out.parent.glob(".tmp-*"))


# --------------------------------------------------------------------------------------------
# Task labels


def _row(subtype: int) -> ManifestRow:
    return ManifestRow(
        case_id="c",
        patient_id="p",
        study_uid="1.2",
        image_path=Path("/a.dcm"),
        roi_path=Path("/s.dcm"),
        view=View.CC,
        laterality=Laterality.LEFT,
        segment=None,
        lesion_id="l",
        subtype=subtype,
    )


def test_task_labels_follow_the_networks_class_order() -> None:
    expected = {  # subtype -> (luminal, her2, tn)
        0: (1, 0, 0),
        1: (1, 0, 0),
        2: (0, 1, 0),
        3: (0, 1, 0),
        4: (0, 0, 1),
    }
    for subtype, (luminal, her2, tn) in expected.items():
        row = _row(subtype)
        assert task_label(row, "subtype5") == subtype
        assert (task_label(row, "luminal"), task_label(row, "her2"), task_label(row, "tn")) == (
            luminal,
            her2,
            tn,
        )
        assert task_label(row, TASKS["her2"]) == her2 == SUBTYPE_TO_BINARY[subtype]["her2"]
    assert TASKS["luminal"].class_names[task_label(_row(0), "luminal")] == "Luminal"
    assert SUBTYPE5.class_names[task_label(_row(4), "subtype5")] == "Triple-negative"


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task 'er'"):
        task_label(_row(0), "er")


# --------------------------------------------------------------------------------------------
# From DICOM


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthStudy]]:
    folder = tmp_path_factory.mktemp("synth")
    return folder, write_synthetic_studies(folder, patients=5, rows=320, cols=256)


def _copy_tree(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    return target


def test_from_dicom_on_synthetic_studies(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    folder, studies = synth
    out = tmp_path / "sets" / "train.csv"
    manifest = manifest_from_dicom(folder, folder / "labels.csv", out)
    assert manifest.warnings == ()
    assert len(manifest.rows) == 2 * len(studies)
    by_image = {row.image_path: row for row in manifest.rows}
    for study in studies:
        for view, image in study.image_paths.items():
            row = by_image[image.absolute()]
            assert row.view == view and row.laterality == study.laterality
            assert row.subtype == study.subtype_index
            assert (row.patient_id, row.study_uid) == (study.patient_id, study.study_uid)
            assert row.roi_path == study.seg_path.absolute() and row.segment is None
        cc, mlo = (by_image[study.image_paths[v].absolute()] for v in ("CC", "MLO"))
        assert cc.lesion_id == mlo.lesion_id and cc.case_id != mlo.case_id
    with out.open(newline="") as f:
        first = next(csv.DictReader(f))
    assert first["image_path"].startswith("../") and not Path(first["image_path"]).is_absolute()
    assert read_manifest(out).rows == manifest.rows


def test_from_dicom_leaves_out_unlabelled_and_missing_with_warnings(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    source, studies = synth
    folder = _copy_tree(source, tmp_path / "data")
    (folder / studies[1].image_paths["MLO"].relative_to(source)).unlink()
    (folder / "notes.txt").write_text("not DICOM")
    labels = folder / "labels.csv"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(line for line in lines if studies[0].study_uid not in line))
    manifest = manifest_from_dicom(folder, labels, folder / "m.csv")
    assert len(manifest.rows) == 2 * len(studies) - 3
    assert {r.study_uid for r in manifest.rows} == {s.study_uid for s in studies[1:]}
    assert len(manifest.warnings) == 2
    unlabelled = next(w for w in manifest.warnings if w.startswith("study"))
    assert studies[0].study_uid in unlabelled and "no label" in unlabelled
    missing = next(w for w in manifest.warnings if w.startswith("SEG"))
    assert studies[1].image_uids["MLO"] in missing and "not under the folder" in missing
    assert all(studies[0].patient_id not in w for w in manifest.warnings)


def test_from_dicom_labels_by_patient_with_markers(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    folder, studies = synth
    markers = {  # subtype index -> er, pr, her2, ki67
        0: ("90", "50", "0", "10"),
        1: ("90", "50", "1+", "30"),
        2: ("80", "10", "3+", ""),
        3: ("0", "0", "2+/ISH+", "40"),
        4: ("0", "<1%", "0", "60"),
    }
    labels = tmp_path / "ihc.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "er", "pr", "her2", "ki67"])
        for study in studies:
            writer.writerow([study.patient_id, *markers[study.subtype_index]])
    manifest = manifest_from_dicom(folder, labels, tmp_path / "m.csv")
    expected = {s.patient_id: s.subtype_index for s in studies}
    assert {r.patient_id: r.subtype for r in manifest.rows} == expected


def test_from_dicom_bad_and_contradictory_labels_are_left_out(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    folder, studies = synth
    labels = tmp_path / "ihc.csv"
    rows = [["patient_id", "study_uid", "er", "pr", "her2", "ki67"]]
    rows += [[s.patient_id, s.study_uid, "0", "0", "0", ""] for s in studies[2:]]
    rows += [["", studies[0].study_uid, "90", "50", "2+", "10"]]  # equivocal HER2
    rows += [["", studies[1].study_uid, "0", "0", "0", ""], ["", studies[1].study_uid, "0", "0",
             "3+", ""]]  # fmt: skip
    rows += [["SOMEONE-ELSE", "", "0", "0", "2+", ""]]  # bad, but no image uses it
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    manifest = manifest_from_dicom(folder, labels, tmp_path / "m.csv")
    assert {r.study_uid for r in manifest.rows} == {s.study_uid for s in studies[2:]}
    equivocal = [w for w in manifest.warnings if "equivocal" in w]
    assert len(equivocal) == 2 and all("line 5" in w for w in equivocal)  # CC and MLO
    disagree = [w for w in manifest.warnings if "disagree" in w]
    assert (
        len(disagree) == 2
        and "line 6 (TN)" in disagree[0]
        and "line 7 (HER2+/HR-)" in (disagree[0])
    )


@pytest.mark.parametrize(
    ("header", "column", "reason"),
    [
        ("seg_uid,subtype", "study_uid", "needs a study_uid or patient_id column"),
        ("study_uid,luminal", "subtype", "needs a subtype column"),
    ],
)
def test_from_dicom_malformed_labels_file(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, header: str, column: str, reason: str
) -> None:
    folder, _ = synth
    labels = write(tmp_path / "labels.csv", header + "\n1.2.3,TN\n")
    with pytest.raises(ManifestError, match=reason) as caught:
        manifest_from_dicom(folder, labels, tmp_path / "m.csv")
    assert (caught.value.line, caught.value.column) == (1, column)
    assert not (tmp_path / "m.csv").exists()


def test_from_dicom_with_nothing_usable_says_why(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    folder, studies = synth
    labels = write(tmp_path / "labels.csv", "study_uid,subtype\n1.2.3.4,TN\n")
    with pytest.raises(ValueError, match="no labelled MG image with a SEG") as caught:
        manifest_from_dicom(folder, labels, tmp_path / "m.csv")
    assert studies[0].study_uid in str(caught.value)
    assert not (tmp_path / "m.csv").exists()


def test_from_dicom_real_vendor_header_variants(samples_dir: Path, tmp_path: Path) -> None:
    """Siemens and GE samples with messy headers (laterality only in a code, no ViewPosition,
    dates, character sets): every case becomes a row, L CC as the samples are."""
    folder = tmp_path / "cases"
    labels = [["study_uid", "subtype"]]
    for index, case in enumerate(CASES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cases' invalid values, on purpose
            mg, seg = build_case(case, samples_dir, index)
            (folder / case.name).mkdir(parents=True)
            mg.save_as(folder / case.name / "image", enforce_file_format=True)  # no suffix
            seg.save_as(folder / case.name / "roi", enforce_file_format=True)
        labels.append([str(mg.StudyInstanceUID), "LumB"])
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(labels)
    manifest = manifest_from_dicom(folder, tmp_path / "labels.csv", tmp_path / "m.csv")
    assert manifest.warnings == ()
    assert len(manifest.rows) == len(CASES)
    assert {(r.view, r.laterality, r.subtype) for r in manifest.rows} == {(View.CC, "L", 1)}


# --------------------------------------------------------------------------------------------
# View and laterality from the header


def _mg(**changes: object) -> Dataset:
    ds = make_mg(rows=32, cols=24, laterality="R", view="MLO")
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def test_view_and_laterality_from_attributes_or_codes() -> None:
    ds = _mg()
    assert (view_of(ds), laterality_of(ds)) == (View.MLO, Laterality.RIGHT)
    ds = _mg(ViewPosition=None, ImageLaterality="")
    ds.ViewCodeSequence = [_code("R-10242", "SNM3", "cranio-caudal")]
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = [_code("7771000", "SCT", "Left")]
    assert (view_of(ds), laterality_of(ds)) == (View.CC, Laterality.LEFT)
    ds = _mg(ViewPosition="ML", ImageLaterality="")
    ds.ViewCodeSequence = []
    ds.Laterality = "L"
    assert (view_of(ds), laterality_of(ds)) == (None, Laterality.LEFT)
    ds = _mg(ViewPosition=None, ImageLaterality=None)
    ds.ViewCodeSequence = []
    assert (view_of(ds), laterality_of(ds)) == (None, None)


def test_from_dicom_leaves_out_images_of_other_views(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    source, studies = synth
    folder = _copy_tree(source, tmp_path / "data")
    path = folder / studies[0].image_paths["CC"].relative_to(source)
    ds = pydicom.dcmread(path)
    ds.ViewPosition = "XCCL"
    ds.save_as(path, enforce_file_format=True)
    manifest = manifest_from_dicom(folder, folder / "labels.csv", folder / "m.csv")
    assert len(manifest.rows) == 2 * len(studies) - 1
    assert manifest.warnings == (f"image {path}: no view CC or MLO in the header: left out",)


def _corrupt_deflated(path: Path) -> None:
    """A DICOM file whose deflated data set cannot be inflated (zlib raises on reading)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.PatientID = "X"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")


def test_from_dicom_odd_files_are_left_out_with_warnings(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path
) -> None:
    source, studies = synth
    folder = _copy_tree(source, tmp_path / "data")
    _corrupt_deflated(folder / "broken.dcm")
    first = studies[0]
    cc = folder / first.image_paths["CC"].relative_to(source)
    (folder / "zz_copy_of_cc.dcm").write_bytes(cc.read_bytes())  # same SOP Instance UID
    (folder / "zz_second_seg.dcm").write_bytes(
        (folder / first.seg_path.relative_to(source)).read_bytes()
    )
    no_patient = folder / studies[1].image_paths["CC"].relative_to(source)
    ds = pydicom.dcmread(no_patient)
    del ds.PatientID
    ds.save_as(no_patient, enforce_file_format=True)
    manifest = manifest_from_dicom(folder, folder / "labels.csv", folder / "m.csv")
    assert len(manifest.rows) == 2 * len(studies) - 1
    assert no_patient.absolute() not in {r.image_path for r in manifest.rows}
    expected = [
        f"{folder / 'broken.dcm'}: unreadable DICOM (error): left out",
        f"{folder / 'zz_copy_of_cc.dcm'}: image {first.image_uids['CC']} is also {cc}: "
        "the first is used",
    ]
    assert list(manifest.warnings[:2]) == expected
    again = [w for w in manifest.warnings if "already has SEG" in w]
    assert len(again) == 2 and all(str(folder / "zz_second_seg.dcm") in w for w in again)
    assert f"image {no_patient}: no PatientID in the header: left out" in manifest.warnings
    assert len(manifest.warnings) == 5


@pytest.mark.parametrize(
    ("body", "column", "reason"),
    [
        ("study_uid,patient_id,laterality,subtype\n1.2.3,P1,both,TN\n", "laterality", "not L or R"),
        (
            "study_uid,patient_id,subtype\n1.2.3,P1,TN\n,,LumA\n",
            "study_uid",
            "and patient_id empty",
        ),
    ],
)
def test_from_dicom_malformed_labels_rows(
    synth: tuple[Path, list[SynthStudy]], tmp_path: Path, body: str, column: str, reason: str
) -> None:
    folder, _ = synth
    labels = write(tmp_path / "labels.csv", body)
    with pytest.raises(ManifestError, match=reason) as caught:
        manifest_from_dicom(folder, labels, tmp_path / "m.csv")
    assert caught.value.column == column and caught.value.line == body.count("\n")
