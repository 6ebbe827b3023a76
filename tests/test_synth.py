"""`molsub synth`: SYNTHETIC MG studies, lesion SEGs and labels (none of it is patient data)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.sop_classes import MG_FOR_PRESENTATION
from model.tasks import SUBTYPE5
from molsub.synth import (
    CALC_THRESHOLD,
    SYNTHETIC_COMMENT,
    SynthStudy,
    assign_subtypes,
    render_views,
    write_synthetic_studies,
)
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from tests.validators import dciodvfy_errors

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
VIEW_CODE = {"CC": "399162004", "MLO": "399368009"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthStudy]]:
    out = tmp_path_factory.mktemp("synth")
    return out, write_synthetic_studies(out, patients=3, seed=11)


def _seg_frames(seg: pydicom.Dataset) -> dict[str, np.ndarray]:
    """Referenced image UID -> that image's lesion mask, read the way a receiver reads it."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        out[str(source.ReferencedSOPInstanceUID)] = frame.astype(bool)
    return out


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the mask's bounding box but outside a grown mask."""
    grown = mask.copy()
    for _ in range(4):  # grow by 4 px so the soft margin is not counted as "around"
        grown[1:] |= grown[:-1]
        grown[:-1] |= grown[1:]
        grown[:, 1:] |= grown[:, :-1]
        grown[:, :-1] |= grown[:, 1:]
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[
        max(ys.min() - width, 0) : ys.max() + width + 1, max(xs.min() - width, 0) : xs.max() + width
    ] = True
    return box & ~grown


def test_files_layout_and_image_format(written: tuple[Path, list[SynthStudy]]) -> None:
    out, studies = written
    assert len(studies) == 3
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    for study in studies:
        folder = out / study.patient_id
        lat = study.laterality
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"MG_{lat}_CC.dcm", f"MG_{lat}_MLO.dcm", "SEG.dcm"]
        )
        assert set(study.paths) == set(folder.iterdir())
        for view, path in study.image_paths.items():
            ds = pydicom.dcmread(path)
            assert ds.SOPClassUID == MG_FOR_PRESENTATION
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored) == (1280, 1024, 16, 12)
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert ds.ImageLaterality == lat
            assert ds.ViewCodeSequence[0].CodeValue == VIEW_CODE[view]
            assert ds.AnatomicRegionSequence[0].CodeValue == "76752008"
            assert ds.StudyInstanceUID == study.study_uid
            assert ds.SOPInstanceUID == study.image_uids[view]
            pixels = ds.pixel_array
            assert pixels.max() < 4096 and pixels.min() >= 0
            # Breast against a dark background: a sizeable share of each.
            assert 0.2 < (pixels > 400).mean() < 0.9


def test_mg_and_seg_pass_dciodvfy(written: tuple[Path, list[SynthStudy]]) -> None:
    _, studies = written
    study = studies[0]
    for path in [*study.image_paths.values(), study.seg_path]:
        assert dciodvfy_errors(path) == [], path


def test_headers_say_synthetic(written: tuple[Path, list[SynthStudy]]) -> None:
    _, studies = written
    for number, study in enumerate(studies, start=1):
        for path in study.image_paths.values():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert str(ds.PatientName) == f"SYNTHETIC^P{number:04d}"
            assert ds.PatientID == f"SYNTH-{number:04d}" == study.patient_id
            assert "SYNTHETIC" in ds.StudyDescription and "SYNTHETIC" in ds.SeriesDescription
            assert ds.ImageComments == SYNTHETIC_COMMENT
            assert ds.PatientIdentityRemoved == "YES"
            assert "SYNTHETIC" in ds.DeidentificationMethod
        seg = pydicom.dcmread(study.seg_path, stop_before_pixels=True)
        assert "SYNTHETIC" in seg.SeriesDescription and seg.PatientID == study.patient_id


