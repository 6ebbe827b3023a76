"""worker.results: the SR, Secondary Captures and heatmap SEGs a radiologist receives.

Inputs are built offline: a synthetic CC + MLO pair of one study, a SEG with two lesions drawn
on both images, the RoiCrops model.preprocess cuts from them, hand-made predictions (so every
expected value is known) and a real untrained bundle. The objects are checked as a receiver
sees them (written and read back) and with the real validators (dciodvfy, PixelMed).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from common.settings import ResultsSettings, SrRegion
from model.bundle import init_untrained
from model.bundle_info import BundleInfo
from model.preprocess import extract_rois
from model.roi import RoiCrop, RoiPrediction
from model.tasks import TASKS
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from tests.sr_items import concept, value_code, walk
from tests.validators import dciodvfy_errors, pixelmed_sr_errors
from worker.results.build import build_results
from worker.results.codes import CLASS_CODES, PROBABILITY_CODES, SCHEME, TASK_CONCEPTS
from worker.results.overlay import render_overlay
from worker.results.result_set import ResultSet
from worker.results.summary import summarize_sr

SHAPE = (256, 200)
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
# Standard codes, written out here so the test does not trust the implementation's tables.
SCT_LEFT, SCT_RIGHT = "7771000", "24028007"
SCT_BREAST = "76752008"
SCT_VIEW = {"CC": "399162004", "MLO": "399368009"}
SCT_MAMMOGRAPHY = "71651007"
YELLOW, WARNING_RED = (255, 255, 0), (255, 64, 64)


# --- inputs --------------------------------------------------------------------------------


@dataclasses.dataclass
class Study:
    images: list[Dataset]
    seg: Dataset
    rois: list[RoiCrop]
    predictions: list[RoiPrediction]

    def image(self, uid: str) -> Dataset:
        return next(i for i in self.images if str(i.SOPInstanceUID) == uid)


def make_prediction(roi: RoiCrop, index: int) -> RoiPrediction:
    """Probabilities summing to 1 with a different winner per ROI, and a smooth CAM bump."""
    rng = np.random.default_rng(100 + index)
    probabilities = {}
    for k, (task, spec) in enumerate(TASKS.items()):
        raw = rng.uniform(0.05, 1.0, spec.num_classes)
        raw[(index + k) % spec.num_classes] = raw.max() + 0.5
        probabilities[task] = raw / raw.sum()
    n = roi.box.size
    rr, cc = np.mgrid[0:n, 0:n] / n
    centre = (0.3 + 0.1 * index, 0.6 - 0.1 * index)
    bump = np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * 0.2**2))
    cam = (bump - bump.min()) / (bump.max() - bump.min())
    return RoiPrediction(probabilities=probabilities, cam=cam.astype(np.float32))


def make_study(laterality: str, lesions: dict[str, list[tuple[tuple[int, int], int]]]) -> Study:
    """MG images of one breast (view -> lesion disks, one per segment) and their SEG."""
    study_uid = generate_uid()
    images = [
        make_mg(laterality=laterality, view=view, study_uid=study_uid, seed=i + 1)
        for i, view in enumerate(lesions)
    ]
    masks = [np.stack([disk_mask(SHAPE, c, r) for c, r in disks]) for disks in lesions.values()]
    seg = roundtrip(make_seg(images, masks))
    rois = extract_rois(seg, {str(i.SOPInstanceUID): i for i in images})
    predictions = [make_prediction(roi, i) for i, roi in enumerate(rois)]
    return Study(images, seg, rois, predictions)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> BundleInfo:
    return init_untrained(tmp_path_factory.mktemp("bundle") / "untrained")


@pytest.fixture(scope="module")
def trained(untrained: BundleInfo) -> BundleInfo:
    # init_untrained names its bundle "untrained"; a trained one would not be.
    return dataclasses.replace(untrained, untrained=False, name="demo")


@pytest.fixture(scope="module")
def study() -> Study:
    # Lesion 1 near the top-left corner (its square runs past the image), lesion 2 inside.
    return make_study(
        "L",
        {"CC": [((40, 30), 12), ((170, 120), 20)], "MLO": [((100, 100), 15), ((200, 60), 10)]},
    )


def build(study: Study, bundle: BundleInfo) -> ResultSet:
    return build_results(study.seg, study.images, study.rois, study.predictions, bundle)


@pytest.fixture(scope="module")
def results(study: Study, untrained: BundleInfo) -> ResultSet:
    return build(study, untrained)


@pytest.fixture(scope="module")
def trained_results(study: Study, trained: BundleInfo) -> ResultSet:
    return build(study, trained)


@pytest.fixture(scope="module")
def received(results: ResultSet) -> list[Dataset]:
    """The untrained results as a PACS would store them."""
    return [roundtrip(ds) for ds in results.all()]


@pytest.fixture(scope="module")
def sr(received: list[Dataset]) -> Dataset:
    return received[0]


@pytest.fixture(scope="module")
def trained_sr(trained_results: ResultSet) -> Dataset:
    return roundtrip(trained_results.sr)


# --- SR reading helpers --------------------------------------------------------------------


def children(item: Dataset, scheme: str, value: str) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if concept(c) == (scheme, value)]


def only_child(item: Dataset, scheme: str, value: str) -> Dataset:
    found = children(item, scheme, value)
    assert len(found) == 1, f"expected one ({scheme}, {value}) item, found {len(found)}"
    return found[0]


def measurement_groups(sr: Dataset) -> list[Dataset]:
    """The per-ROI groups: a lesion's fused group carries "View fusion" (test_results_fusion)."""
    measurements = only_child(sr, "DCM", "126010")
    groups = children(measurements, "DCM", "125007")
    return [g for g in groups if not children(g, SCHEME, "MS0904")]


