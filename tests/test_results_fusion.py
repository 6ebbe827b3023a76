"""View fusion in the SR: a lesion (one SEG segment) on two or more views gets one extra group.

Inputs are SYNTHETIC: MG images and a SEG from tests.factories, the RoiCrops model.preprocess
cuts from them, hand-made probabilities (so that the fused call differs from a view's call) and
a torch-free stand-in bundle. Every value is read back from the SR dataset as a receiver would
get it (written and read back), by content item codes written out here and by
worker.results.summary, the reader the CLI and the demo print with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, generate_uid

from model.bundle_info import BundleInfo
from model.preprocess import extract_rois
from model.profiles import Profile
from model.roi import RoiCrop, RoiPrediction
from model.tasks import TASKS
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from tests.sr_items import concept, value_code, walk
from tests.validators import dciodvfy_errors, pixelmed_sr_errors
from worker.results.build import build_results
from worker.results.codes import CLASS_CODES, PROBABILITY_CODES, SCHEME, TASK_CONCEPTS
from worker.results.summary import fused_results, measurement_groups, summarize_sr
from worker.results.uids import ResultUids

SHAPE = (256, 200)
VIEW_FUSION, MEAN_OF_VIEWS = (SCHEME, "MS0904"), (SCHEME, "MS0905")
DERIVATION = ("DCM", "121401")
SOURCE_OF_MEASUREMENT = ("DCM", "121112")
IMAGE_REGION = ("DCM", "111030")
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

# Per view, per task: CC and MLO disagree, and the mean of the two calls differently from one
# of them (subtype5 and luminal: not CC's call; her2: not MLO's call).
PROBABILITIES = {
    "CC": {
        "subtype5": [0.50, 0.40, 0.05, 0.03, 0.02],
        "luminal": [0.70, 0.30],
        "her2": [0.60, 0.40],
        "tn": [0.90, 0.10],
    },
    "MLO": {
        "subtype5": [0.05, 0.60, 0.15, 0.10, 0.10],
        "luminal": [0.20, 0.80],
        "her2": [0.45, 0.55],
        "tn": [0.30, 0.70],
    },
}


@pytest.fixture(scope="module")
def bundle() -> BundleInfo:
    """A torch-free stand-in: the SR needs the bundle's description, never its networks."""
    return BundleInfo(
        name="fusion-standin",
        version="0.0.0",
        profile=Profile.DEFAULT,
        input_size=224,
        bound_size=100,
        untrained=True,
        tasks={name: tuple(spec.class_names) for name, spec in TASKS.items()},
        weights_sha256={name: hashlib.sha256(name.encode()).hexdigest() for name in TASKS},
        provenance={"note": "SYNTHETIC stand-in for the fusion tests"},
    )


class Unit:
    """One SEG over MG images of one breast, its ROIs and hand-made predictions."""

    def __init__(self, lesions: dict[str, list[tuple[tuple[int, int], int]]]) -> None:
        study_uid = generate_uid()
        self.images = [
            make_mg(laterality="L", view=view, study_uid=study_uid, seed=i + 1)
            for i, view in enumerate(lesions)
        ]
        masks = [np.stack([disk_mask(SHAPE, c, r) for c, r in d]) for d in lesions.values()]
        self.seg = roundtrip(make_seg(self.images, masks))
        self.rois = extract_rois(self.seg, {str(i.SOPInstanceUID): i for i in self.images})
        self.predictions = [self._prediction(roi) for roi in self.rois]

    def view(self, roi: RoiCrop) -> str:
        image = next(i for i in self.images if i.SOPInstanceUID == roi.source_sop_instance_uid)
        return str(image.ViewPosition)

    def _prediction(self, roi: RoiCrop) -> RoiPrediction:
        # Segment 2 swaps the classes' order, so that two lesions' fused values differ.
        probabilities = {
            task: np.asarray(p if roi.segment_number == 1 else p[::-1], dtype=np.float64)
            for task, p in PROBABILITIES[self.view(roi)].items()
        }
        cam = np.zeros((roi.box.size, roi.box.size), dtype=np.float32)
        return RoiPrediction(probabilities=probabilities, cam=cam)

    def sr(self, bundle: BundleInfo) -> Dataset:
        result = build_results(self.seg, self.images, self.rois, self.predictions, bundle)
        return roundtrip(result.sr)