def test_labels_csv_matches_files_and_subtypes(written: tuple[Path, list[SynthStudy]]) -> None:
    out, studies = written
    with (out / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient_id"] for r in rows] == [s.patient_id for s in studies]
    for row in rows:
        folder = out / row["patient_id"]
        images = [pydicom.dcmread(p) for p in folder.glob("MG_*.dcm")]
        seg = pydicom.dcmread(folder / "SEG.dcm")
        assert {ds.StudyInstanceUID for ds in [*images, seg]} == {row["study_uid"]}
        assert seg.SOPInstanceUID == row["seg_uid"]
        assert {ds.ImageLaterality for ds in images} == {row["laterality"]}
        name = SUBTYPE5.class_names[int(row["subtype_index"])]
        assert row["subtype"] == name
        # Binary labels from the subtype's meaning, not from the table that made them.
        assert int(row["luminal"]) == (name in ("Luminal A", "Luminal B"))
        assert int(row["her2"]) == name.startswith("HER2+")
        assert int(row["tn"]) == (name == "Triple-negative")
        assert row["synthetic"] == "1"


def test_seg_covers_the_lesion_on_both_images(written: tuple[Path, list[SynthStudy]]) -> None:
    _, studies = written
    for study in studies:
        seg = pydicom.dcmread(study.seg_path)
        assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY"
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion 1"]
        referenced = {
            str(i.ReferencedSOPInstanceUID)
            for series in seg.ReferencedSeriesSequence
            for i in series.ReferencedInstanceSequence
        }
        assert referenced == set(study.image_uids.values())
        masks = _seg_frames(seg)
        assert set(masks) == set(study.image_uids.values())
        for view, path in study.image_paths.items():
            mask = masks[study.image_uids[view]]
            pixels = pydicom.dcmread(path).pixel_array.astype(float)
            assert mask.shape == pixels.shape and mask.sum() > 100
            inside, around = pixels[mask].mean(), pixels[_ring(mask, 40)].mean()
            assert inside - around > 300, (study.patient_id, view, inside, around)


def test_deterministic_for_a_seed_different_for_another(tmp_path: Path) -> None:
    kwargs = {"patients": 2, "rows": 320, "cols": 256}
    first = write_synthetic_studies(tmp_path / "a", seed=5, **kwargs)
    again = write_synthetic_studies(tmp_path / "b", seed=5, **kwargs)
    other = write_synthetic_studies(tmp_path / "c", seed=6, **kwargs)
    assert (tmp_path / "a/labels.csv").read_text() == (tmp_path / "b/labels.csv").read_text()
    for x, y, z in zip(first, again, other, strict=True):
        assert (x.study_uid, x.seg_uid, x.image_uids) == (y.study_uid, y.seg_uid, y.image_uids)
        for p, q in zip(x.paths, y.paths, strict=True):
            assert p.read_bytes() == q.read_bytes(), p.name
        assert x.study_uid != z.study_uid and x.seg_uid != z.seg_uid
        assert x.study_uid.startswith("2.25.") and len(x.study_uid) <= 64
        cc_x, cc_z = (pydicom.dcmread(s.image_paths["CC"]).PixelData for s in (x, z))
        assert cc_x != cc_z


def _perimeter(mask: np.ndarray) -> int:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return int((mask & ~inner).sum())


def _lesion_features(subtype: int, seeds: range) -> dict[str, float]:
    """Mean over seeds and views: mask perimeter^2/area, area, calcification pixels near it."""
    shape, area, calcs = [], [], []
    for seed in seeds:
        views = render_views(
            subtype, np.random.default_rng(seed), laterality="R", rows=480, cols=384
        )
        for view in ("CC", "MLO"):
            mask, image = views.masks[view], views.images[view]
            ys, xs = np.nonzero(mask)
            pad = int(np.ptp(ys))
            near = image[
                max(ys.min() - pad, 0) : ys.max() + pad, max(xs.min() - pad, 0) : xs.max() + pad
            ]
            shape.append(_perimeter(mask) ** 2 / mask.sum())
            area.append(mask.sum())
            calcs.append((near >= CALC_THRESHOLD).sum())
    return {
        "shape": float(np.mean(shape)),
        "area": float(np.mean(area)),
        "calcs": float(np.mean(calcs)),
    }


def test_subtype_changes_lesion_appearance() -> None:
    seeds = range(4)
    f = {k: _lesion_features(k, seeds) for k in range(5)}
    lum_a, lum_b, her2_hr_pos, her2_hr_neg, tn = (f[k] for k in range(5))
    assert lum_b["shape"] > 1.15 * lum_a["shape"]  # irregular, lobulated margin
    assert lum_a["calcs"] == 0 and lum_b["calcs"] == 0 and tn["calcs"] == 0
    assert her2_hr_pos["calcs"] > 5 and her2_hr_neg["calcs"] > her2_hr_pos["calcs"]
    assert tn["area"] > 2 * lum_a["area"]  # larger mass


def test_subtype_assignment_balanced_and_paper_frequencies() -> None:
    ten = assign_subtypes(10, seed=3)
    assert Counter(ten) == {k: 2 for k in range(5)}
    assert assign_subtypes(4, seed=3) == ten[:4]  # a patient's label does not depend on N
    assert assign_subtypes(10, seed=4) != ten
    paper = Counter(assign_subtypes(3000, seed=0, balanced=False))
    assert paper.most_common(1)[0][0] == 1 and min(paper, key=paper.__getitem__) == 3


def test_lesion_seg_over_two_images_reads_back_per_image() -> None:
    cc = make_mg(view="CC")
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, series_uid=cc.SeriesInstanceUID)
    mask_cc = disk_mask((256, 200), (100, 80), 15)
    mask_mlo = disk_mask((256, 200), (150, 120), 25)
    seg = roundtrip(make_seg([cc, mlo], [mask_cc, mask_mlo]))
    masks = _seg_frames(seg)
    assert np.array_equal(masks[cc.SOPInstanceUID], mask_cc)
    assert np.array_equal(masks[mlo.SOPInstanceUID], mask_mlo)
    # Two segments on each image: four frames, each indexed by its own segment.
    second = disk_mask((256, 200), (40, 40), 8)
    seg2 = roundtrip(
        make_seg([cc, mlo], [np.stack([mask_cc, second]), np.stack([mask_mlo, second])])
    )
    numbers = [
        (
            int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
            int(item.FrameContentSequence[0].DimensionIndexValues),
        )
        for item in seg2.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(n for n, _ in numbers) == [1, 1, 2, 2] and all(a == b for a, b in numbers)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patients"):
        write_synthetic_studies(tmp_path, patients=0)
    with pytest.raises(ValueError, match="subtype index 7"):
        render_views(7, np.random.default_rng(0), laterality="L")