def referenced_uid(item: Dataset) -> str:
    return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def segment_of_frame(seg: Dataset, frame_number: int) -> tuple[int, str]:
    """(segment number, source image UID) of a SEG frame, read from its functional groups."""
    frame = seg.PerFrameFunctionalGroupsSequence[frame_number - 1]
    segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    return segment, str(source.ReferencedSOPInstanceUID)


def processing_device_uids(ds: Dataset) -> list[str]:
    """Device UIDs of the Contributing Equipment that processed (not acquired) the images."""
    return [
        str(item.DeviceUID)
        for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102" and "DeviceUID" in item
    ]


def all_texts(ds: Dataset) -> list[str]:
    return [str(i.TextValue) for i in walk(ds) if str(i.ValueType) == "TEXT"]


# --- validators ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixelmed_verdict(
    results: ResultSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[list[str]]]:
    """PixelMed's SR validation, started early in a thread: the JVM takes 15-30 s on this
    machine, so it runs while the other tests do; the last test collects the verdict."""
    path = tmp_path_factory.mktemp("pixelmed") / "sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(pixelmed_sr_errors, path)


def test_every_object_passes_dciodvfy(
    results: ResultSet,
    trained_results: ResultSet,
    tmp_path: Path,
    pixelmed_verdict: Future[list[str]],
) -> None:
    objects = results.all() + trained_results.all()
    assert len(results.all()) == 1 + 4 + 2  # SR, one SC per ROI, one heatmap SEG per image
    failures = {}
    for n, ds in enumerate(objects):
        # Dated, or Orthanc Explorer files the series under "?" (tests/test_results_display.py
        # checks the values).
        assert all(k in ds for k in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"))
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if errors := dciodvfy_errors(path):
            failures[f"{n} {ds.SOPClassUID.name}"] = errors
    assert not failures


# --- SR content ----------------------------------------------------------------------------


def test_sr_is_a_tid1500_report_for_the_studys_patient(
    sr: Dataset, study: Study, received: list[Dataset]
) -> None:
    mg = study.images[0]
    assert sr.SOPClassUID == SR_CLASS
    assert sr.StudyInstanceUID == mg.StudyInstanceUID
    assert sr.PatientID == mg.PatientID
    assert concept(sr) == ("DCM", "126000")
    performed = sr.PerformedProcedureCodeSequence[0]
    assert (performed.CodingSchemeDesignator, performed.CodeValue) == ("SCT", SCT_MAMMOGRAPHY)
    evidence = {
        str(inst.ReferencedSOPInstanceUID)
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == {str(study.seg.SOPInstanceUID)} | {
        str(i.SOPInstanceUID) for i in study.images
    }
    # The SCs and heatmap SEGs the groups reference are evidence too, but not acquired.
    other = {
        str(inst.ReferencedSOPInstanceUID)
        for study_item in sr.PertinentOtherEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert other == {str(ds.SOPInstanceUID) for ds in received[1:]}


def test_sr_has_one_measurement_group_per_roi_on_its_lesion(sr: Dataset, study: Study) -> None:
    groups = measurement_groups(sr)
    assert len(groups) == len(study.rois) == 4
    # highdicom reads the same groups back, and one fused group per lesion (both on CC + MLO).
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert len(parsed.content.get_image_measurement_groups()) == len(study.rois) + 2
    tracking_uids = set()
    for index, (group, roi, prediction) in enumerate(
        zip(groups, study.rois, study.predictions, strict=True)
    ):
        image = study.image(roi.source_sop_instance_uid)
        identifier = str(only_child(group, "DCM", "112039").TextValue)
        # View and predicted subtype first: OHIF lists a measurement by this text.
        called = TASKS["subtype5"].class_names[prediction.predicted_index("subtype5")]
        head = f"ROI {index + 1} {image.ImageLaterality} {image.ViewPosition}: "
        assert identifier.startswith(head), identifier
        assert identifier[len(head) :].replace("HER2+ HR", "HER2+/HR").startswith(called)
        tracking_uids.add(str(only_child(group, "DCM", "112040").UID))
        # The group's Image Region (the lesion's box by default), SELECTED FROM its MG image ...
        region = only_child(group, "DCM", "111030")
        assert str(region.ValueType) == "SCOORD" and region.GraphicType == "POLYLINE"
        [selected_from] = region.ContentSequence
        assert selected_from.RelationshipType == "SELECTED FROM"
        assert referenced_uid(selected_from) == str(image.SOPInstanceUID)
        # ... and the same graphic is the first probability's only child (INFERRED FROM), the
        # other probabilities have none (what OHIF needs to draw and restore the group).
        numbers = [i for i in group.ContentSequence if str(i.ValueType) == "NUM"]
        [inferred] = numbers[0].ContentSequence
        assert (inferred.RelationshipType, inferred.ValueType) == ("INFERRED FROM", "SCOORD")
        assert inferred.GraphicData == region.GraphicData
        assert referenced_uid(inferred.ContentSequence[0]) == str(image.SOPInstanceUID)
        assert all("ContentSequence" not in n for n in numbers[1:])
        # The input SEG's segment on this view is the group's Source of Measurement.
        source = only_child(group, "DCM", "121112")
        assert referenced_uid(source) == str(study.seg.SOPInstanceUID)
        frame = int(source.ReferencedSOPSequence[0].ReferencedFrameNumber)
        assert segment_of_frame(study.seg, frame) == (
            roi.segment_number,
            roi.source_sop_instance_uid,
        )
    assert len(tracking_uids) == len(groups)
    assert all(UID(u).is_valid for u in tracking_uids)


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def lesion_mask(study: Study, roi: RoiCrop) -> np.ndarray:
    frame = next(
        i + 1
        for i in range(len(study.seg.PerFrameFunctionalGroupsSequence))
        if segment_of_frame(study.seg, i + 1) == (roi.segment_number, roi.source_sop_instance_uid)
    )
    return study.seg.pixel_array[frame - 1] > 0


def region_points(group: Dataset) -> np.ndarray:
    region = only_child(group, "DCM", "111030")
    return np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)  # (column, row)


def test_each_box_frames_its_lesion_on_the_mammogram(sr: Dataset, study: Study) -> None:
    """The default region: the segment's bounding box as a closed 5-point polyline (pixel
    edges), which OHIF rehydrates as a rectangle."""
    for group, roi in zip(measurement_groups(sr), study.rois, strict=True):
        assert only_child(group, "DCM", "111030").GraphicType == "POLYLINE"
        points = region_points(group)
        rows, cols = np.nonzero(lesion_mask(study, roi))
        left, top, right, bottom = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
        assert points.tolist() == [
            [left, top],
            [right, top],
            [right, bottom],
            [left, bottom],
            [left, top],
        ]


def test_each_outline_traces_its_lesion_on_the_mammogram(
    study: Study, untrained: BundleInfo
) -> None:
    """[results] sr_region = "outline": the segment's boundary in image pixels: closed, inside
    the image, on the lesion's edge, enclosing the lesion's area (the disks of make_study)."""
    settings = ResultsSettings(sr_region=SrRegion.OUTLINE)
    sr = roundtrip(
        build_results(
            study.seg, study.images, study.rois, study.predictions, untrained, settings
        ).sr
    )
    for group, roi in zip(measurement_groups(sr), study.rois, strict=True):
        points = region_points(group)
        assert np.array_equal(points[0], points[-1]) and 8 <= len(points) <= 129
        mask = lesion_mask(study, roi)
        rows, cols = np.nonzero(mask)
        assert (points[:, 0] >= 0).all() and (points[:, 0] <= SHAPE[1]).all()
        assert (points[:, 1] >= 0).all() and (points[:, 1] <= SHAPE[0]).all()
        # Every vertex lies on the lesion's edge: within 1.5 px of a mask pixel's centre...
        centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
        nearest = np.min(np.linalg.norm(points[:, None] - centres[None], axis=2), axis=1)
        assert nearest.max() <= 1.5
        # ... and the polygon holds the lesion's area (within 15%: a traced disk of r >= 10).
        assert polygon_area(points) == pytest.approx(mask.sum(), rel=0.15)


def test_each_group_references_its_sc_and_heatmap_segment(
    sr: Dataset, study: Study, received: list[Dataset]
) -> None:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in received}
    for index, group in enumerate(measurement_groups(sr)):
        tracking_uid = str(only_child(group, "DCM", "112040").UID)
        illustration = by_uid[referenced_uid(only_child(group, "DCM", "121200"))]
        assert illustration.SOPClassUID == SC_CLASS
        roi = study.rois[index]
        assert f"segment {roi.segment_number} " in illustration.DerivationDescription
        assert illustration.SourceImageSequence[0].ReferencedSOPInstanceUID == (
            roi.source_sop_instance_uid
        )
        heatmap_item = only_child(group, "DCM", "130403")  # Gradient-weighted class activation
        heatmap = by_uid[referenced_uid(heatmap_item)]
        number = int(heatmap_item.ReferencedSOPSequence[0].ReferencedSegmentNumber)
        segment = next(s for s in heatmap.SegmentSequence if s.SegmentNumber == number)
        assert str(segment.TrackingUID) == tracking_uid  # the same lesion, on the same view
        assert heatmap.SourceImageSequence[0].ReferencedSOPInstanceUID == (
            study.rois[index].source_sop_instance_uid
        )


def test_each_group_is_compact_calls_first_algorithm_once(sr: Dataset) -> None:
    """Algorithm identification once per group (not under every probability), the calls
    before the probabilities, and intended use / model status said once, for the document."""
    for group in measurement_groups(sr):
        assert len(children(group, "DCM", "111001")) == 1  # Algorithm Name, at group level
        numbers = [i for i in group.ContentSequence if str(i.ValueType) == "NUM"]
        assert all(not children(n, "DCM", "111001") for n in numbers)
        kinds = [str(i.ValueType) for i in group.ContentSequence if concept(i)[0] == SCHEME]
        assert kinds == ["CODE"] * 4 + ["NUM"] * 11
        # Each task's probabilities ranked, so the first five numbers (all OHIF draws beside a
        # measurement) are the five-class ranking with the predicted subtype on top.
        values = [float(n.MeasuredValueSequence[0].NumericValue) for n in numbers]
        assert values[:5] == sorted(values[:5], reverse=True)
        first = concept(numbers[0])[1]
        called = value_code(only_child(group, SCHEME, TASK_CONCEPTS["subtype5"].value))[1]
        assert (
            CLASS_CODES["subtype5"][
                [c.value for c in PROBABILITY_CODES["subtype5"]].index(first)
            ].value
            == called
        )
        assert not children(group, SCHEME, "MS0900") and not children(group, SCHEME, "MS0902")
    statements = only_child(sr, "UMLS", "C0034375")
    assert [value_code(i)[1] for i in children(statements, SCHEME, "MS0900")] == ["MS0901"]
    assert len([i for i in walk(sr) if concept(i) == (SCHEME, "MS0900")]) == 1


def test_sr_probabilities_and_calls_are_the_predictions(sr: Dataset, study: Study) -> None:
    by_code = {
        code.value: (task, j) for task, cs in PROBABILITY_CODES.items() for j, code in enumerate(cs)
    }
    for group, prediction in zip(measurement_groups(sr), study.predictions, strict=True):
        found: dict[tuple[str, int], float] = {}
        for item in group.ContentSequence:
            if str(item.ValueType) == "NUM" and concept(item)[0] == SCHEME:
                key = by_code[concept(item)[1]]
                assert key not in found, f"{key} reported twice"
                measured = item.MeasuredValueSequence[0]
                assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "1"
                found[key] = float(measured.NumericValue)
                digits = str(measured.NumericValue).lstrip("0.").replace(".", "")
                assert len(digits) <= 4, measured.NumericValue  # 4 significant digits
        expected = {
            (task, j): float(p)
            for task, ps in prediction.probabilities.items()
            for j, p in enumerate(ps)
        }
        assert found.keys() == expected.keys()
        for key, value in expected.items():
            assert found[key] == float(f"{value:.4g}"), key
        for task, concept_code in TASK_CONCEPTS.items():
            call = only_child(group, SCHEME, concept_code.value)
            winner = int(np.argmax(prediction.probabilities[task]))
            code = CLASS_CODES[task][winner]
            assert value_code(call) == (code.scheme_designator, code.value), task
    # The ROIs were given different winners, so a mix-up of groups would show above.
    assert len({p.predicted_index("subtype5") for p in study.predictions}) == len(study.rois)


def test_private_scheme_is_declared(sr: Dataset) -> None:
    declared = {str(i.CodingSchemeDesignator) for i in sr.CodingSchemeIdentificationSequence}
    assert SCHEME == "99MOLSUB" and SCHEME in declared
    item = next(
        i for i in sr.CodingSchemeIdentificationSequence if i.CodingSchemeDesignator == SCHEME
    )
    assert item.CodingSchemeName and item.CodingSchemeResponsibleOrganization
    used = {concept(i)[0] for i in walk(sr)} | {
        value_code(i)[0] for i in walk(sr) if str(i.ValueType) == "CODE"
    }
    assert all(s in declared for s in used if s.startswith("99"))


def test_sr_names_the_algorithm_and_its_weights(sr: Dataset, untrained: BundleInfo) -> None:
    assert processing_device_uids(sr) == [untrained.device_uid]
    observer_uids = [str(i.UID) for i in walk(sr) if concept(i) == ("DCM", "121012")]
    assert observer_uids == [untrained.device_uid]
    for group in measurement_groups(sr):
        parameters = [str(i.TextValue) for i in children(group, "DCM", "111002")]
        assert any(untrained.digest in p for p in parameters), parameters
        assert str(only_child(group, "DCM", "111001").TextValue) == untrained.display_name


def test_sr_image_library_and_finding_sites_carry_laterality_and_view(
    sr: Dataset, study: Study
) -> None:
    library = only_child(sr, "DCM", "111028")
    entries = [i for i in walk(library) if str(i.ValueType) == "IMAGE"]
    assert {referenced_uid(e) for e in entries} == {str(i.SOPInstanceUID) for i in study.images}
    for entry in entries:
        image = study.image(referenced_uid(entry))
        laterality = value_code(only_child(entry, "DCM", "111027"))
        view = value_code(only_child(entry, "DCM", "111031"))
        assert laterality == ("SCT", SCT_LEFT)
        assert view == ("SCT", SCT_VIEW[str(image.ViewPosition)])
    for group in measurement_groups(sr):
        site = only_child(group, "SCT", "363698007")
        assert value_code(site) == ("SCT", SCT_BREAST)
        assert value_code(only_child(site, "SCT", "272741003")) == ("SCT", SCT_LEFT)


def test_right_breast_is_reported_as_right(untrained: BundleInfo) -> None:
    right = make_study("R", {"CC": [((120, 100), 14)], "MLO": [((90, 80), 12)]})
    result = build(right, untrained)
    sr = roundtrip(result.sr)
    for group in measurement_groups(sr):
        site = only_child(group, "SCT", "363698007")
        assert value_code(site) == ("SCT", SCT_BREAST)
        assert value_code(only_child(site, "SCT", "272741003")) == ("SCT", SCT_RIGHT)
        assert re.match(r"ROI \d R (CC|MLO): ", str(only_child(group, "DCM", "112039").TextValue))
    library = only_child(sr, "DCM", "111028")
    lateralities = [
        value_code(only_child(e, "DCM", "111027"))
        for e in walk(library)
        if str(e.ValueType) == "IMAGE"
    ]
    assert lateralities == [("SCT", SCT_RIGHT)] * 2
    assert {str(sc.Laterality) for sc in result.secondary_captures} == {"R"}


def test_sr_says_research_use_and_untrained(sr: Dataset) -> None:
    document = only_child(sr, "UMLS", "C0034375")  # the document's Qualitative Evaluations
    statements = [t for t in all_texts(document) if "RESEARCH USE ONLY" in t]
    assert statements, "no research-use statement"
    assert all("UNTRAINED" in t for t in statements)
    # Every group's label (its Comment, what OHIF shows) says research use only too.
    for group in measurement_groups(sr):
        assert str(only_child(group, "DCM", "121106").TextValue).endswith("RESEARCH USE ONLY")
    calls = {(concept(i)[1], value_code(i)[1]) for i in walk(sr) if str(i.ValueType) == "CODE"}
    assert ("MS0900", "MS0901") in calls  # intended use: research use only
    assert ("MS0902", "MS0903") in calls  # model status: untrained
    assert "RESEARCH USE ONLY" in sr.SeriesDescription and "UNTRAINED" in sr.SeriesDescription


def test_trained_sr_has_no_untrained_mark(trained_sr: Dataset) -> None:
    texts = all_texts(trained_sr)
    assert any("RESEARCH USE ONLY" in t for t in texts)
    assert not any("UNTRAINED" in t.upper() for t in texts)
    codes = {value_code(i)[1] for i in walk(trained_sr) if str(i.ValueType) == "CODE"}
    assert "MS0903" not in codes and "MS0901" in codes
    assert "UNTRAINED" not in trained_sr.SeriesDescription
    assert b"UNTRAINED" not in _encoded(trained_sr)


def _encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- UIDs ----------------------------------------------------------------------------------


def _uids(result: ResultSet) -> list[tuple[str, str]]:
    return [(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)) for ds in result.all()]