@pytest.fixture(scope="module")
def two_views() -> Unit:
    return Unit({"CC": [((120, 100), 14)], "MLO": [((90, 80), 12)]})


@pytest.fixture(scope="module")
def sr(two_views: Unit, bundle: BundleInfo) -> Dataset:
    return two_views.sr(bundle)


# --- reading the SR dataset by its content items -------------------------------------------


def children(item: Dataset, key: tuple[str, str]) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if concept(c) == key]


def only_child(item: Dataset, key: tuple[str, str]) -> Dataset:
    found = children(item, key)
    assert len(found) == 1, f"expected one {key} item, found {len(found)}"
    return found[0]


def groups(sr: Dataset) -> tuple[list[Dataset], list[Dataset]]:
    """(per-view groups, fused groups) under Imaging Measurements."""
    measurements = only_child(sr, ("DCM", "126010"))
    every = children(measurements, ("DCM", "125007"))
    fused = [g for g in every if children(g, VIEW_FUSION)]
    return [g for g in every if g not in fused], fused


def number(measured: Dataset) -> float:
    """The exact double (Floating Point Value) where the SR has one, else the DS text."""
    if "FloatingPointValue" in measured:
        return float(measured.FloatingPointValue)
    return float(measured.NumericValue)


def probabilities(group: Dataset) -> dict[str, np.ndarray]:
    """Task -> the group's NUM values in class order, by the per-class concept codes."""
    values = {
        concept(item)[1]: number(item.MeasuredValueSequence[0])
        for item in group.ContentSequence
        if str(item.ValueType) == "NUM"
    }
    return {
        task: np.array([values[code.value] for code in codes])
        for task, codes in PROBABILITY_CODES.items()
    }


def calls(group: Dataset) -> dict[str, int]:
    """Task -> index of the class the group's coded evaluation names."""
    out = {}
    for task, name in TASK_CONCEPTS.items():
        code = value_code(only_child(group, (SCHEME, name.value)))[1]
        out[task] = [c.value for c in CLASS_CODES[task]].index(code)
    return out


def frame_reference(group: Dataset) -> tuple[str, list[int], Dataset]:
    """(SEG UID, frame numbers, the referencing item) of the input SEG frames the group's
    values were inferred from (the group's Source of Measurement that is the SEG)."""
    [ref] = [
        s.ReferencedSOPSequence[0]
        for s in children(group, SOURCE_OF_MEASUREMENT)
        if s.ReferencedSOPSequence[0].ReferencedSOPClassUID == SEG_CLASS
    ]
    frames = ref.ReferencedFrameNumber
    numbers = [int(f) for f in frames] if isinstance(frames, MultiValue) else [int(frames)]
    return str(ref.ReferencedSOPInstanceUID), numbers, ref


def segment_of_frame(seg: Dataset, frame_number: int) -> tuple[int, str]:
    """(segment number, source image UID) of a SEG frame, from its functional groups."""
    frame = seg.PerFrameFunctionalGroupsSequence[frame_number - 1]
    shared = seg.SharedFunctionalGroupsSequence[0]  # a one-segment SEG names it once, here
    ident = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
    segment = int(ident[0].ReferencedSegmentNumber)
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    return segment, str(source.ReferencedSOPInstanceUID)


def segment_of(seg: Dataset, group: Dataset) -> int:
    _, frames, _ = frame_reference(group)
    return segment_of_frame(seg, frames[0])[0]


# --- one lesion on CC and MLO --------------------------------------------------------------


def test_a_lesion_on_two_views_gets_exactly_one_fused_group(sr: Dataset, two_views: Unit) -> None:
    per_view, fused = groups(sr)
    assert len(two_views.rois) == 2 and {two_views.view(r) for r in two_views.rois} == {
        "CC",
        "MLO",
    }
    assert len(per_view) == 2 and len(fused) == 1
    # The readers the CLI and demo use: ROIs are still counted by measurement_groups.
    assert len(measurement_groups(sr)) == 2
    assert len(fused_results(sr)) == 1


