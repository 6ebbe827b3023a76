"""What a viewer shows of the results: dates for its series list, the Secondary Capture's
layout (laterality and view, the plain crop beside the overlay), and the BINARY heatmap SEG
([results] heatmap_seg) for viewers that cannot show FRACTIONAL ones.

The study, predictions and bundle are the synthetic ones of tests/test_results_objects.py.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date, datetime, time
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageDraw
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from common.settings import HeatmapSegType, ResultsSettings
from model.bundle import init_untrained
from model.bundle_info import BundleInfo
from model.preprocess.resize import resize_square
from molsub.config import ConfigError, load_config, to_toml
from tests.factories import roundtrip
from tests.test_results_objects import SC_CLASS, SEG_CLASS, Study, expected_map, make_study
from tests.validators import dciodvfy_errors
from worker.results import overlay
from worker.results.build import build_results
from worker.results.result_set import ResultSet

BUILT_AT = datetime(2024, 3, 5, 14, 7, 9)
DA_RE = re.compile(r"^\d{8}$")
TM_RE = re.compile(r"^\d{6}(\.\d{1,6})?$")
LABEL_CYAN = (0, 255, 255)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> BundleInfo:
    return init_untrained(tmp_path_factory.mktemp("bundle") / "untrained")


@pytest.fixture(scope="module")
def study() -> Study:
    # Right breast, so the label is not the factories' default; lesion 1 runs past the corner.
    return make_study(
        "R",
        {"CC": [((40, 30), 12), ((170, 120), 20)], "MLO": [((100, 100), 15), ((200, 60), 10)]},
    )


def build(study: Study, bundle: BundleInfo, settings: ResultsSettings | None = None) -> ResultSet:
    return build_results(
        study.seg, study.images, study.rois, study.predictions, bundle, settings, BUILT_AT
    )


@pytest.fixture(scope="module")
def results(study: Study, untrained: BundleInfo) -> ResultSet:
    return build(study, untrained)


BINARY = ResultsSettings(heatmap_seg=HeatmapSegType.BINARY, heatmap_threshold=0.5)


@pytest.fixture(scope="module")
def binary_results(study: Study, untrained: BundleInfo) -> ResultSet:
    return build(study, untrained, BINARY)


# --- dates ---------------------------------------------------------------------------------


def test_every_object_is_dated_when_it_was_built(results: ResultSet) -> None:
    objects = [roundtrip(ds) for ds in results.all()]
    assert len(objects) == 1 + 4 + 2
    for ds in objects:
        name = ds.SOPClassUID.name
        for keyword in ("SeriesDate", "ContentDate"):
            value = str(ds[keyword].value)
            assert DA_RE.match(value) and DA(value) == date(2024, 3, 5), (name, keyword)
        for keyword in ("SeriesTime", "ContentTime"):
            value = str(ds[keyword].value)
            assert TM_RE.match(value) and TM(value) == time(14, 7, 9), (name, keyword)


def test_dates_default_to_now_and_leave_the_uids_alone(
    study: Study, untrained: BundleInfo, results: ResultSet
) -> None:
    before = datetime.now().replace(microsecond=0)
    now = build_results(study.seg, study.images, study.rois, study.predictions, untrained)
    after = datetime.now()
    for ds in now.all():
        stamp = datetime.combine(DA(str(ds.SeriesDate)), TM(str(ds.SeriesTime)))
        assert before <= stamp <= after
        assert (ds.ContentDate, ds.ContentTime) == (ds.SeriesDate, ds.SeriesTime)
    uids = [(str(d.SOPInstanceUID), str(d.SeriesInstanceUID)) for d in now.all()]
    assert uids == [(str(d.SOPInstanceUID), str(d.SeriesInstanceUID)) for d in results.all()]


# --- Secondary Capture layout --------------------------------------------------------------


def test_sc_shows_the_plain_crop_beside_the_overlay(results: ResultSet, study: Study) -> None:
    for sc, roi in zip(results.secondary_captures, study.rois, strict=True):
        pixels = np.asarray(roundtrip(sc).pixel_array)
        side = max(512, roi.display.shape[0])
        band = pixels.shape[0] - side
        assert pixels.shape == (band + side, 2 * side, 3) and 0 < band < side // 4
        # Left square: the windowed crop, grey, untouched by colour, outline or text.
        gray = np.clip(np.rint(resize_square(roi.display, side)), 0, 255).astype(np.uint8)
        left, right = pixels[band:, :side], pixels[band:, side:]
        assert np.array_equal(left, np.repeat(gray[..., None], 3, axis=2))
        # Right square: the same tissue under the heatmap, with the lesion outline (white).
        assert not np.array_equal(right, left)
        assert (np.ptp(right.astype(int), axis=2) > 0).mean() > 0.5, "no heatmap colours"
        assert np.all(right == (255, 255, 255), axis=-1).sum() > 20, "no lesion outline"


def _drop_text(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda *args, **kwargs: None)
    return monkeypatch


def test_sc_caption_starts_with_laterality_and_view(
    results: ResultSet, study: Study, untrained: BundleInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in (0, 2):  # one ROI on the CC, one on the MLO
        roi, prediction = study.rois[index], study.predictions[index]
        source = study.image(roi.source_sop_instance_uid)
        label = f"R {source.ViewPosition}"
        shown = np.asarray(results.secondary_captures[index].pixel_array)
        assert np.array_equal(shown, overlay.render_overlay(roi, prediction, untrained, label))
        unlabelled = overlay.render_overlay(roi, prediction, untrained)
        side = shown.shape[1] // 2
        band = shown.shape[0] - side
        size = overlay.text_size(side)
        # The label's region: the start of the first caption line, in its own colour.
        region = shown[: 4 + size + 6, : 4 * size]
        assert np.all(region == LABEL_CYAN, axis=-1).sum() > 10, "label region empty"
        assert not np.all(unlabelled[: 4 + size + 6, : 4 * size] == LABEL_CYAN, axis=-1).any()
        # Only the caption band differs: the squares are the same with or without the label.
        assert np.array_equal(shown[band:], unlabelled[band:])
        with monkeypatch.context() as patch:
            _drop_text(patch)
            bare = overlay.render_overlay(roi, prediction, untrained, label)
        assert not bare[:band].any(), "the band holds nothing but text"


# --- BINARY heatmap SEG --------------------------------------------------------------------


def test_default_heatmap_seg_stays_fractional(results: ResultSet) -> None:
    assert ResultsSettings().heatmap_seg is HeatmapSegType.FRACTIONAL
    assert ResultsSettings().heatmap_threshold == 0.5
    assert {str(s.SegmentationType) for s in results.heatmap_segs} == {"FRACTIONAL"}


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_heatmap_seg_is_the_cam_above_the_threshold(
    study: Study, untrained: BundleInfo, results: ResultSet, threshold: float
) -> None:
    settings = ResultsSettings(heatmap_seg=HeatmapSegType.BINARY, heatmap_threshold=threshold)
    segs = [roundtrip(s) for s in build(study, untrained, settings).heatmap_segs]
    assert len(segs) == len(study.images)
    fractional = {str(s.SOPInstanceUID) for s in results.heatmap_segs}
    seen = []
    for seg in segs:
        assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY"
        assert str(seg.SOPInstanceUID) not in fractional
        assert f">= {threshold:g}" in seg.SeriesDescription
        by_number = {}
        for segment in seg.SegmentSequence:
            assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "130403"
            assert f"CAM >= {threshold:g}" in str(segment.SegmentDescription)
            assert f">= {threshold:g}" in str(segment.SegmentLabel)
            roi_number = int(re.search(r"ROI (\d+)", str(segment.SegmentLabel)).group(1))
            by_number[int(segment.SegmentNumber)] = roi_number - 1
        frames = np.asarray(seg.pixel_array).reshape(-1, int(seg.Rows), int(seg.Columns))
        for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            index = by_number[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
            roi, prediction = study.rois[index], study.predictions[index]
            source = item.DerivationImageSequence[0].SourceImageSequence[0]
            assert str(source.ReferencedSOPInstanceUID) == roi.source_sop_instance_uid
            expected = expected_map(roi, prediction.cam) >= threshold
            assert expected.any() and not expected.all()
            assert np.array_equal(frames[n].astype(bool), expected), index
            seen.append(index)
    assert sorted(seen) == list(range(len(study.rois)))


def test_every_display_object_passes_dciodvfy(
    results: ResultSet, binary_results: ResultSet, tmp_path: Path
) -> None:
    objects: list[Dataset] = [*results.all(), *binary_results.heatmap_segs]
    failures = {}
    for n, ds in enumerate(objects):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if errors := dciodvfy_errors(path):
            failures[f"{n} {ds.SOPClassUID.name}"] = errors
    assert not failures
    assert sum(ds.SOPClassUID == SC_CLASS for ds in objects) == len(results.secondary_captures)


# --- [results] in node.toml ----------------------------------------------------------------


def test_results_settings_from_toml_and_environment(tmp_path: Path) -> None:
    assert load_config(None, env={}).results == ResultsSettings()
    path = tmp_path / "node.toml"
    path.write_text('[results]\nheatmap_seg = "binary"\nheatmap_threshold = 0.25\n')
    config = load_config(path, env={})
    assert config.results == ResultsSettings(HeatmapSegType.BINARY, 0.25)
    assert "heatmap SEG BINARY (CAM >= 0.25)" in config.describe()
    env = {"MOLSUB_RESULTS_HEATMAP_SEG": "FRACTIONAL", "MOLSUB_RESULTS_HEATMAP_THRESHOLD": "0.7"}
    assert load_config(path, env=env).results == ResultsSettings(HeatmapSegType.FRACTIONAL, 0.7)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(config))
    assert load_config(again, env={}).results == config.results


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('[results]\nheatmap_seg = "labelmap"\n', {}, '[results] heatmap_seg: must be one of "'),
        ("[results]\nheatmap_threshold = 0\n", {}, "[results] heatmap_threshold: must be > 0"),
        ("", {"MOLSUB_RESULTS_HEATMAP_THRESHOLD": "1.5"}, "(from $MOLSUB_RESULTS_HEATMAP_"),
        ("[results]\nheatmap_treshold = 0.5\n", {}, "unknown key(s) ['heatmap_treshold']"),
    ],
)
def test_results_settings_are_validated(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert message in str(err.value)


def test_deploy_node_toml_documents_the_heatmap_option() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "node.toml"
    text = example.read_text()
    section = text.split("\n[results]\n")[1].split("\n[[destinations]]")[0]
    assert 'heatmap_seg = "fractional"' in section and "binary" in section
    assert "heatmap_threshold = 0.5" in section
    assert load_config(example, env={}).results == ResultsSettings()


def test_binary_threshold_is_part_of_the_uids(
    study: Study, untrained: BundleInfo, binary_results: ResultSet
) -> None:
    half = binary_results.heatmap_segs
    again = build(study, untrained, BINARY).heatmap_segs
    assert [str(s.SOPInstanceUID) for s in half] == [str(s.SOPInstanceUID) for s in again]
    third = build(
        study, untrained, dataclasses.replace(BINARY, heatmap_threshold=1 / 3)
    ).heatmap_segs
    assert not {str(s.SOPInstanceUID) for s in half} & {str(s.SOPInstanceUID) for s in third}
    assert half[0].SeriesInstanceUID != third[0].SeriesInstanceUID