def test_uids_are_deterministic_and_follow_the_weights(
    study: Study, untrained: BundleInfo, results: ResultSet
) -> None:
    first = _uids(results)
    assert _uids(build(study, untrained)) == first
    instances = [sop for sop, _ in first]
    assert len(set(instances)) == len(instances)
    assert all(UID(u).is_valid and len(u) <= 64 for pair in first for u in pair)

    digests = dict(untrained.weights_sha256)
    digests["tn"] = "0" * 64
    retrained = dataclasses.replace(untrained, weights_sha256=digests)
    assert retrained.digest != untrained.digest
    other = _uids(build(study, retrained))
    old = {u for pair in first for u in pair}
    assert not old & {u for pair in other for u in pair}


def test_each_kind_has_its_own_series(results: ResultSet, study: Study) -> None:
    sr_series = {str(results.sr.SeriesInstanceUID)}
    sc_series = {str(sc.SeriesInstanceUID) for sc in results.secondary_captures}
    seg_series = {str(s.SeriesInstanceUID) for s in results.heatmap_segs}
    assert len(sc_series) == 1 and len(seg_series) == 1
    inputs = {str(i.SeriesInstanceUID) for i in study.images} | {str(study.seg.SeriesInstanceUID)}
    all_series = [sr_series, sc_series, seg_series, inputs]
    assert len(set().union(*all_series)) == sum(len(s) for s in all_series)