def test_fused_probabilities_are_the_mean_of_the_views_read_back(sr: Dataset) -> None:
    per_view, (fused,) = groups(sr)
    views = [probabilities(g) for g in per_view]
    stated = probabilities(fused)
    read_back = fused_results(sr)[0].probabilities
    for task in TASKS:
        mean = (views[0][task] + views[1][task]) / 2
        np.testing.assert_allclose(stated[task], mean, rtol=0, atol=1e-6, err_msg=task)
        np.testing.assert_allclose(read_back[task], stated[task], rtol=0, atol=0, err_msg=task)
    # The group says its values are means once, by its "View fusion" evaluation, not by a
    # Derivation under every number (OHIF skips a number with more than one child).
    nums = [i for i in fused.ContentSequence if str(i.ValueType) == "NUM"]
    assert len(nums) == sum(len(c) for c in PROBABILITY_CODES.values())
    assert value_code(only_child(fused, VIEW_FUSION)) == MEAN_OF_VIEWS
    assert not any(children(n, DERIVATION) for g in [*per_view, fused] for n in g.ContentSequence)


def test_fused_calls_are_the_argmax_of_the_fused_probabilities(
    sr: Dataset, two_views: Unit
) -> None:
    per_view, (fused,) = groups(sr)
    stated = probabilities(fused)
    fused_calls = calls(fused)
    assert fused_calls == {task: int(np.argmax(stated[task])) for task in TASKS}
    assert fused_results(sr)[0].calls == fused_calls
    by_view = {
        two_views.view(roi): calls(group)
        for roi, group in zip(two_views.rois, per_view, strict=True)
    }
    # The case was built so that the fused call is not simply one view's call.
    assert fused_calls["subtype5"] != by_view["CC"]["subtype5"]
    assert fused_calls["luminal"] != by_view["CC"]["luminal"]
    assert fused_calls["her2"] != by_view["MLO"]["her2"]
    assert fused_calls == {"subtype5": 1, "luminal": 1, "her2": 0, "tn": 0}


