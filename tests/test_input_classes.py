"""common/inputs.py: the node's own results and lesion SEGs, told apart by header alone.

The node's results are built by the real worker.results (tests/node_results.py, no torch); the
lesion SEGs are the public samples of other toolkits and what molsub synth writes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from common.inputs import NODE_MANUFACTURER, non_lesion_reason, own_result_reason
from tests.node_results import node_results
from tests.worker_standins import bundle_info
from worker.results import equipment

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def built() -> tuple[list[Dataset], list[Dataset], Dataset]:
    return node_results()


def of_class(objects: list[Dataset], sop_class: str) -> list[Dataset]:
    return [ds for ds in objects if ds.SOPClassUID == sop_class]


def test_worker_writes_the_manufacturer_common_names() -> None:
    assert equipment.MANUFACTURER == NODE_MANUFACTURER


def test_every_result_of_the_node_is_recognised(built: tuple) -> None:
    results, _, _ = built
    assert {str(ds.SOPClassUID) for ds in results} == {SR_CLASS, SC_CLASS, SEG_CLASS}
    for ds in results:
        assert own_result_reason(ds), ds.SOPClassUID


def test_own_result_known_by_device_uid_or_equipment_when_manufacturer_is_changed(
    built: tuple,
) -> None:
    [heatmap, *_] = of_class(built[0], SEG_CLASS)
    device_uid = bundle_info().device_uid
    assert device_uid in [i.get("DeviceUID") for i in heatmap.ContributingEquipmentSequence]
    coerced = copy.deepcopy(heatmap)
    coerced.Manufacturer = "PACS"  # a PACS that rewrote the top-level Manufacturer
    assert "Contributing Equipment manufacturer" in own_result_reason(coerced)
    for item in coerced.ContributingEquipmentSequence:
        item.Manufacturer = "PACS"
    assert own_result_reason(coerced) == ""
    assert "device UID" in own_result_reason(coerced, {device_uid})


def test_inputs_and_other_classes_are_never_own_results(built: tuple) -> None:
    _, images, seg = built
    assert own_result_reason(seg) == ""
    assert all(own_result_reason(image) == "" for image in images)
    # The name alone does not decide: an MG image carrying it is still an image.
    image = copy.deepcopy(images[0])
    image.Manufacturer = NODE_MANUFACTURER
    assert own_result_reason(image) == ""


def test_heatmap_seg_is_not_a_lesion_seg(built: tuple) -> None:
    for heatmap in of_class(built[0], SEG_CLASS):
        assert non_lesion_reason(heatmap) == "FRACTIONAL SEG, not a lesion outline"
        # Even were it BINARY: its segments are class-activation maps, not lesions.
        binary = copy.deepcopy(heatmap)
        binary.SegmentationType = "BINARY"
        assert non_lesion_reason(binary) == "segment 1 is not a lesion (DCM 130402 / DCM 130403)"


@pytest.mark.parametrize("sample", ["sr_seg/seg_image_cr_binary.dcm", "sr_seg/liver_1frame.dcm"])
def test_real_seg_samples_are_taken(samples_dir: Path, sample: str) -> None:
    ds = pydicom.dcmread(samples_dir / sample, stop_before_pixels=True)
    assert non_lesion_reason(ds) == ""
    assert own_result_reason(ds) == ""


def test_synthetic_lesion_seg_is_taken(built: tuple) -> None:
    assert non_lesion_reason(built[2]) == ""


def _code(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


MAB = ("SCT", "49755003", "Morphologically abnormal structure")
ANATOMY = ("SCT", "91723000", "Anatomical structure")
TISSUE = ("SCT", "85756007", "Tissue")
MASS = ("SCT", "4147007", "Mass")
BREAST = ("SCT", "76752008", "Breast")


@pytest.mark.parametrize(
    ("category", "kind", "reason"),
    [
        (MAB, MASS, ""),
        (MAB, ("SCT", "129769006", "Calcification cluster"), ""),
        (("SRT", "M-01000", "Morphologically Altered Structure"), ("SRT", "M-03000", "Mass"), ""),
        (ANATOMY, MASS, ""),  # a lesion type under another category
        (TISSUE, ("SCT", "21793004", "Connective tissue"), ""),
        (ANATOMY, BREAST, "segment 2 is not a lesion (SCT 91723000 / SCT 76752008)"),
        (TISSUE, ("DCM", "125040", "Background"), "segment 2 is not a lesion"),
        (MAB, ("SCT", "17621005", "Normal"), "segment 2 is not a lesion"),
        (("SCT", "260787004", "Physical object"), ("SCT", "14106009", "Cardiac pacemaker"), "not"),
    ],
    ids=lambda v: v[2] if isinstance(v, tuple) else None,
)
def test_every_segment_must_be_a_lesion(
    built: tuple, category: tuple[str, str, str], kind: tuple[str, str, str], reason: str
) -> None:
    """The second segment's codes decide: one non-lesion segment makes the SEG not taken."""
    seg = copy.deepcopy(built[2])
    second = copy.deepcopy(seg.SegmentSequence[0])
    second.SegmentNumber = 2
    second.SegmentedPropertyCategoryCodeSequence = [_code(*category)]
    second.SegmentedPropertyTypeCodeSequence = [_code(*kind)]
    seg.SegmentSequence.append(second)
    got = non_lesion_reason(seg)
    assert (got == "") if reason == "" else (reason in got), got


def test_seg_without_segments_or_codes_is_not_taken(built: tuple) -> None:
    seg = copy.deepcopy(built[2])
    del seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence
    assert non_lesion_reason(seg) == "segment 1 has no segmented property category or type"
    del seg.SegmentSequence
    assert non_lesion_reason(seg) == "SEG describes no segment"


def test_fractional_lesion_seg_is_not_taken(built: tuple) -> None:
    seg = copy.deepcopy(built[2])
    seg.SegmentationType = "FRACTIONAL"
    assert non_lesion_reason(seg) == "FRACTIONAL SEG, not a lesion outline"