# --- Secondary Captures --------------------------------------------------------------------


def test_secondary_captures_are_rgb_pictures_in_the_study(
    received: list[Dataset], study: Study, untrained: BundleInfo
) -> None:
    scs = [ds for ds in received if ds.SOPClassUID == SC_CLASS]
    assert len(scs) == len(study.rois)
    for sc, roi in zip(scs, study.rois, strict=True):
        source = study.image(roi.source_sop_instance_uid)
        assert max(int(sc.Rows), int(sc.Columns)) >= 512
        assert (sc.SamplesPerPixel, sc.PhotometricInterpretation) == (3, "RGB")
        assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
        assert sc.BurnedInAnnotation == "YES"
        assert sc.StudyInstanceUID == source.StudyInstanceUID
        assert sc.PatientID == source.PatientID
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID
        assert "RESEARCH USE" in sc.SeriesDescription and "UNTRAINED" in sc.SeriesDescription
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert processing_device_uids(sc) == [untrained.device_uid]


def test_trained_secondary_captures_are_not_marked_untrained(
    trained_results: ResultSet,
) -> None:
    for sc in trained_results.secondary_captures:
        assert "RESEARCH USE" in sc.SeriesDescription
        assert "UNTRAINED" not in sc.SeriesDescription
        assert not np.all(np.asarray(sc.pixel_array)[..., :3] == WARNING_RED, axis=-1).any()