def test_fused_group_references_every_views_frame_and_image(sr: Dataset, two_views: Unit) -> None:
    per_view, (fused,) = groups(sr)
    seg_uid, frames, ref = frame_reference(fused)
    assert seg_uid == str(two_views.seg.SOPInstanceUID)
    assert "ReferencedSegmentNumber" not in ref  # frames and segment exclude each other
    images = {str(i.SOPInstanceUID) for i in two_views.images}
    assert {segment_of_frame(two_views.seg, f) for f in frames} == {(1, uid) for uid in images}
    # The same frames the per-view groups reference one each.
    assert sorted(frames) == sorted(frame_reference(g)[1][0] for g in per_view)
    # The fused group names the SEG's frames and every view's MG image as its sources.
    sources = children(fused, SOURCE_OF_MEASUREMENT)
    assert {str(s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for s in sources} == (
        images | {seg_uid}
    )
    # The fused group's region is a POINT: the lesion's centre on the first view, inside that
    # view's box (not one more box or outline).
    region = only_child(fused, IMAGE_REGION)
    assert region.GraphicType == "POINT"
    first = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert str(first.ReferencedSOPInstanceUID) == two_views.rois[0].source_sop_instance_uid
    (column, row), box = region.GraphicData, only_child(per_view[0], IMAGE_REGION).GraphicData
    assert min(box[0::2]) < column < max(box[0::2]) and min(box[1::2]) < row < max(box[1::2])
    values = fused_results(sr)[0]
    assert values.seg_uid == seg_uid and sorted(values.seg_frames) == sorted(frames)
    assert set(values.source_uids) == images


def test_fused_group_says_what_it_is(sr: Dataset, two_views: Unit, bundle: BundleInfo) -> None:
    per_view, (fused,) = groups(sr)
    identifier = str(only_child(fused, ("DCM", "112039")).TextValue)
    fused_p = probabilities(fused)["subtype5"]
    called = ("Luminal A", "Luminal B")[int(np.argmax(fused_p))]  # the case's winners
    assert identifier == f"Fused L CC + L MLO: {called} - Lesion 1 (segment 1)"
    uid = str(only_child(fused, ("DCM", "112040")).UID)
    assert UID(uid).is_valid
    assert uid == ResultUids(str(two_views.seg.SOPInstanceUID), bundle.digest).fused_tracking(1)
    assert uid not in {str(only_child(g, ("DCM", "112040")).UID) for g in per_view}
    assert value_code(only_child(fused, VIEW_FUSION)) == MEAN_OF_VIEWS
    # Intended use and model status are said once, for the document, not per group.
    assert not children(fused, (SCHEME, "MS0900")) and not children(fused, (SCHEME, "MS0902"))
    assert value_code(only_child(fused, ("DCM", "121071"))) == ("SCT", "52988006")
    site = only_child(fused, ("SCT", "363698007"))
    assert value_code(site) == ("SCT", "76752008")  # Breast, with a Laterality modifier
    assert value_code(only_child(site, ("SCT", "272741003"))) == ("SCT", "7771000")
    assert str(only_child(fused, ("DCM", "111001")).TextValue) == bundle.display_name
    comments = [str(i.TextValue) for i in walk(sr) if concept(i) == ("DCM", "121106")]
    assert any("View fusion" in c and "mean" in c for c in comments)
    text = summarize_sr(sr)
    assert f"{identifier}: mean of 2 views' probabilities" in text
    winner = int(np.argmax(fused_p))
    meaning = TASKS["subtype5"].class_names[winner]
    after = text.split(identifier, 1)[1]
    assert f"subtype: {meaning} (p={fused_p[winner]:.2f})" in after


def test_fused_sr_passes_dciodvfy_and_pixelmed(sr: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert pixelmed_sr_errors(path) == []


# --- other units ---------------------------------------------------------------------------


def test_a_lesion_on_one_view_gets_no_fused_group(bundle: BundleInfo, tmp_path: Path) -> None:
    alone = Unit({"CC": [((120, 100), 14)]})
    sr = alone.sr(bundle)
    per_view, fused = groups(sr)
    assert len(per_view) == 1 and fused == []
    assert fused_results(sr) == []
    assert "fused" not in summarize_sr(sr)
    assert not any("View fusion" in str(i.get("TextValue", "")) for i in walk(sr))
    # Beside a lesion on both views, a lesion on CC only is still not fused.
    mixed = Unit({"CC": [((60, 60), 12), ((180, 140), 14)], "MLO": [((90, 80), 12)]})
    assert [(r.segment_number, mixed.view(r)) for r in mixed.rois] == [
        (1, "CC"),
        (1, "MLO"),
        (2, "CC"),
    ]
    mixed_sr = mixed.sr(bundle)
    per_view, fused = groups(mixed_sr)
    assert len(per_view) == 3 and len(fused) == 1
    assert segment_of(mixed.seg, fused[0]) == 1
    path = tmp_path / "mixed.dcm"
    mixed_sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_two_lesions_on_two_views_give_two_fused_groups(bundle: BundleInfo) -> None:
    unit = Unit(
        {"CC": [((60, 60), 12), ((180, 140), 14)], "MLO": [((90, 80), 12), ((200, 60), 10)]}
    )
    sr = unit.sr(bundle)
    per_view, fused = groups(sr)
    assert len(per_view) == 4 and len(fused) == 2
    assert [segment_of(unit.seg, g) for g in fused] == [1, 2]
    identifiers = [str(only_child(g, ("DCM", "112039")).TextValue) for g in fused]
    assert [i.split(":")[0] for i in identifiers] == ["Fused L CC + L MLO"] * 2
    assert [i.split(" - ")[1] for i in identifiers] == [
        "Lesion 1 (segment 1)",
        "Lesion 2 (segment 2)",
    ]
    uids = {str(only_child(g, ("DCM", "112040")).UID) for g in per_view + fused}
    assert len(uids) == 6
    for group in fused:
        segment = segment_of(unit.seg, group)
        mine = [g for g in per_view if segment_of(unit.seg, g) == segment]
        assert len(mine) == 2
        _, frames, _ = frame_reference(group)
        assert sorted(frames) == sorted(frame_reference(g)[1][0] for g in mine)
        views = [probabilities(g) for g in mine]
        stated = probabilities(group)
        for task in TASKS:
            mean = (views[0][task] + views[1][task]) / 2
            np.testing.assert_allclose(stated[task], mean, rtol=0, atol=1e-6, err_msg=task)
        assert calls(group) == {task: int(np.argmax(stated[task])) for task in TASKS}
    # The two lesions were given different probabilities, so a mix-up would show above.
    assert (
        probabilities(fused[0])["subtype5"].tolist() != probabilities(fused[1])["subtype5"].tolist()
    )
    assert [v.tracking_identifier for v in fused_results(sr)] == identifiers