def _without_text(
    monkeypatch: pytest.MonkeyPatch, roi: RoiCrop, prediction: RoiPrediction, bundle: BundleInfo
) -> np.ndarray:
    """The same overlay with every text call dropped: what the caption is compared with."""
    with monkeypatch.context() as patch:
        patch.setattr(ImageDraw.ImageDraw, "text", lambda *args, **kwargs: None)
        return render_overlay(roi, prediction, bundle)


def test_caption_is_burned_into_the_top_band(
    results: ResultSet,
    trained_results: ResultSet,
    study: Study,
    untrained: BundleInfo,
    trained: BundleInfo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    roi, prediction = study.rois[0], study.predictions[0]
    for result, bundle, warned in ((results, untrained, True), (trained_results, trained, False)):
        shown = np.asarray(result.secondary_captures[0].pixel_array)
        bare = _without_text(monkeypatch, roi, prediction, bundle)
        assert shown.shape == bare.shape
        rows = np.nonzero(np.any(shown != bare, axis=(1, 2)))[0]
        assert rows.size > 0, "no text burned in"
        assert rows.max() < shown.shape[0] // 4, "text outside the caption band"
        text = shown[np.any(shown != bare, axis=-1)]  # the pixels the text painted
        assert np.all(text == (255, 255, 255), axis=-1).any(), "no caption (white)"
        assert np.all(text == YELLOW, axis=-1).any(), "no research-use line (yellow)"
        assert np.all(text == WARNING_RED, axis=-1).any() == warned, "UNTRAINED line (red)"


# --- heatmap SEGs --------------------------------------------------------------------------


def expected_map(roi: RoiCrop, cam: np.ndarray) -> np.ndarray:
    """The CAM placed at its box in the image grid; zero where the box is not."""
    rows, cols = roi.image_shape
    rr, cc = np.mgrid[0:rows, 0:cols]
    r, c = rr - roi.box.top, cc - roi.box.left
    inside = (r >= 0) & (r < roi.box.size) & (c >= 0) & (c < roi.box.size)
    out = np.zeros((rows, cols), dtype=np.float64)
    out[inside] = cam[r[inside], c[inside]]
    return out


def check_heatmap_segs(segs: list[Dataset], study: Study, sr: Dataset) -> None:
    tracking = {
        str(only_child(g, "DCM", "112040").UID): i for i, g in enumerate(measurement_groups(sr))
    }
    assert len(segs) == len(study.images)
    seen: list[int] = []
    for seg in segs:
        assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "FRACTIONAL"
        source_uid = str(
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        )
        source = study.image(source_uid)
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert list(seg.PatientOrientation) == list(source.PatientOrientation)
        on_image = [i for i, r in enumerate(study.rois) if r.source_sop_instance_uid == source_uid]
        assert len(seg.SegmentSequence) == len(on_image) == 2
        for segment in seg.SegmentSequence:
            assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "130403"
        index_of_segment = {
            int(s.SegmentNumber): tracking[str(s.TrackingUID)] for s in seg.SegmentSequence
        }
        assert sorted(index_of_segment.values()) == on_image
        frames = np.asarray(seg.pixel_array).reshape(-1, int(seg.Rows), int(seg.Columns))
        scale = float(seg.MaximumFractionalValue)
        for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            index = index_of_segment[segment]
            roi, prediction = study.rois[index], study.predictions[index]
            expected = expected_map(roi, prediction.cam)
            values = frames[n].astype(np.float64) / scale
            assert np.abs(values - expected).max() <= 1 / scale + 1e-9
            assert not values[expected == 0].any(), "heat outside the ROI's box"
            assert values.max() > 0.9  # the bump's peak lies inside the image
            seen.append(index)
    assert sorted(seen) == list(range(len(study.rois)))


def test_heatmap_segs_reproduce_the_cams(
    received: list[Dataset], study: Study, sr: Dataset
) -> None:
    segs = [ds for ds in received if ds.SOPClassUID == SEG_CLASS]
    check_heatmap_segs(segs, study, sr)
    # Lesion 1's square on the CC runs past the top-left corner: only its inside part is there.
    assert study.rois[0].box.top < 0 and study.rois[0].box.left < 0


def test_heatmap_segs_name_the_model_and_its_weights(
    received: list[Dataset], untrained: BundleInfo
) -> None:
    segs = [ds for ds in received if ds.SOPClassUID == SEG_CLASS]
    for seg in segs:
        assert processing_device_uids(seg) == [untrained.device_uid]
        assert "RESEARCH USE" in seg.SeriesDescription and "UNTRAINED" in seg.SeriesDescription
        assert "RESEARCH USE ONLY" in seg.ImageComments and "UNTRAINED" in seg.ImageComments
        for segment in seg.SegmentSequence:
            algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
            # The whole digest, not a prefix cut by a 64-character VR.
            assert re.search(rf"\b{untrained.digest}\b", str(algorithm.AlgorithmParameters))
            assert algorithm.AlgorithmName == untrained.display_name


def test_heatmap_segs_need_only_headers(study: Study, untrained: BundleInfo) -> None:
    headers = []
    for image in study.images:
        header = copy.deepcopy(image)
        del header.PixelData
        headers.append(header)
    result = build_results(study.seg, headers, study.rois, study.predictions, untrained)
    sr = roundtrip(result.sr)
    check_heatmap_segs([roundtrip(s) for s in result.heatmap_segs], study, sr)
    assert len(result.secondary_captures) == len(study.rois)


# --- summary and errors --------------------------------------------------------------------


def test_summary_reads_the_calls_back(sr: Dataset, study: Study) -> None:
    text = summarize_sr(sr)
    for group, prediction in zip(measurement_groups(sr), study.predictions, strict=True):
        assert str(only_child(group, "DCM", "112039").TextValue) in text
        winner = prediction.predicted_index("subtype5")
        meaning = TASKS["subtype5"].class_names[winner]
        p = prediction.probabilities["subtype5"][winner]
        assert re.search(rf"subtype: {re.escape(meaning)} \(p={p:.2f}\)", text), meaning
    assert "RESEARCH USE ONLY" in text and "UNTRAINED" in text
    assert str(sr.StudyInstanceUID) in text


def test_mismatched_rois_and_predictions_are_refused(study: Study, untrained: BundleInfo) -> None:
    with pytest.raises(ValueError, match="4 ROIs but 3 predictions"):
        build_results(study.seg, study.images, study.rois, study.predictions[:3], untrained)


# --- last: collect the PixelMed run started by the first test ------------------------------


def test_sr_passes_pixelmed_sr_validator(pixelmed_verdict: Future[list[str]]) -> None:
    assert pixelmed_verdict.result(timeout=300) == []
